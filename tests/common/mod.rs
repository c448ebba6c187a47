//! Helpers shared by the integration tests: the fixtures beside the repository, comparing
//! host tensors, and running the binary.
// Each test crate uses its own subset of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use vitrs::model::io::HostTensor;

/// The fixtures live in `shared/` beside the repository; a missing one is a failure.
pub fn fixture(name: &str) -> PathBuf {
    let p = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures")).join(name);
    assert!(
        p.is_dir(),
        "fixture {} is missing (shared/ must sit beside the repository)",
        p.display()
    );
    p
}

pub fn max_abs(a: &HostTensor, b: &HostTensor) -> f32 {
    assert_eq!(a.shape, b.shape);
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Run the binary with extra environment variables: (exit code, stdout, stderr).
pub fn vitrs_env(args: &[&str], env: &[(&str, &Path)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vitrs"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

pub fn vitrs(args: &[&str]) -> (i32, String, String) {
    vitrs_env(args, &[])
}
