//! Checks of a configuration that need no data: contradictions and impossible values, each
//! one line naming the flag.

use super::{AdapterKind, Config, DistillKind, HF_PRETRAINED};
use crate::error::{Error, Result};
use crate::model::precision::Precision;

/// More padding than this is no augmentation anyone means (and image sizes overflow).
const MAX_PADDING: usize = 1024;

impl Config {
    /// Checks that need no data: contradictions and impossible values. The RandAugment policy
    /// is the data side's to parse (`data::recipe::check`).
    pub fn validate(&self) -> Result<()> {
        self.all_finite()?;
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.augment.crop_padding > MAX_PADDING {
            return Err(Error::Config(format!(
                "--crop-padding {} is out of range: at most {MAX_PADDING} pixels",
                self.augment.crop_padding
            )));
        }
        for (flag, v) in [
            ("--eps", self.optim.eps),
            ("--distill-tau", self.distill.distill_tau),
        ] {
            if v <= 0.0 {
                return Err(Error::Config(format!(
                    "{flag} {v} is out of range: it must be > 0"
                )));
            }
        }
        for (flag, v) in [
            ("--hflip", self.augment.hflip),
            ("--reprob", self.augment.reprob),
            ("--mixup-prob", self.augment.mixup_prob),
            ("--mixup-switch-prob", self.augment.mixup_switch_prob),
            ("--lora-dropout", self.peft.lora_dropout),
            ("--distill-alpha", self.distill.distill_alpha),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::Config(format!(
                    "{flag} {v} is out of range: it must be in [0, 1]"
                )));
            }
        }
        for (flag, v) in [
            ("--ema-decay", self.optim.ema_decay),
            ("--lora-alpha", self.peft.lora_alpha),
            ("--rotation", self.augment.rotation),
            ("--mixup", self.augment.mixup),
            ("--cutmix", self.augment.cutmix),
            ("--drop-path", self.model.drop_path),
            ("--max-training-hours", self.run.max_training_hours),
        ] {
            if v < 0.0 {
                return Err(Error::Config(format!(
                    "{flag} {v} is out of range: it must be ≥ 0"
                )));
            }
        }
        if self.optim.batch_size == 0 {
            return bad("--batch-size must be > 0");
        }
        if self.optim.epochs == 0 {
            return bad("--epochs must be > 0");
        }
        if !(self.optim.lr > 0.0 && self.optim.lr.is_finite()) {
            return bad("--lr must be a positive number");
        }
        if !(0.0..1.0).contains(&self.augment.label_smoothing) {
            return bad("--label-smoothing must be in [0, 1)");
        }
        if self.optim.grad_clip < 0.0
            || self.optim.weight_decay < 0.0
            || self.optim.min_lr < 0.0
            || self.optim.warmup_start_lr < 0.0
        {
            return bad("--grad-clip, --weight-decay, --min-lr and --warmup-start-lr must be ≥ 0");
        }
        if self.optim.min_lr > self.optim.lr {
            return bad("--min-lr is larger than --lr (the cosine decay would go up)");
        }
        if !(self.optim.loss_scale > 0.0 && self.optim.loss_scale.is_finite())
            || self.optim.loss_scale_window == 0
        {
            return bad("--loss-scale must be a positive number and --loss-scale-window ≥ 1");
        }
        if self.optim.precision != Precision::F32 && self.peft.adapter == AdapterKind::Sparselora {
            return bad(
                "--adapter sparselora runs its sliced products in f32: use --precision f32 with it (or --adapter lora for half precision)",
            );
        }
        if self.optim.warmup_epochs < 0.0 || self.optim.warmup_epochs > self.optim.epochs as f64 {
            return Err(Error::Config(format!(
                "--warmup-epochs {} must be between 0 and --epochs {} (e.g. --warmup-epochs {})",
                self.optim.warmup_epochs,
                self.optim.epochs,
                self.optim.epochs as f64 / 10.0
            )));
        }
        if !(0.0..1.0).contains(&self.optim.beta1) || !(0.0..1.0).contains(&self.optim.beta2) {
            return bad("--beta1 and --beta2 must be in [0, 1)");
        }
        if self.run.eval_every == 0 {
            return bad("--eval-every must be ≥ 1");
        }
        if self.run.max_training_hours < 0.0 {
            return bad("--max-training-hours must be ≥ 0");
        }
        if self.run.log_every == 0 {
            return bad("--log-every must be ≥ 1");
        }
        if self.optim.accum_steps == 0 {
            return bad("--accum-steps must be ≥ 1");
        }
        if !(0.0..1.0).contains(&self.optim.ema_decay) {
            return bad("--ema-decay must be in [0, 1) (0 = off)");
        }
        let range =
            |v: &[f64], lo: f64, hi: f64| v.len() == 2 && v[0] > lo && v[0] <= v[1] && v[1] <= hi;
        if !range(&self.augment.rrc_scale, 0.0, 1.0) {
            return bad("--rrc-scale takes MIN,MAX with 0 < MIN ≤ MAX ≤ 1 (e.g. 0.08,1.0)");
        }
        if !range(&self.augment.rrc_ratio, 0.0, f64::INFINITY) {
            return bad("--rrc-ratio takes MIN,MAX with 0 < MIN ≤ MAX (e.g. 0.75,1.3333)");
        }
        if !matches!(self.augment.color_jitter.len(), 0 | 1 | 4)
            || self.augment.color_jitter.iter().any(|&x| x < 0.0)
        {
            return bad(
                "--color-jitter takes one value (brightness = contrast = saturation) or four (B,C,S,HUE), all ≥ 0",
            );
        }
        if self.augment.color_jitter.len() == 4 && self.augment.color_jitter[3] > 0.5 {
            return bad("--color-jitter hue must be ≤ 0.5");
        }
        for (name, p) in [
            ("--hflip", self.augment.hflip),
            ("--reprob", self.augment.reprob),
            ("--mixup-prob", self.augment.mixup_prob),
            ("--mixup-switch-prob", self.augment.mixup_switch_prob),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::Config(format!(
                    "{name} {p} must be a probability in [0, 1]"
                )));
            }
        }
        if self.augment.mixup < 0.0 || self.augment.cutmix < 0.0 || self.augment.rotation < 0.0 {
            return bad("--mixup, --cutmix and --rotation must be ≥ 0");
        }
        if !(self.optim.layer_decay > 0.0 && self.optim.layer_decay <= 1.0) {
            return bad("--layer-decay must be in (0, 1] (1 = off)");
        }
        if self.model.name == HF_PRETRAINED && self.model.pretrained.is_none() {
            return bad(
                "--model vit-hf-pretrained fine-tunes pretrained weights: give --pretrained PATH_OR_ID (e.g. google/vit-base-patch16-224-in21k)",
            );
        }
        if self.model.pretrained.is_none() && (self.model.reset_head || self.peft.freeze_backbone) {
            return bad("--reset-head and --freeze-backbone need --pretrained");
        }
        for (name, v) in [("--mean", &self.data.mean), ("--std", &self.data.std)] {
            if v.as_ref()
                .is_some_and(|v| v.is_empty() || v.iter().any(|x| !x.is_finite()))
            {
                return bad(&format!("{name} needs one finite number per channel"));
            }
        }
        if !(0.0..=1.0).contains(&self.distill.distill_alpha) {
            return bad("--distill-alpha must be in [0, 1]");
        }
        if !(self.distill.distill_tau > 0.0 && self.distill.distill_tau.is_finite()) {
            return bad("--distill-tau must be > 0");
        }
        if self.distill.distillation != DistillKind::None && self.distill.teacher.is_none() {
            return bad(
                "--distillation soft|hard needs a teacher: give --teacher PATH (a vitrs checkpoint, e.g. runs/X/checkpoints/best_model, or timm weights)",
            );
        }
        if self.data.mean.is_some() != self.data.std.is_some() {
            return bad("--mean and --std go together: give both or neither");
        }
        if self
            .data
            .std
            .as_ref()
            .is_some_and(|s| s.iter().any(|&x| x <= 0.0))
        {
            return bad("--std values must be > 0");
        }
        Ok(())
    }

    /// Every number of the configuration is finite: NaN or infinity in a flag or a key would
    /// otherwise train as if it were some other value (a NaN clip is no clipping).
    fn all_finite(&self) -> Result<()> {
        let Ok(toml::Value::Table(t)) = toml::Value::try_from(self) else {
            return Ok(());
        };
        for (key, v) in &t {
            let floats: Vec<f64> = match v {
                toml::Value::Float(f) => vec![*f],
                toml::Value::Array(a) => a.iter().filter_map(toml::Value::as_float).collect(),
                _ => continue,
            };
            if let Some(f) = floats.iter().find(|f| !f.is_finite()) {
                return Err(Error::Config(format!(
                    "--{key} {f} is not a finite number (give --{key} a number)"
                )));
            }
        }
        Ok(())
    }
}
