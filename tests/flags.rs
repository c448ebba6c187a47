//! No flag silently ignored: every `vitrs train` flag, given to `train`, `continual` and
//! `compare-finetune`, either reaches the configuration the engine runs (it acts, with
//! `train`'s meaning: all three train through `train::engine`) or is refused with one line
//! naming it. The table below is the whole contract; a new flag must be added to it.

use std::collections::{BTreeMap, BTreeSet};

use clap::{CommandFactory, FromArgMatches};
use vitrs::cli::flags::{self, TrainingCommand};
use vitrs::cli::{Cli, Command, TrainArgs};
use vitrs::config::Config;

/// A valid value other than the default for every flag (`None`: a switch).
fn values() -> BTreeMap<&'static str, Option<&'static str>> {
    BTreeMap::from([
        ("dataset", Some("mnist")),
        ("data-dir", Some("/tmp/x")),
        ("label-type", Some("coarse")),
        ("limit-train", Some("10")),
        ("limit-val", Some("10")),
        ("synthetic-size", Some("64")),
        ("strict", None),
        ("crop-padding", Some("2")),
        ("hflip", Some("0.25")),
        ("rrc", None),
        ("rrc-scale", Some("0.5,1")),
        ("rrc-ratio", Some("0.5,2")),
        ("interpolation", Some("bilinear")),
        ("rotation", Some("10")),
        ("color-jitter", Some("0.4,0.4,0.4")),
        ("randaugment", Some("rand-m9-mstd0.5")),
        ("reprob", Some("0.25")),
        ("remode", Some("const")),
        ("mixup", Some("0.8")),
        ("cutmix", Some("1.0")),
        ("mixup-prob", Some("0.5")),
        ("mixup-switch-prob", Some("0.25")),
        ("classes", Some("0,1")),
        ("model", Some("vit-tiny")),
        ("pretrained", Some("/tmp/x/weights")),
        ("reset-head", None),
        ("freeze-backbone", None),
        ("adapter", Some("lora")),
        ("lora-rank", Some("4")),
        ("lora-alpha", Some("8")),
        ("lora-dropout", Some("0.1")),
        ("lora-targets", Some("qkv,fc1")),
        ("train-modules", Some("norm")),
        ("adapter-from", Some("/tmp/x/adapter")),
        ("sparse-rank", Some("4")),
        ("sparsity", Some("0.25")),
        ("sparsity-attn", Some("0.25")),
        ("sparse-layers", Some("2,2")),
        ("sparse-dense-steps", Some("0.1")),
        ("mean", Some("0.5,0.5,0.5")),
        ("std", Some("0.25,0.25,0.25")),
        ("img-size", Some("16")),
        ("patch-size", Some("8")),
        ("embed-dim", Some("32")),
        ("depth", Some("2")),
        ("num-heads", Some("2")),
        ("mlp-dim", Some("64")),
        ("num-classes", Some("12")),
        ("qkv-bias", Some("false")),
        ("dropout", Some("0.2")),
        ("attn-dropout", Some("0.2")),
        ("drop-path", Some("0.1")),
        ("pool", Some("avg")),
        ("dist-token", None),
        ("eval-head", Some("cls")),
        ("cnn-widths", Some("8,16,32")),
        ("teacher", Some("/tmp/x/teacher")),
        ("distillation", Some("soft")),
        ("distill-alpha", Some("0.25")),
        ("distill-tau", Some("2")),
        ("epochs", Some("3")),
        ("batch-size", Some("16")),
        ("lr", Some("0.01")),
        ("weight-decay", Some("0.1")),
        ("beta1", Some("0.8")),
        ("beta2", Some("0.99")),
        ("eps", Some("1e-6")),
        ("layer-decay", Some("0.75")),
        ("warmup-epochs", Some("1")),
        ("warmup-start-lr", Some("1e-6")),
        ("min-lr", Some("1e-5")),
        ("label-smoothing", Some("0.2")),
        ("accum-steps", Some("2")),
        ("ema-decay", Some("0.99")),
        ("ema-warmup", Some("false")),
        ("grad-clip", Some("0.5")),
        ("eval-every", Some("2")),
        ("patience", Some("3")),
        ("max-training-hours", Some("0.5")),
        ("max-steps", Some("7")),
        ("save-every", Some("2")),
        ("log-every", Some("10")),
        ("seed", Some("7")),
        ("out-dir", Some("/tmp/x/out")),
        ("resume-from", Some("/tmp/x/ck")),
        ("device", Some("flex")),
        ("threads", Some("1")),
        ("precision", Some("bf16")),
        ("loss-scale", Some("1024")),
        ("loss-scale-window", Some("100")),
        ("grad-checkpointing", None),
        ("quiet", None),
        ("overwrite", None),
    ])
}

/// The (command, flag) pairs refused with the default continual strategy (naive).
fn refused() -> BTreeSet<(&'static str, &'static str)> {
    let mut r = BTreeSet::new();
    for k in [
        "epochs",
        "adapter",
        "adapter-from",
        "lora-rank",
        "lora-alpha",
        "lora-dropout",
        "lora-targets",
        "train-modules",
        "sparse-rank",
        "sparsity",
        "sparsity-attn",
        "sparse-layers",
        "sparse-dense-steps",
    ] {
        r.insert(("continual", k));
    }
    for k in ["adapter", "freeze-backbone", "adapter-from", "resume-from"] {
        r.insert(("compare-finetune", k));
    }
    r
}

