//! The one configuration of a training run. Each field is a kebab-case flag (`--batch-size`),
//! a key of the same name in `--config FILE.toml`, and a line of the run's `config.toml`.
//! Precedence: built-in defaults < config file < command line. The seeds' snake_case
//! spellings (`--batch_size`, `--learning_rate`, ...) are accepted as aliases.

use std::path::Path;

use clap::{ArgMatches, Args, FromArgMatches, parser::ValueSource};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::cnn::CnnConfig;
use crate::model::sparse::SparseConfig;
use crate::model::{self, VitConfig};

mod sections;
mod validate;

pub use sections::*;

/// The one configuration of a training run, in sections. Every field is a kebab-case flag
/// (`--batch-size`) and a key of the same name in `--config FILE.toml` and in the run's
/// `config.toml`: the sections are flattened, so flags and keys are flat, as they always were
/// (a TOML file may also group keys under `[data]`, `[optim]`, ... tables).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Args)]
#[serde(default)]
pub struct Config {
    #[command(flatten)]
    #[serde(flatten)]
    pub data: DataConfig,
    #[command(flatten)]
    #[serde(flatten)]
    pub augment: AugmentConfig,
    #[command(flatten)]
    #[serde(flatten)]
    pub model: ModelConfig,
    #[command(flatten)]
    #[serde(flatten)]
    pub peft: PeftConfig,
    #[command(flatten)]
    #[serde(flatten)]
    pub distill: DistillConfig,
    #[command(flatten)]
    #[serde(flatten)]
    pub optim: OptimConfig,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunConfig,
}

impl Default for Config {
    fn default() -> Self {
        clap_defaults()
    }
}

/// The flag keys (kebab-case) given on the command line.
pub fn command_line_keys(matches: &ArgMatches) -> std::collections::BTreeSet<String> {
    matches
        .ids()
        .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.as_str().replace('_', "-"))
        .collect()
}

/// The sections of [`Config`], as a TOML file may name them.
pub const SECTIONS: [&str; 7] = [
    "data", "augment", "model", "peft", "distill", "optim", "run",
];

/// A section (or the whole config) with every field at its flag's default.
pub(crate) fn clap_defaults<T: Args + FromArgMatches>() -> T {
    let m = T::augment_args(clap::Command::new("vitrs")).get_matches_from(["vitrs"]);
    T::from_arg_matches(&m).expect("built-in defaults parse")
}

/// The model name of seed 000's fine-tuning recipe.
pub const HF_PRETRAINED: &str = "vit-hf-pretrained";

/// Seed 000's CIFAR-10 fine-tuning command (`vit-hf-pretrained`): the defaults that model
/// name brings, each overridden by a config file or a flag.
pub fn hf_pretrained_recipe() -> Vec<(&'static str, toml::Value)> {
    use toml::Value::{Float, Integer};
    vec![
        ("img-size", Integer(224)),
        ("epochs", Integer(30)),
        ("lr", Float(1e-5)),
        ("batch-size", Integer(32)),
        ("warmup-epochs", Float(3.0)),
        ("patience", Integer(8)),
        ("grad-clip", Float(1.0)),
        ("weight-decay", Float(0.01)),
    ]
}

