//! Which `train` flags `continual` and `compare-finetune` act on, and which they refuse.
//! Every command trains through the same engine with the same [`Config`], so a flag acts
//! with `train`'s meaning unless it is listed here; tests/flags.rs runs the whole table.

use std::collections::BTreeSet;
use std::path::Path;

use clap::ArgMatches;

use crate::config::Config;
use crate::continual::ContinualConfig;
use crate::error::{Error, Result};

/// The commands that take `train`'s flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainingCommand {
    Train,
    Continual,
    CompareFinetune,
}

/// Why `command` refuses the `train` flag `key` (kebab-case), or `None` when it acts.
pub fn refusal(
    command: TrainingCommand,
    key: &str,
    continual: Option<&ContinualConfig>,
) -> Option<&'static str> {
    use TrainingCommand::*;
    let lora_strategy = continual.is_some_and(|c| c.strategy.uses_lora());
    match (command, key) {
        (Train, _) => None,
        (Continual, "epochs") => {
            Some("each task trains --epochs-per-task epochs: use that instead")
        }
        (Continual, "adapter" | "adapter-from") => Some(
            "vitrs continual sets up its adapters itself: use --strategy lora or lora+replay (with --lora-rank, --lora-alpha, --lora-targets)",
        ),
        (
            Continual,
            "lora-rank" | "lora-alpha" | "lora-dropout" | "lora-targets" | "train-modules",
        ) if !lora_strategy => {
            Some("it sets up LoRA adapters, which only --strategy lora or lora+replay trains")
        }
        (
            Continual,
            "sparse-rank" | "sparsity" | "sparsity-attn" | "sparse-layers" | "sparse-dense-steps",
        ) => Some("SparseLoRA is not a continual strategy (use --strategy lora)"),
        (CompareFinetune, "adapter" | "freeze-backbone") => {
            Some("compare-finetune sets it for each method: choose them with --methods")
        }
        (CompareFinetune, "adapter-from") => {
            Some("compare-finetune trains every method from the same start: drop it")
        }
        (CompareFinetune, "resume-from") => Some(
            "compare-finetune starts every method afresh: resume one method with vitrs train --resume-from",
        ),
        _ => None,
    }
}

/// Refuse a flag `command` does not act on (one line naming it); a key of the `--config`
/// file it does not act on gets a note (a recipe file serves several commands).
pub fn check(
    command: TrainingCommand,
    matches: &ArgMatches,
    file: Option<&Path>,
    continual: Option<&ContinualConfig>,
) -> Result<()> {
    let train_keys: BTreeSet<String> = Config::key_spellings()
        .into_iter()
        .map(|(_, k)| k)
        .collect();
    for key in crate::config::command_line_keys(matches) {
        if !train_keys.contains(&key) {
            continue; // the command's own flags
        }
        if let Some(why) = refusal(command, &key, continual) {
            return Err(Error::Config(format!(
                "{} does not take --{key}: {why}",
                command.name()
            )));
        }
    }
    if let Some(f) = file {
        for key in Config::table_from_file(f)?.keys() {
            if let Some(why) = refusal(command, key, continual) {
                crate::log_line!(
                    "note: `{key}` in {} does not apply to {}: {why}",
                    f.display(),
                    command.name()
                );
            }
        }
    }
    Ok(())
}

impl TrainingCommand {
    pub fn name(self) -> &'static str {
        match self {
            TrainingCommand::Train => "vitrs train",
            TrainingCommand::Continual => "vitrs continual",
            TrainingCommand::CompareFinetune => "vitrs compare-finetune",
        }
    }
}
