//! Helpers shared by the integration tests: the fixtures beside the repository, comparing
//! host tensors, and running the binary.
// Each test crate uses its own subset of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use vitrs::config::{Config, DatasetKind};
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

/// A tiny ViT (16 px, patch 4, width 32, 2 blocks) on 1,280 synthetic images, 2 quiet epochs
/// without dropout, checkpoints or early stopping, into `out`: the run the training tests
/// (and the GPU tests, on a smaller set) start from.
pub fn tiny_config(out: &Path) -> Config {
    let mut c = Config::default();
    c.data.dataset = DatasetKind::Synthetic;
    c.data.synthetic_size = 1280;
    c.model.img_size = Some(16);
    c.model.patch_size = Some(4);
    c.model.embed_dim = Some(32);
    c.model.depth = Some(2);
    c.model.num_heads = Some(2);
    c.model.mlp_dim = Some(64);
    c.model.dropout = Some(0.0);
    c.model.attn_dropout = Some(0.0);
    c.optim.epochs = 2;
    c.optim.batch_size = 32;
    c.optim.lr = 2e-3;
    c.optim.warmup_epochs = 0.2;
    c.run.log_every = 5;
    c.run.save_every = 0;
    c.run.patience = 0;
    c.run.quiet = true;
    c.run.out_dir = Some(out.to_path_buf());
    c
}
