//! Continual learning (`vitrs continual`): a dataset's classes split into tasks learned one
//! after another, evaluated on every task after each, with the forgetting metrics of the
//! literature and the usual remedies (EWC, experience replay, the joint upper bound).

pub mod ewc;
pub mod metrics;
pub mod replay;
pub mod report;
pub mod runner;

use std::path::Path;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::{Rng, stream};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// One head over all classes, no task id at test time.
    ClassIl,
    /// The task id is given: logits are masked to the task's classes.
    TaskIl,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Strategy {
    #[value(name = "naive")]
    #[serde(rename = "naive")]
    Naive,
    #[value(name = "ewc")]
    #[serde(rename = "ewc")]
    Ewc,
    #[value(name = "replay")]
    #[serde(rename = "replay")]
    Replay,
    #[value(name = "ewc+replay")]
    #[serde(rename = "ewc+replay")]
    EwcReplay,
    #[value(name = "lora")]
    #[serde(rename = "lora")]
    Lora,
    #[value(name = "lora+replay")]
    #[serde(rename = "lora+replay")]
    LoraReplay,
    #[value(name = "joint")]
    #[serde(rename = "joint")]
    Joint,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Naive => "naive",
            Strategy::Ewc => "ewc",
            Strategy::Replay => "replay",
            Strategy::EwcReplay => "ewc+replay",
            Strategy::Lora => "lora",
            Strategy::LoraReplay => "lora+replay",
            Strategy::Joint => "joint",
        }
    }
    pub fn uses_ewc(self) -> bool {
        matches!(self, Strategy::Ewc | Strategy::EwcReplay)
    }
    pub fn uses_replay(self) -> bool {
        matches!(
            self,
            Strategy::Replay | Strategy::EwcReplay | Strategy::LoraReplay
        )
    }
    pub fn uses_lora(self) -> bool {
        matches!(self, Strategy::Lora | Strategy::LoraReplay)
    }
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::ClassIl => "class-il",
            Scenario::TaskIl => "task-il",
        }
    }
}

/// The flags `vitrs continual` adds to `train`'s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Args)]
#[serde(rename_all = "kebab-case")]
pub struct ContinualConfig {
    /// Number of tasks; the dataset's classes are split into this many equal groups.
    #[arg(long, default_value_t = 10)]
    pub tasks: usize,
    /// Class order before splitting: natural (0, 1, ...), seeded (a permutation drawn from --seed) or a file listing every class once (indices or names, whitespace- or comma-separated).
    #[arg(long, default_value = "seeded", alias = "class_order")]
    pub class_order: String,
    /// Epochs on each task (the LR schedule, with --warmup-epochs, restarts for every task).
    #[arg(long, default_value_t = 1, alias = "epochs_per_task")]
    pub epochs_per_task: usize,
    /// class-il: one head over all classes, no task id at test time; task-il: the task id is given and the logits are masked to its classes.
    #[arg(long, value_enum, default_value = "class-il")]
    pub scenario: Scenario,
    /// naive, ewc, replay, ewc+replay, lora, lora+replay or joint (all tasks at once: the upper bound).
    #[arg(long, value_enum, default_value = "naive")]
    pub strategy: Strategy,
    /// EWC: examples of each task used to estimate the diagonal empirical Fisher.
    #[arg(long, default_value_t = 1000, alias = "ewc_samples")]
    pub ewc_samples: usize,
    /// EWC: weight λ of the penalty λ/2 · Σ F·(θ − θ*)².
    #[arg(long, default_value_t = 100.0, alias = "ewc_lambda")]
    pub ewc_lambda: f64,
    /// EWC: decay γ of the online Fisher, F ← γ·F + F_task (1 = sum over tasks).
    #[arg(long, default_value_t = 1.0, alias = "ewc_gamma")]
    pub ewc_gamma: f64,
    /// Replay: buffer size in examples (class-balanced, raw u8 images).
    #[arg(long, default_value_t = 2000, alias = "replay_size")]
    pub replay_size: usize,
    /// Replay: fraction of every training batch drawn from the buffer once it has data.
    #[arg(long, default_value_t = 0.5, alias = "replay_ratio")]
    pub replay_ratio: f64,
    /// Stop cleanly after this task (1-based; 0 = run every task); continue with --resume-from.
    #[arg(long, default_value_t = 0, alias = "stop_after_task")]
    pub stop_after_task: usize,
    /// LoRA strategies: one adapter per task (used for its task under task-il).
    #[arg(long, alias = "lora_per_task")]
    pub lora_per_task: bool,
}

