//! Surviving what happens to long jobs: kill -9 at random moments, SIGTERM, NaN losses.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vitrs::model::io::read_safetensors;
use vitrs::train::checkpoint;

fn train_args(out: &Path, epochs: usize) -> Vec<String> {
    let s = |x: &str| x.to_string();
    vec![
        s("train"),
        s("--dataset"),
        s("synthetic"),
        s("--synthetic-size"),
        s("3072"),
        s("--img-size"),
        s("16"),
        s("--patch-size"),
        s("4"),
        s("--embed-dim"),
        s("32"),
        s("--depth"),
        s("2"),
        s("--num-heads"),
        s("2"),
        s("--mlp-dim"),
        s("64"),
        s("--epochs"),
        epochs.to_string(),
        s("--batch-size"),
        s("32"),
        s("--warmup-epochs"),
        s("0.5"),
        s("--dropout"),
        s("0.1"),
        s("--drop-path"),
        s("0.1"),
        s("--save-every"),
        s("0"),
        s("--log-every"),
        s("5"),
        s("--threads"),
        s("1"),
        s("--quiet"),
        s("--out-dir"),
        out.to_str().unwrap().to_string(),
    ]
}

fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vitrs"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Run to the end and insist it succeeded.
fn run_to_end(args: &[String]) {
    let out = spawn(args).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn with_resume(mut args: Vec<String>, out: &Path) -> Vec<String> {
    let last = out.join("checkpoints/last");
    if last.exists() {
        args.push("--resume-from".into());
        args.push(last.to_str().unwrap().into());
    }
    args
}

#[test]
fn kill_9_at_random_moments_then_resume_ends_with_the_straight_runs_weights() {
    let straight = tempfile::tempdir().unwrap();
    run_to_end(&train_args(straight.path(), 3));
    let want =
        read_safetensors(&straight.path().join("checkpoints/last/model.safetensors")).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut rng = vitrs::rng::Rng::seed(7);
    let mut kills = 0;
    for _ in 0..6 {
        let mut child = spawn(&with_resume(train_args(dir.path(), 3), dir.path()));
        let delay = Duration::from_millis(rng.range_inclusive(200, 1500) as u64);
        let start = Instant::now();
        while start.elapsed() < delay && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        // Whatever the moment, `last` is absent or complete.
        let last = dir.path().join("checkpoints/last");
        if last.exists() {
            checkpoint::load(&last).expect("checkpoints/last must always be complete");
        }
    }
    assert!(
        kills >= 2,
        "the run finished before it could be killed; make it longer"
    );
    run_to_end(&with_resume(train_args(dir.path(), 3), dir.path()));
    let got = read_safetensors(&dir.path().join("checkpoints/last/model.safetensors")).unwrap();
    assert_eq!(
        got, want,
        "after {kills} kills the weights differ from the uninterrupted run"
    );
    // The metrics read as one run: no torn line, no step twice.
    let steps: Vec<u64> = vitrs::report::metrics::read_metrics(&dir.path().join("metrics.jsonl"))
        .unwrap()
        .iter()
        .filter(|r| r.split == "train")
        .map(|r| r.step)
        .collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
}

#[test]
fn sigterm_finishes_the_step_writes_a_checkpoint_and_exits_143() {
    let dir = tempfile::tempdir().unwrap();
    let child = spawn(&train_args(dir.path(), 50));
    let metrics = dir.path().join("metrics.jsonl");
    let start = Instant::now();
    while !std::fs::read_to_string(&metrics).is_ok_and(|s| s.lines().count() >= 1) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no training progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // 128 + SIGTERM: a scheduler tells a stopped run from a finished one (issue 23, case 8).
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(err.contains("--resume-from"), "{err}");
    let ck = checkpoint::load(&dir.path().join("checkpoints/last")).unwrap();
    let state = ck.state.unwrap();
    assert!(state.global_step > 0 && state.epoch < 50, "{state:?}");
    let summary = std::fs::read_to_string(dir.path().join("summary.json")).unwrap();
    assert!(summary.contains("\"interrupted\""), "{summary}");
}

#[test]
fn a_diverging_run_stops_with_the_step_and_the_advice() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = train_args(dir.path(), 1);
    let at = args.iter().position(|a| a == "--warmup-epochs").unwrap();
    args.drain(at..at + 2);
    args.extend(
        [
            "--lr",
            "1e30",
            "--grad-clip",
            "0",
            "--warmup-epochs",
            "0",
            "--min-lr",
            "1e30",
        ]
        .map(String::from),
    );
    let out = spawn(&args).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    assert!(
        line.contains("loss became") && line.contains("step") && line.contains("lower --lr"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}
