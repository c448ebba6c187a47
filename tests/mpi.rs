//! Data parallelism over MPI, end to end through `mpirun` (feature `mpi`; needs Open MPI's
//! `mpirun` on PATH: `.ci/run` installs it). Run with
//! `cargo test --release --features mpi --test mpi`.
#![cfg(feature = "mpi")]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vitrs::model::io::read_safetensors;

const BIN: &str = env!("CARGO_BIN_EXE_vitrs");

/// A tiny model on 193 synthetic images: with 2 ranks × 16 one rank's shard is one image
/// shorter, so its last batch is empty and the global last batch holds a single image.
fn train_args(out: &Path, batch: usize, epochs: usize, size: usize) -> Vec<String> {
    [
        "train",
        "--dataset",
        "synthetic",
        "--synthetic-size",
        &size.to_string(),
        "--img-size",
        "16",
        "--patch-size",
        "4",
        "--embed-dim",
        "32",
        "--depth",
        "2",
        "--num-heads",
        "2",
        "--mlp-dim",
        "64",
        "--dropout",
        "0",
        "--attn-dropout",
        "0",
        "--drop-path",
        "0",
        // The key bias has a true gradient of exactly zero (softmax ignores a constant per
        // query), so what it gets is rounding noise, which AdamW turns into ±lr steps: any
        // change of summation order (threads, ranks) moves it by ~1e-4. Without it, every
        // weight of the two runs agrees to ~1e-7.
        "--qkv-bias",
        "false",
        "--epochs",
        &epochs.to_string(),
        "--batch-size",
        &batch.to_string(),
        "--lr",
        "2e-3",
        "--warmup-epochs",
        "0.5",
        "--grad-clip",
        "1.0",
        "--threads",
        "1",
        "--quiet",
        "--out-dir",
        &out.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `mpirun -np n vitrs ...`, allowed to run as root and on fewer cores than ranks.
fn mpirun(n: usize, args: &[String]) -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        &n.to_string(),
    ])
    .arg(BIN)
    .args(args)
    // Containers often forbid the cross-memory-attach that shared-memory transfers try.
    .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    c
}

fn run_ok(mut c: Command) -> String {
    let out = c.output().expect("launch");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "failed: {err}");
    err
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    read_safetensors(&dir.join("checkpoints/last/model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.data))
        .collect()
}

#[test]
fn two_processes_of_16_train_exactly_like_one_of_32() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    run_ok({
        let mut c = Command::new(BIN);
        c.args(train_args(&one, 32, 2, 193));
        c
    });
    let log = run_ok(mpirun(2, &train_args(&two, 16, 2, 193)));
    assert!(log.contains("global batch 32 = 16 per process"), "{log}");
    assert!(
        log.contains("rank 1: epoch 2:"),
        "rank 1 logs its throughput: {log}"
    );

    let (a, b) = (weights(&one), weights(&two));
    assert_eq!(a.len(), b.len());
    let mut max_diff = 0f32;
    for ((ka, va), (kb, vb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        for (x, y) in va.iter().zip(vb) {
            max_diff = max_diff.max((x - y).abs());
        }
    }
    // Same data, same global batches: only the order of summation differs.
    assert!(max_diff <= 1e-4, "max abs weight difference {max_diff}");
    // ... and the weights did move (both runs trained, from the same start).
    let init_moved = a.iter().any(|(_, v)| v.iter().any(|x| x.abs() > 0.5));
    assert!(init_moved);

    let (sa, sb) = (summary(&one), summary(&two));
    for k in ["final_val_acc", "best_val_acc", "epochs_completed"] {
        assert_eq!(sa[k], sb[k], "{k}");
    }
    assert!(
        (sa["final_val_loss"].as_f64().unwrap() - sb["final_val_loss"].as_f64().unwrap()).abs()
            < 1e-4
    );
    assert_eq!(sb["processes"], 2);
    assert_eq!(sb["global_batch_size"], 32);
    assert_eq!(sa["processes"], 1);
    // Only rank 0 wrote: one TensorBoard file, one line per logged step in metrics.jsonl.
    let tb = std::fs::read_dir(&two)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("events.out"))
        .count();
    assert_eq!(tb, 1);
    let lines = |d: &Path| {
        std::fs::read_to_string(d.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(lines(&one), lines(&two));
}

/// The pid of rank `rank` among the children of `mpirun` (read from their environment).
fn rank_pid(mpirun_pid: u32, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // Field 4 of /proc/<pid>/stat (after the parenthesised name) is the parent pid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid != Some(mpirun_pid) {
            continue;
        }
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_killed_rank_ends_the_job_quickly_and_one_process_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut child = mpirun(2, &train_args(&dir, 16, 30, 4000))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun");
    // Wait for the first epoch's checkpoint, then for the second epoch to be under way.
    let last = dir.join("checkpoints/last/training_state.json");
    let t0 = Instant::now();
    while !last.exists() {
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint");
        assert!(child.try_wait().unwrap().is_none(), "the job ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let victim = rank_pid(child.id(), 1).expect("rank 1's pid");
    let killed = Instant::now();
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the job still runs 30 s after a rank died"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = killed.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("rank 1") && err.contains("signal 9"),
        "the error names the dead rank: {err}"
    );
    eprintln!("job ended {took:?} after rank 1 was killed");

    // The last checkpoint is whole; one process (twice the batch: the same global batch)
    // continues from it.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&last).unwrap()).unwrap();
    let done = state["epoch"].as_u64().unwrap();
    assert!(done >= 1);
    let resume = dir.join("checkpoints/last");
    let out = Command::new(BIN)
        .args([
            "train",
            "--resume-from",
            &resume.display().to_string(),
            "--epochs",
            &(done + 1).to_string(),
            "--batch-size",
            "32",
            "--quiet",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("resuming from {}", resume.display())),
        "{err}"
    );
    let s = summary(&dir);
    assert_eq!(s["epochs_completed"].as_u64(), Some(done + 1));
    assert_eq!(s["processes"], 1);
}