/// Levenshtein distance, for "did you mean" on unknown config keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + (ca != *cb) as usize)
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Config {
    /// Every spelling a config file may use (flag names and their aliases, kebab- or
    /// snake-case), mapped to the key it sets.
    pub fn key_spellings() -> Vec<(String, String)> {
        let cmd = Config::augment_args(clap::Command::new("vitrs"));
        let mut out = Vec::new();
        for a in cmd.get_arguments() {
            let key = a.get_id().as_str().replace('_', "-");
            let names = a
                .get_long()
                .into_iter()
                .chain(a.get_all_aliases().unwrap_or_default());
            for n in names {
                out.push((n.replace('_', "-"), key.clone()));
            }
            out.push((key.clone(), key.clone()));
        }
        out
    }

    /// Parse a TOML config file. Keys may use any flag spelling; an unknown key is an error
    /// naming the closest valid one.
    pub fn table_from_file(path: &Path) -> Result<toml::Table> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io(path, "reading config", e))?;
        let table: toml::Table = toml::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), e.message())))?;
        let spellings = Config::key_spellings();
        // Keys may also sit in a table named after their section (`[optim] lr = 1e-3`).
        let mut entries = Vec::new();
        for (k, v) in table {
            match v {
                toml::Value::Table(t) if SECTIONS.contains(&k.as_str()) => {
                    entries.extend(
                        t.into_iter()
                            .map(|(k2, v2)| (format!("[{k}] {k2}"), k2, v2)),
                    );
                }
                v => entries.push((k.clone(), k, v)),
            }
        }
        let mut out = toml::Table::new();
        let mut given_as = std::collections::BTreeMap::new();
        for (shown, k, v) in entries {
            let name = k.replace('_', "-");
            match spellings.iter().find(|(s, _)| *s == name) {
                Some((_, key)) => {
                    let floats = match &v {
                        toml::Value::Float(f) => vec![*f],
                        toml::Value::Array(a) => {
                            a.iter().filter_map(toml::Value::as_float).collect()
                        }
                        _ => vec![],
                    };
                    if let Some(f) = floats.iter().find(|f| !f.is_finite()) {
                        return Err(Error::Config(format!(
                            "{}: `{shown} = {f}` is not a finite number: give {key} a number",
                            path.display()
                        )));
                    }
                    if let Some(first) = given_as.insert(key.clone(), shown.clone()) {
                        return Err(Error::Config(format!(
                            "{}: `{first}` and `{shown}` both set {key}: keep one",
                            path.display()
                        )));
                    }
                    out.insert(key.clone(), v);
                }
                None => {
                    let closest = spellings
                        .iter()
                        .min_by_key(|(s, _)| edit_distance(&name, s))
                        .map(|(s, _)| s.clone())
                        .unwrap_or_default();
                    return Err(Error::Config(format!(
                        "{}: unknown key `{shown}` (did you mean `{closest}`?)",
                        path.display()
                    )));
                }
            }
        }
        Ok(out)
    }

    /// base (defaults, or the resumed run's config) < file < flags given on the command line.
    pub fn resolve(
        base: Config,
        cli: &Config,
        matches: &ArgMatches,
        file: Option<&Path>,
    ) -> Result<Config> {
        Ok(Config::resolve_with_keys(base, cli, matches, file)?.0)
    }

    /// [`Config::resolve`], also returning the keys the file or the command line gave.
    pub fn resolve_with_keys(
        base: Config,
        cli: &Config,
        matches: &ArgMatches,
        file: Option<&Path>,
    ) -> Result<(Config, std::collections::BTreeSet<String>)> {
        let base_model = base.model.name.clone();
        let mut table = match toml::Value::try_from(base) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        let base_table = table.clone();
        let mut explicit = std::collections::BTreeSet::new();
        let mut file_keys = std::collections::BTreeSet::new();
        if let Some(f) = file {
            let from_file = Config::table_from_file(f)?;
            file_keys.extend(from_file.keys().cloned());
            table.extend(from_file);
        }
        explicit.extend(file_keys.iter().cloned());
        let mut cli_keys = std::collections::BTreeSet::new();
        let cli_table = match toml::Value::try_from(cli) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        for key in command_line_keys(matches) {
            if let Some(v) = cli_table.get(&key) {
                table.insert(key.clone(), v.clone());
            }
            cli_keys.insert(key.clone());
            explicit.insert(key);
        }
        // `--model vit-hf-pretrained` brings seed 000's recipe as defaults (a resumed run of
        // that model already has them, possibly changed, in its base).
        let is = |v: Option<&toml::Value>| v.and_then(|v| v.as_str()) == Some(HF_PRETRAINED);
        if is(table.get("model")) && base_model != HF_PRETRAINED {
            for (k, v) in hf_pretrained_recipe() {
                if !explicit.contains(k) {
                    table.insert(k.to_string(), v);
                }
            }
        }
        let cfg = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| {
                // serde names the type, not the key: find the key (and where it came from).
                let culprit = explicit.iter().find(|k| {
                    let mut one = base_table.clone();
                    one.extend(table.get(*k).map(|v| ((*k).clone(), v.clone())));
                    toml::Value::Table(one).try_into::<Config>().is_err()
                });
                let from_file = |k: &String| file_keys.contains(k) && !cli_keys.contains(k);
                Error::Config(match (culprit, file) {
                    (Some(k), Some(f)) if from_file(k) => {
                        format!("{}: {k}: {}", f.display(), e.message())
                    }
                    (Some(k), _) => format!("--{}: {}", k.replace('_', "-"), e.message()),
                    (None, _) => format!("config: {}", e.message()),
                })
            })?;
        Ok((cfg, explicit))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// The model this config describes, given the dataset's image size, channels and classes.
    pub fn vit_config(
        &self,
        data_size: usize,
        channels: usize,
        data_classes: usize,
    ) -> Result<VitConfig> {
        if let Some(cnn) = CnnConfig::preset(&self.model.name, &self.model.cnn_widths) {
            if self.model.dist_token {
                return Err(Error::Config(format!(
                    "--dist-token is a ViT token; --model {} is a CNN (drop --dist-token)",
                    self.model.name
                )));
            }
            let num_classes = self.model.num_classes.unwrap_or(data_classes);
            let cfg = VitConfig::cnn(
                self.model.img_size.unwrap_or(data_size),
                channels,
                num_classes,
                cnn,
            );
            cfg.validate()?;
            return Ok(cfg);
        }
        let p = model::find_preset(&self.model.name).ok_or_else(|| {
            Error::Config(format!(
                "unknown --model `{}` (choose one of: {})",
                self.model.name,
                model::preset_names().join(", ")
            ))
        })?;
        let num_classes = self.model.num_classes.unwrap_or(data_classes);
        if num_classes < data_classes {
            return Err(Error::Config(format!(
                "--num-classes {num_classes} is smaller than the dataset's {data_classes} classes (drop the flag to use the dataset's count)"
            )));
        }
        let dims = [
            self.model.embed_dim.unwrap_or(p.embed_dim),
            self.model.depth.unwrap_or(p.depth),
            self.model.num_heads.unwrap_or(p.num_heads),
            self.model.mlp_dim.unwrap_or(p.mlp_dim),
        ];
        let img_size = self.model.img_size.or(p.img_size).unwrap_or(data_size);
        let patch_size = self.model.patch_size.unwrap_or(p.patch_size);
        let mut cfg = VitConfig {
            qkv_bias: self.model.qkv_bias,
            drop_rate: p.dropout,
            attn_drop_rate: p.dropout,
            pool: self.model.pool,
            dist_token: self.model.dist_token || model::is_distilled_preset(&self.model.name),
            eval_head: self.model.eval_head,
            ..VitConfig::with_shape(img_size, patch_size, channels, num_classes, dims)
        };
        self.regularise(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }

    /// A warmup longer than the run (the default 5 epochs of a 1-epoch run) shrinks to a
    /// tenth of the run; returns the line saying so. For a warmup nobody set: one the user
    /// gave is theirs, and `validate` names it.
    pub fn fit_default_warmup(&mut self) -> Option<String> {
        let epochs = self.optim.epochs as f64;
        if self.optim.warmup_epochs <= epochs || epochs == 0.0 {
            return None;
        }
        let fitted = epochs / 10.0;
        let note = format!(
            "the default warmup of {} epochs does not fit --epochs {}: warming up for {fitted} epochs instead (a tenth of the run; --warmup-epochs sets it)",
            self.optim.warmup_epochs, self.optim.epochs
        );
        self.optim.warmup_epochs = fitted;
        Some(note)
    }

    /// This run's regularisation on a ViT's config (a preset's or a pretrained checkpoint's):
    /// dropout and attention dropout where given (else the model's own), DropPath always.
    /// The one place these flags reach the model.
    pub fn regularise(&self, vit: &mut VitConfig) {
        vit.drop_rate = self.model.dropout.unwrap_or(vit.drop_rate);
        vit.attn_drop_rate = self.model.attn_dropout.unwrap_or(vit.attn_drop_rate);
        vit.drop_path_rate = self.model.drop_path;
    }

    /// The checked SparseLoRA settings (`--sparsity*`, `--sparse-*`): the one place the CLI
    /// flags become the model's own `SparseConfig`.
    pub fn sparse(&self) -> Result<SparseConfig> {
        let bad = |m: String| Err(Error::Config(m));
        let attn = self.peft.sparsity_attn;
        for (flag, s) in [
            ("--sparsity", self.peft.sparsity),
            ("--sparsity-attn", attn),
        ] {
            if !(0.0..1.0).contains(&s) {
                return bad(format!(
                    "{flag} {s} must be in [0, 1) (the fraction of channels skipped, e.g. 0.5)"
                ));
            }
        }
        if self.peft.sparse_rank == 0 {
            return bad("--sparse-rank must be ≥ 1 (8 is the paper's choice)".into());
        }
        let [first, last] = self.peft.sparse_layers[..] else {
            return bad(format!(
                "--sparse-layers takes two counts, first,last (e.g. 2,1), not {:?}",
                self.peft.sparse_layers
            ));
        };
        if !(self.peft.sparse_dense_steps >= 0.0 && self.peft.sparse_dense_steps.is_finite()) {
            return bad(format!(
                "--sparse-dense-steps {} must be a fraction of the steps (< 1) or a step count (≥ 1)",
                self.peft.sparse_dense_steps
            ));
        }
        Ok(SparseConfig {
            mlp: self.peft.sparsity,
            attn,
            rank: self.peft.sparse_rank,
            dense_first: first,
            dense_last: last,
            dense_steps: self.peft.sparse_dense_steps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::precision::Precision;

    #[test]
    fn defaults_follow_the_seeds() {
        let c = Config::default();
        assert_eq!(c.optim.batch_size, 128);
        assert_eq!(c.optim.lr, 3e-4);
        assert_eq!(c.augment.label_smoothing, 0.1);
        assert_eq!(c.optim.grad_clip, 1.0);
        assert_eq!(c.run.save_every, 5);
        assert!(c.model.qkv_bias);
        c.validate().unwrap();
    }

    #[test]
    fn toml_round_trip() {
        let c = {
            let mut c = Config::default();
            c.model.embed_dim = Some(64);
            c
        };
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_key_names_the_closest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "batch-sise = 3\n").unwrap();
        let e = Config::table_from_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("batch-sise") && e.contains("`batch-size`"),
            "{e}"
        );
    }

    /// The sections nest in code, not on disk: config.toml stays flat (so old runs'
    /// train_config.toml load), and a file may also group keys under section tables.
    #[test]
    fn sections_are_flat_on_disk_and_tables_in_a_file_fill_them() {
        let flat = Config::default().to_toml();
        assert!(
            flat.contains("\nlr = ") && !flat.contains("[optim]"),
            "{flat}"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "model = \"vit-tiny\"\n[optim]\nlr = 0.01\nbatch_size = 16\n[data]\ndataset = \"mnist\"\n",
        )
        .unwrap();
        let t = Config::table_from_file(&p).unwrap();
        let c: Config = toml::Value::Table(t).try_into().unwrap();
        assert_eq!(
            (c.optim.lr, c.optim.batch_size, c.model.name.as_str()),
            (0.01, 16, "vit-tiny")
        );
        assert_eq!(c.data.dataset, DatasetKind::Mnist);
        std::fs::write(&p, "[optim]\nlearning-rate = 0.01\nbatch_sise = 3\n").unwrap();
        let e = Config::table_from_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("`[optim] batch_sise`") && e.contains("`batch-size`"),
            "{e}"
        );
    }

    /// Two spellings of one key in a file: an error naming both, not a silent winner.
    #[test]
    fn two_spellings_of_one_key_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "lr = 0.1\nlearning_rate = 0.2\n").unwrap();
        let e = Config::table_from_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("`lr`") && e.contains("`learning_rate`") && e.contains("keep one"),
            "{e}"
        );
    }

    fn resolve_args(args: &[&str]) -> Config {
        let cmd = Config::augment_args(clap::Command::new("vitrs"));
        let m = cmd.get_matches_from(args);
        let cli = Config::from_arg_matches(&m).unwrap();
        Config::resolve(Config::default(), &cli, &m, None).unwrap()
    }

    #[test]
    fn vit_hf_pretrained_brings_seed_000s_recipe_and_flags_override_it() {
        let c = resolve_args(&[
            "vitrs",
            "--model",
            "vit-hf-pretrained",
            "--pretrained",
            "google/vit-base-patch16-224-in21k",
            "--lr",
            "2e-5",
        ]);
        assert_eq!(c.optim.lr, 2e-5);
        assert_eq!(c.model.img_size, Some(224));
        assert_eq!(c.optim.batch_size, 32);
        assert_eq!(c.optim.epochs, 30);
        assert_eq!(c.optim.warmup_epochs, 3.0);
        assert_eq!(c.run.patience, 8);
        assert_eq!(c.optim.weight_decay, 0.01);
        c.validate().unwrap();
        // Other models keep the ordinary defaults.
        let c = resolve_args(&["vitrs", "--pretrained", "x", "--layer-decay", "0.75"]);
        assert_eq!(c.optim.batch_size, 128);
        assert_eq!(c.optim.layer_decay, 0.75);
        assert_eq!(c.model.img_size, None);
        let c = resolve_args(&["vitrs", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]);
        assert_eq!(c.data.mean, Some(vec![0.5; 3]));
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn impossible_shapes_are_rejected() {
        let c = {
            let mut c = Config::default();
            c.model.embed_dim = Some(100);
            c.model.num_heads = Some(3);
            c
        };
        let e = c.vit_config(32, 3, 10).unwrap_err().to_string();
        assert!(e.contains("not divisible by num-heads"), "{e}");
        let c = {
            let mut c = Config::default();
            c.model.patch_size = Some(5);
            c
        };
        let e = c.vit_config(32, 3, 10).unwrap_err().to_string();
        assert!(
            e.contains("img-size 32 is not divisible by patch-size 5"),
            "{e}"
        );
    }

    #[test]
    fn precision_flags_parse_and_contradictions_are_named() {
        let c = resolve_args(&["vitrs", "--amp", "fp16", "--loss-scale", "1024"]);
        assert_eq!(
            (c.optim.precision, c.optim.loss_scale),
            (Precision::F16, 1024.0)
        );
        c.validate().unwrap();
        let c = resolve_args(&["vitrs", "--precision", "bf16", "--grad-checkpointing"]);
        assert!(c.optim.precision == Precision::Bf16 && c.run.grad_checkpointing);
        let bad = |c: Config, what: &str| {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        };
        bad(
            {
                let mut c = Config::default();
                c.optim.precision = Precision::F16;
                c.peft.adapter = AdapterKind::Sparselora;
                c
            },
            "--adapter sparselora",
        );
        bad(
            {
                let mut c = Config::default();
                c.optim.loss_scale = 0.0;
                c
            },
            "--loss-scale",
        );
    }

    #[test]
    fn sparse_flags_out_of_range_are_named() {
        for (cfg, msg) in [
            (
                {
                    let mut c = Config::default();
                    c.peft.sparsity = 1.0;
                    c
                },
                "--sparsity",
            ),
            (
                {
                    let mut c = Config::default();
                    c.peft.sparsity_attn = -0.1;
                    c
                },
                "--sparsity-attn",
            ),
            (
                {
                    let mut c = Config::default();
                    c.peft.sparse_rank = 0;
                    c
                },
                "--sparse-rank",
            ),
            (
                {
                    let mut c = Config::default();
                    c.peft.sparse_layers = vec![1];
                    c
                },
                "--sparse-layers",
            ),
            (
                {
                    let mut c = Config::default();
                    c.peft.sparse_dense_steps = -1.0;
                    c
                },
                "--sparse-dense-steps",
            ),
        ] {
            let e = cfg.sparse().unwrap_err().to_string();
            assert!(e.contains(msg), "{e}");
        }
    }
}

