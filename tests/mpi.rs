//! Data parallelism over MPI, end to end through `mpirun` (feature `mpi`; needs Open MPI's
//! `mpirun` on PATH: `.ci/run` installs it). Run with
//! `cargo test --release --features mpi --test mpi`.
#![cfg(feature = "mpi")]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vitrs::model::io::read_safetensors;

const BIN: &str = env!("CARGO_BIN_EXE_vitrs");

/// One process trains 1 epoch (batch 32, `images` synthetic images) into `out`: the path of
/// its last checkpoint, a teacher or a base to fine-tune.
fn trained_checkpoint(out: &Path, images: usize) -> String {
    run_ok(alone(&train_args(out, 32, 1, images)));
    out.join("checkpoints/last").display().to_string()
}

/// A tiny model on 193 synthetic images: with 2 ranks × 16 one rank's shard is one image
/// shorter, so its last batch is empty and the global last batch holds a single image.
fn train_args(out: &Path, batch: usize, epochs: usize, size: usize) -> Vec<String> {
    let mut a = vec!["train".to_string()];
    a.extend(tiny_args(out, batch, size));
    a.extend(["--epochs".into(), epochs.to_string()]);
    a
}

/// The data, model and optimizer flags every run here shares (any subcommand that trains).
fn tiny_args(out: &Path, batch: usize, size: usize) -> Vec<String> {
    [
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

/// `vitrs ...` as one plain process.
fn alone(args: &[String]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args);
    c
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

fn weights(file: &Path) -> Vec<(String, Vec<f32>)> {
    read_safetensors(file)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.data))
        .collect()
}

/// The same parameters, every value within 1e-4 (same data, same global batches: only the
/// order of summation differs), and trained (some weight moved far from its start).
fn assert_same_weights(a: &Path, b: &Path) {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(a.len(), b.len());
    let mut max_diff = 0f32;
    for ((ka, va), (kb, vb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert_eq!(va.len(), vb.len(), "{ka}");
        for (x, y) in va.iter().zip(vb) {
            max_diff = max_diff.max((x - y).abs());
        }
    }
    assert!(max_diff <= 1e-4, "max abs weight difference {max_diff}");
    eprintln!("max abs weight difference {max_diff:e}");
    let init_moved = a.iter().any(|(_, v)| v.iter().any(|x| x.abs() > 0.5));
    assert!(init_moved);
}

#[test]
fn two_processes_of_16_train_exactly_like_one_of_32() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    run_ok(alone(&train_args(&one, 32, 2, 193)));
    let log = run_ok(mpirun(2, &train_args(&two, 16, 2, 193)));
    assert_same_training(&one, &two, log);
}

/// The same on a Vulkan device (built with `--features mpi,vulkan`, a third build of burn, so
/// not in CI; run by hand with lavapipe): both ranks on the one adapter, `vulkan:0`. The
/// all-reduce goes through host memory either way; the device kernels must not make the two
/// layouts differ beyond the tolerance of `assert_same_training`.
#[cfg(feature = "vulkan")]
#[test]
fn two_processes_on_vulkan_train_like_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    let on_vulkan = |mut a: Vec<String>| {
        a.extend(["--device".into(), "vulkan:0".into()]);
        a
    };
    run_ok(alone(&on_vulkan(train_args(&one, 32, 2, 193))));
    let log = run_ok(mpirun(2, &on_vulkan(train_args(&two, 16, 2, 193))));
    assert_same_training(&one, &two, log);
}