impl ContinualConfig {
    pub fn validate(&self) -> Result<()> {
        if self.tasks == 0 {
            return Err(Error::Config("--tasks must be at least 1".into()));
        }
        if self.epochs_per_task == 0 {
            return Err(Error::Config("--epochs-per-task must be at least 1".into()));
        }
        if self.strategy.uses_replay() && self.replay_size == 0 {
            return Err(Error::Config(format!(
                "--strategy {} needs a replay buffer: give --replay-size > 0 (default 2000)",
                self.strategy.name()
            )));
        }
        if self.strategy.uses_replay() && !(self.replay_ratio > 0.0 && self.replay_ratio < 1.0) {
            return Err(Error::Config(format!(
                "--replay-ratio {} must be in (0, 1): the share of each batch taken from the buffer",
                self.replay_ratio
            )));
        }
        if self.strategy.uses_ewc() && (self.ewc_samples == 0 || self.ewc_lambda < 0.0) {
            return Err(Error::Config(
                "EWC needs --ewc-samples > 0 and --ewc-lambda ≥ 0".into(),
            ));
        }
        if self.strategy.uses_ewc() && !(0.0..=1.0).contains(&self.ewc_gamma) {
            return Err(Error::Config(format!(
                "--ewc-gamma {} must be in [0, 1]",
                self.ewc_gamma
            )));
        }
        if self.lora_per_task && !self.strategy.uses_lora() {
            return Err(Error::Config(
                "--lora-per-task needs --strategy lora or lora+replay".into(),
            ));
        }
        Ok(())
    }
}

/// The class order: `natural`, `seeded` (by `seed`) or a file naming every class once.
pub fn class_order(spec: &str, class_names: &[String], seed: u64) -> Result<Vec<usize>> {
    let n = class_names.len();
    match spec {
        "natural" => Ok((0..n).collect()),
        "seeded" => Ok(Rng::at(seed, stream::SPLIT, &[n as u64]).permutation(n)),
        path => {
            let p = Path::new(path);
            let text = std::fs::read_to_string(p).map_err(|e| {
                Error::Config(format!(
                    "--class-order {path}: not natural or seeded, and not a readable file ({e})"
                ))
            })?;
            parse_class_order(&text, class_names)
                .map_err(|m| Error::Config(format!("--class-order {path}: {m}")))
        }
    }
}

/// Every class exactly once, as indices or names.
pub fn parse_class_order(
    text: &str,
    class_names: &[String],
) -> std::result::Result<Vec<usize>, String> {
    let n = class_names.len();
    let mut order = Vec::new();
    for tok in text
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
    {
        let i = match tok.parse::<usize>() {
            Ok(i) if i < n => i,
            Ok(i) => {
                return Err(format!(
                    "class index {i} is out of range (the dataset has {n} classes)"
                ));
            }
            Err(_) => class_names
                .iter()
                .position(|c| c == tok)
                .ok_or_else(|| format!("`{tok}` is neither a class index nor a class name"))?,
        };
        if order.contains(&i) {
            return Err(format!("class {tok} is listed twice"));
        }
        order.push(i);
    }
    if order.len() != n {
        return Err(format!(
            "lists {} classes; every one of the dataset's {n} classes must appear once",
            order.len()
        ));
    }
    Ok(order)
}

/// `order` cut into `tasks` equal consecutive groups.
pub fn split_tasks(order: &[usize], tasks: usize) -> Result<Vec<Vec<usize>>> {
    let n = order.len();
    if tasks == 0 || !n.is_multiple_of(tasks) {
        return Err(Error::Config(format!(
            "--tasks {tasks} does not divide the dataset's {n} classes into equal tasks (choose a divisor of {n})"
        )));
    }
    Ok(order.chunks(n / tasks).map(<[usize]>::to_vec).collect())
}

/// `task_of[class]` for the split.
pub fn task_of_class(tasks: &[Vec<usize>], num_classes: usize) -> Vec<usize> {
    let mut t = vec![0; num_classes];
    for (k, classes) in tasks.iter().enumerate() {
        for &c in classes {
            t[c] = k;
        }
    }
    t
}

use crate::train::evaluate::class_mask;

/// Task-IL: an additive `n × num_classes` logit mask keeping each row's task classes.
pub fn task_masks(task_per_row: &[usize], tasks: &[Vec<usize>], num_classes: usize) -> Vec<f32> {
    task_per_row
        .iter()
        .flat_map(|&t| class_mask(1, num_classes, &tasks[t]))
        .collect()
}