fn train_keys() -> BTreeSet<String> {
    Config::key_spellings()
        .into_iter()
        .map(|(_, k)| k)
        .collect()
}

/// The command's verdict on `--key value`: Ok(the configuration the engine gets) or the
/// refusal's text. Resuming commands are not resumed here: the configuration is resolved
/// the way the command resolves it, without reading a checkpoint.
fn verdict(cmd: &str, key: &str, value: Option<&str>, extra: &[&str]) -> Result<Config, String> {
    let flag = format!("--{key}");
    let mut args = vec!["vitrs", cmd, flag.as_str()];
    args.extend(value);
    args.extend_from_slice(extra);
    let matches = Cli::command()
        .try_get_matches_from(&args)
        .map_err(|e| e.to_string())?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    let sub = matches.subcommand_matches(cmd).unwrap();
    let (command, train, continual) = match cli.command {
        Command::Train(a) => (TrainingCommand::Train, *a, None),
        Command::Continual(a) => (
            TrainingCommand::Continual,
            TrainArgs {
                config_file: a.config_file,
                config: a.config,
            },
            Some(a.continual),
        ),
        Command::CompareFinetune(a) => (TrainingCommand::CompareFinetune, a.train, None),
        _ => unreachable!(),
    };
    flags::check(command, sub, None, continual.as_ref()).map_err(|e| e.to_string())?;
    let mut train = train;
    // Resolution would read the checkpoint to resume; the flag reaching the config is what
    // this test checks.
    let resume = train.config.run.resume_from.take();
    let mut cfg =
        Config::resolve(Config::default(), &train.config, sub, None).map_err(|e| e.to_string())?;
    cfg.run.resume_from = resume;
    Ok(cfg)
}

fn toml_value(cfg: &Config, key: &str) -> Option<toml::Value> {
    match toml::Value::try_from(cfg).unwrap() {
        toml::Value::Table(t) => t.get(key).cloned(),
        _ => None,
    }
}

#[test]
fn every_train_flag_acts_or_is_refused_in_every_command() {
    let values = values();
    let keys = train_keys();
    let listed: BTreeSet<String> = values.keys().map(|k| k.to_string()).collect();
    assert_eq!(
        keys, listed,
        "the table must list every train flag (left: the flags, right: the table)"
    );
    let refused = refused();
    let default = Config::default();
    let mut table = Vec::new();
    for cmd in ["train", "continual", "compare-finetune"] {
        for (key, value) in &values {
            let outcome = verdict(cmd, key, *value, &[]);
            match (refused.contains(&(cmd, *key)), outcome) {
                (true, Err(e)) => {
                    assert!(
                        e.contains(&format!("--{key}")) && e.lines().count() == 1,
                        "{cmd} --{key}: the refusal must be one line naming the flag: {e}"
                    );
                    table.push(format!("{cmd} --{key}: refused"));
                }
                (false, Ok(cfg)) => {
                    assert_ne!(
                        toml_value(&cfg, key),
                        toml_value(&default, key),
                        "{cmd} --{key}: accepted but did not reach the configuration"
                    );
                    table.push(format!("{cmd} --{key}: acts"));
                }
                (true, Ok(_)) => panic!("{cmd} --{key} should be refused but was accepted"),
                (false, Err(e)) => panic!("{cmd} --{key} should act but was refused: {e}"),
            }
        }
    }
    assert_eq!(table.len(), 3 * keys.len());
}

/// The LoRA flags act in `continual` with a LoRA strategy (they are refused without one).
#[test]
fn lora_flags_act_with_a_lora_strategy() {
    for key in ["lora-rank", "lora-targets", "train-modules"] {
        let v = values()[key];
        let cfg = verdict("continual", key, v, &["--strategy", "lora"]).unwrap();
        assert_ne!(toml_value(&cfg, key), toml_value(&Config::default(), key));
        let e = verdict("continual", key, v, &["--strategy", "replay"]).unwrap_err();
        assert!(e.contains(&format!("--{key}")), "{e}");
    }
}

/// A key of a `--config` file that the command does not act on is a note, not an error: one
/// recipe file serves `train` and `continual` (RESULTS.md runs continual on
/// configs/fashion-mnist.toml, whose `epochs` is train's).
#[test]
fn file_keys_a_command_does_not_use_are_noted_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("r.toml");
    std::fs::write(&f, "epochs = 3\nlr = 0.01\n").unwrap();
    let path = f.to_str().unwrap();
    let matches = Cli::command()
        .try_get_matches_from(["vitrs", "continual", "--config", path])
        .unwrap();
    let sub = matches.subcommand_matches("continual").unwrap();
    flags::check(TrainingCommand::Continual, sub, Some(&f), None).unwrap();
    let e = flags::check(
        TrainingCommand::Continual,
        Cli::command()
            .try_get_matches_from(["vitrs", "continual", "--epochs", "3"])
            .unwrap()
            .subcommand_matches("continual")
            .unwrap(),
        None,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("--epochs") && e.contains("--epochs-per-task"),
        "{e}"
    );
}