/// Two runs (`one`: 1 process × 32, `two`: 2 × 16, `log` its stderr) ended with the same
/// weights (≤ 1e-4), validation accuracy and loss, and only rank 0 of `two` wrote.
fn assert_same_training(one: &Path, two: &Path, log: String) {
    let (one, two) = (one.to_path_buf(), two.to_path_buf());
    assert!(log.contains("global batch 32 = 16 per process"), "{log}");
    assert!(
        log.contains("rank 1: epoch 2:"),
        "rank 1 logs its throughput: {log}"
    );

    let ck = Path::new("checkpoints/last/model.safetensors");
    assert_same_weights(&one.join(ck), &two.join(ck));

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

/// Distillation data-parallel: the teacher runs on each rank's shard and the student ends as
/// with one process of the global batch; the teacher's log values are summed over ranks.
#[test]
fn distillation_two_processes_of_16_train_like_one_of_32() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher = trained_checkpoint(&tmp.path().join("teacher"), 193);
    for (name, extra) in [
        ("hard", &["--distillation", "hard", "--dist-token"][..]),
        (
            "soft",
            &["--distillation", "soft", "--distill-alpha", "0.7"][..],
        ),
    ] {
        let (one, two) = (
            tmp.path().join(format!("{name}1")),
            tmp.path().join(format!("{name}2")),
        );
        let args = |out: &Path, batch| {
            let mut a = train_args(out, batch, 2, 193);
            a.extend(["--teacher", &teacher, "--log-every", "2"].map(String::from));
            a.extend(extra.iter().map(|s| s.to_string()));
            a
        };
        run_ok(alone(&args(&one, 32)));
        let log = run_ok(mpirun(2, &args(&two, 16)));
        assert_same_training(&one, &two, log);
        let (sa, sb) = (summary(&one), summary(&two));
        for k in ["teacher_val_acc", "teacher_agreement"] {
            assert!(sa[k].is_number(), "{name}: {k}");
            assert_eq!(sa[k], sb[k], "{name}: {k}");
        }
        // The logged teacher values are of the whole global batch: the same in both runs
        // (teacher_s, a time, excepted).
        let train_lines = |d: &Path| -> Vec<serde_json::Value> {
            std::fs::read_to_string(d.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter(|r| r["split"] == "train")
                .collect()
        };
        let (ra, rb) = (train_lines(&one), train_lines(&two));
        assert!(!ra.is_empty() && ra.len() == rb.len());
        for (a, b) in ra.iter().zip(&rb) {
            for k in [
                "loss_ce",
                "loss_distill",
                "teacher_acc",
                "agreement",
                "loss",
                "acc",
            ] {
                let (x, y) = (value(a, k), value(b, k));
                assert!(
                    (x - y).abs() < 1e-4,
                    "{name} step {}: {k} {x} vs {y}",
                    a["step"]
                );
            }
            assert!(value(b, "teacher_s") > 0.0);
        }
    }
}

/// A metrics.jsonl value, at the top level or among the extras.
fn value(record: &serde_json::Value, key: &str) -> f64 {
    record
        .get(key)
        .or_else(|| record.get("extra").and_then(|e| e.get(key)))
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("no {key} in {record}"))
}

/// `vitrs continual` data-parallel: 2 processes × 8 give the accuracy matrix and weights of
/// 1 process × 16 (naive; EWC + replay: the Fisher summed over ranks, the replay draw shared).
#[test]
fn continual_two_processes_of_8_learn_like_one_of_16() {
    let tmp = tempfile::tempdir().unwrap();
    for strategy in ["naive", "ewc+replay"] {
        let args = |out: &Path, batch| {
            let mut a = vec!["continual".to_string()];
            a.extend(tiny_args(out, batch, 400));
            a.extend(
                [
                    "--strategy",
                    strategy,
                    "--tasks",
                    "2",
                    "--epochs-per-task",
                    "2",
                    // An odd number: the ranks get 11 and 10 examples.
                    "--ewc-samples",
                    "21",
                    "--replay-size",
                    "40",
                    "--replay-ratio",
                    "0.5",
                ]
                .iter()
                .map(|s| s.to_string()),
            );
            a
        };
        let name = strategy.replace('+', "_");
        let (one, two) = (
            tmp.path().join(format!("{name}1")),
            tmp.path().join(format!("{name}2")),
        );
        run_ok(alone(&args(&one, 16)));
        run_ok(mpirun(2, &args(&two, 8)));
        let report = |d: &Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(d.join("continual.json")).unwrap())
                .unwrap()
        };
        let (ra, rb) = (report(&one), report(&two));
        assert_eq!(ra["acc_matrix"], rb["acc_matrix"], "{strategy}");
        assert_eq!(ra["completed_tasks"], 2);
        for k in ["avg_forgetting", "bwt", "trainable_params"] {
            assert_eq!(ra[k], rb[k], "{strategy}: {k}");
        }
        let ck = Path::new("checkpoints/after_task_2/model.safetensors");
        assert_same_weights(&one.join(ck), &two.join(ck));
        if strategy == "ewc+replay" {
            // The Fisher (of task 1) and θ* agree too, and the replay buffers are identical.
            let ewc = Path::new("checkpoints/after_task_2/ewc.safetensors");
            assert_same_weights(&one.join(ewc), &two.join(ewc));
            // The Fisher is small: compare it relative to its largest entry.
            let fisher = |d: &Path| -> Vec<f32> {
                weights(&d.join(ewc))
                    .into_iter()
                    .filter(|(k, _)| k.starts_with("fisher."))
                    .flat_map(|(_, v)| v)
                    .collect()
            };
            let (fa, fb) = (fisher(&one), fisher(&two));
            let top = fa.iter().fold(0f32, |m, x| m.max(x.abs()));
            let diff = fa
                .iter()
                .zip(&fb)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(top > 0.0 && fa.len() == fb.len());
            assert!(diff <= 1e-4 * top, "Fisher: max diff {diff}, largest {top}");
            let buf = Path::new("checkpoints/after_task_2/replay.u8");
            assert_eq!(
                std::fs::read(one.join(buf)).unwrap(),
                std::fs::read(two.join(buf)).unwrap()
            );
        }
        // Only rank 0 wrote TensorBoard.
        let tb = std::fs::read_dir(&two)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("events.out"))
            .count();
        assert_eq!(tb, 1);
    }
}