/// Task-IL targets: label smoothing spread over the row's task classes only (the others
/// are masked out of the softmax).
pub fn task_targets(
    labels: &[usize],
    task_of: &[usize],
    tasks: &[Vec<usize>],
    num_classes: usize,
    smoothing: f64,
) -> Vec<f32> {
    let mut out = vec![0f32; labels.len() * num_classes];
    for (r, &y) in labels.iter().enumerate() {
        let classes = &tasks[task_of[y]];
        let off = smoothing / classes.len() as f64;
        for &c in classes {
            out[r * num_classes + c] = off as f32;
        }
        out[r * num_classes + y] = (1.0 - smoothing + off) as f32;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::evaluate::MASKED;
    use crate::train::loss::soft_cross_entropy;
    use crate::train::step::count_correct;
    use burn::tensor::{Device, Tensor, TensorData};

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn class_orders_and_splits() {
        let n = names(10);
        assert_eq!(
            class_order("natural", &n, 1).unwrap(),
            (0..10).collect::<Vec<_>>()
        );
        let a = class_order("seeded", &n, 1).unwrap();
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_eq!(
            a,
            class_order("seeded", &n, 1).unwrap(),
            "same seed, same order"
        );
        assert_ne!(a, class_order("seeded", &n, 2).unwrap());
        assert_ne!(a, (0..10).collect::<Vec<_>>());
        let t = split_tasks(&a, 5).unwrap();
        assert_eq!(t.len(), 5);
        assert_eq!(t[0], a[..2]);
        assert_eq!(t[4], a[8..]);
        let of = task_of_class(&t, 10);
        assert_eq!(of[a[3]], 1);
        let e = split_tasks(&a, 3).unwrap_err().to_string();
        assert!(
            e.contains("--tasks 3 does not divide the dataset's 10 classes"),
            "{e}"
        );
    }

    #[test]
    fn class_order_files() {
        let n = names(4);
        assert_eq!(parse_class_order("3, 1\nc0 2", &n).unwrap(), [3, 1, 0, 2]);
        assert!(
            parse_class_order("0 1 2", &n)
                .unwrap_err()
                .contains("lists 3 classes")
        );
        assert!(
            parse_class_order("0 1 2 2", &n)
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            parse_class_order("0 1 2 9", &n)
                .unwrap_err()
                .contains("out of range")
        );
        assert!(
            parse_class_order("0 1 2 cat", &n)
                .unwrap_err()
                .contains("`cat`")
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("order.txt");
        std::fs::write(&f, "c3 c2 c1 c0").unwrap();
        assert_eq!(
            class_order(f.to_str().unwrap(), &n, 0).unwrap(),
            [3, 2, 1, 0]
        );
        let e = class_order("/nonexistent/order", &n, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not natural or seeded"), "{e}");
    }

    /// Task-IL masks keep exactly the row's task classes; with them the loss and the
    /// prediction only ever see those classes.
    #[test]
    fn task_il_masking() {
        let tasks = vec![vec![2, 0], vec![1, 3]];
        let m = task_masks(&[1, 0], &tasks, 4);
        assert_eq!(m, [MASKED, 0.0, MASKED, 0.0, 0.0, MASKED, 0.0, MASKED]);
        let of = task_of_class(&tasks, 4);
        let t = task_targets(&[3, 2], &of, &tasks, 4, 0.1);
        assert_eq!(t, [0.0, 0.05, 0.0, 0.95, 0.05, 0.0, 0.95, 0.0]);
        // A masked argmax: row 0's largest logit (class 0) is outside its task {1, 3}.
        let dev = Device::flex();
        let logits = Tensor::<2>::from_data(
            TensorData::new(vec![9.0f32, 1.0, 0.0, 2.0, 0.0, 5.0, 1.0, 0.0], [2, 4]),
            &dev,
        );
        let masked = logits.clone() + Tensor::<2>::from_data(TensorData::new(m, [2, 4]), &dev);
        assert_eq!(count_correct(logits, &[3, 2]), 0);
        assert_eq!(count_correct(masked.clone(), &[3, 2]), 2);
        // The masked loss is finite and equals the 2-class cross-entropy of the kept logits.
        let tt = Tensor::<2>::from_data(TensorData::new(t, [2, 4]), &dev);
        let loss: f32 = soft_cross_entropy(masked, tt).into_scalar();
        let ce = |a: f64, b: f64, ty: f64| {
            let lse = (a.exp() + b.exp()).ln();
            -(ty * (a - lse) + (1.0 - ty) * (b - lse))
        };
        // Row 0 keeps (1, 3) = (1.0, 2.0), target 0.95 on 3; row 1 keeps (2, 0) = (1.0, 0.0), 0.95 on 2.
        let expect = (ce(2.0, 1.0, 0.95) + ce(1.0, 0.0, 0.95)) / 2.0;
        assert!((loss as f64 - expect).abs() < 1e-5, "{loss} vs {expect}");
    }

    #[test]
    fn bad_strategy_settings_are_errors() {
        let mut c = ContinualConfig {
            tasks: 5,
            class_order: "seeded".into(),
            epochs_per_task: 1,
            scenario: Scenario::ClassIl,
            strategy: Strategy::Replay,
            ewc_samples: 1000,
            ewc_lambda: 100.0,
            ewc_gamma: 1.0,
            replay_size: 0,
            replay_ratio: 0.5,
            stop_after_task: 0,
            lora_per_task: false,
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("needs a replay buffer: give --replay-size > 0"),
            "{e}"
        );
        c.replay_size = 10;
        c.validate().unwrap();
        c.replay_ratio = 1.0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--replay-ratio")
        );
    }

    /// Every continual flag is documented in the README.
    #[test]
    fn readme_documents_every_continual_flag() {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
                .unwrap();
        let cmd = ContinualConfig::augment_args(clap::Command::new("vitrs"));
        for a in cmd.get_arguments() {
            if let Some(long) = a.get_long() {
                assert!(
                    readme.contains(&format!("`--{long}`")),
                    "README.md does not document --{long}"
                );
            }
        }
    }
}