#[cfg(test)]
mod config_files {
    use super::*;

    /// Every recipe in configs/ parses, resolves and validates.
    #[test]
    fn all_shipped_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let cli = Config::default();
            let matches =
                Config::augment_args(clap::Command::new("vitrs")).get_matches_from(["vitrs"]);
            let cfg = Config::resolve(Config::default(), &cli, &matches, Some(&path))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            cfg.validate()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // The image size and channels the dataset itself has.
            let (size, channels) = match cfg.data.dataset {
                DatasetKind::FashionMnist | DatasetKind::Mnist => (28, 1),
                _ => (32, 3),
            };
            cfg.vit_config(size, channels, 10)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
        assert!(n >= 8, "only {n} configs found");
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "lr = 0.01\nbatch_size = 7\nnum_layers = 3\n").unwrap();
        let cmd = Config::augment_args(clap::Command::new("vitrs"));
        let matches = cmd.get_matches_from(["vitrs", "--batch-size", "9"]);
        let cli = Config::from_arg_matches(&matches).unwrap();
        let cfg = Config::resolve(Config::default(), &cli, &matches, Some(&p)).unwrap();
        assert_eq!(cfg.optim.lr, 0.01); // file
        assert_eq!(cfg.optim.batch_size, 9); // flag beats file
        assert_eq!(cfg.model.depth, Some(3)); // seed spelling in a file
        assert_eq!(cfg.optim.epochs, 100); // default
    }
}

#[cfg(test)]
mod readme {
    use super::*;

    /// The README's flag tables stay complete: every `train` flag is documented.
    #[test]
    fn readme_documents_every_flag() {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
                .unwrap();
        let cmd = Config::augment_args(clap::Command::new("vitrs"));
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