/// `vitrs compare-finetune` under mpirun runs every method in-process, data-parallel, and
/// rank 0 writes the comparison; the parameter counts are those of the one-process run, and
/// the peak-memory column is left empty with a note instead of a wrong number.
#[test]
fn compare_finetune_runs_every_method_under_mpirun() {
    let tmp = tempfile::tempdir().unwrap();
    // Fine-tuning starts from a checkpoint (head-only needs one).
    let base = trained_checkpoint(&tmp.path().join("base"), 96);
    let methods = "full,lora,sparselora,head-only";
    let args = |out: &Path, batch| {
        let mut a = vec!["compare-finetune".to_string()];
        a.extend(tiny_args(out, batch, 96));
        // SparseLoRA sparse in both blocks (the default keeps the first two and the last
        // one dense: all of this tiny model).
        a.extend(
            [
                "--pretrained",
                &base,
                "--epochs",
                "1",
                "--sparse-layers",
                "0,0",
                "--methods",
                methods,
            ]
            .map(String::from),
        );
        a
    };
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    run_ok(alone(&args(&one, 32)));
    run_ok(mpirun(2, &args(&two, 16)));
    let compare = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("compare.json")).unwrap()).unwrap()
    };
    let (ca, cb) = (compare(&one), compare(&two));
    let (ma, mb) = (
        ca["methods"].as_array().unwrap(),
        cb["methods"].as_array().unwrap(),
    );
    assert_eq!(mb.len(), 4);
    for (a, b) in ma.iter().zip(mb) {
        assert_eq!(a["method"], b["method"]);
        for k in ["trainable_params", "total_params"] {
            assert!(a[k].as_f64().unwrap() > 0.0);
            assert_eq!(a[k], b[k], "{}: {k}", a["method"]);
        }
        assert!(a["peak_memory_mb"].as_f64().unwrap() > 0.0);
        assert!(b["peak_memory_mb"].is_null(), "{b}");
        assert!(b["final_acc"].as_f64().is_some());
        // Each method's run is a 2-process run of the same global batch.
        let s = summary(Path::new(b["run_dir"].as_str().unwrap()));
        assert_eq!(s["processes"], 2);
        assert_eq!(s["global_batch_size"], 32);
    }
    assert_eq!(cb["processes"], 2);
    assert!(
        cb["note"]
            .as_str()
            .unwrap()
            .contains("not measured under MPI")
    );
    let md = std::fs::read_to_string(two.join("compare.md")).unwrap();
    assert!(
        md.contains("not measured under MPI") && md.contains("| head-only |"),
        "{md}"
    );
}

/// BatchNorm's running statistics are averaged over the ranks every step, so every rank
/// evaluates its shard with the same statistics: the run's last validation loss (reduced over
/// 2 ranks, each with the model it holds) equals what one process gets from the saved weights.
#[test]
fn batchnorm_statistics_are_the_same_on_every_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cnn");
    let mut args = train_args(&dir, 16, 1, 193);
    args.extend(
        [
            "--model",
            "cnn-fast",
            "--cnn-widths",
            "8,16",
            "--patience",
            "0",
        ]
        .map(String::from),
    );
    run_ok(mpirun(2, &args));
    let last_val = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|r| r["split"] == "val")
        .expect("a validation record");
    let out = Command::new(BIN)
        .args(["eval", "--checkpoint"])
        .arg(dir.join("checkpoints/last"))
        .args(["--json", "--threads", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (run_loss, eval_loss) = (value(&last_val, "loss"), eval["loss"].as_f64().unwrap());
    assert!(
        (run_loss - eval_loss).abs() < 1e-5,
        "validation loss during the run {run_loss} vs one process on the saved weights {eval_loss}"
    );
}
