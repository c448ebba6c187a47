//! From the run's configuration to the per-sample transforms and the batch mixer: the one
//! place where augmentation flags become augmentation.

use super::augment::{
    ColorJitter, EraseMode, ErasingConfig, EvalTransform, Interp, MixConfig, Normalize,
    RandAugment, Resample, RrcConfig, TrainTransform,
};
use crate::config::{Config, EraseKind, InterpKind};
use crate::error::{Error, Result};

fn interp(k: InterpKind) -> Interp {
    match k {
        InterpKind::Nearest => Interp::Nearest,
        InterpKind::Bilinear => Interp::Bilinear,
        InterpKind::Bicubic => Interp::Bicubic,
    }
}

/// `--randaugment`'s policy, parsed; a bad one is a one-line config error.
fn randaugment_policy(p: &str) -> Result<RandAugment> {
    RandAugment::parse(p).map_err(|e| Error::Config(format!("--randaugment {p}: {e}")))
}

/// The flags only the data side can check (the RandAugment policy), for the commands to call
/// before anything is loaded: `Config::validate` cannot, as config sits below data.
pub fn check(cfg: &Config) -> Result<()> {
    if let Some(p) = &cfg.augment.randaugment {
        randaugment_policy(p)?;
    }
    Ok(())
}

/// The training transform: [resize] → RandomResizedCrop | RandomCrop(pad) → flip → rotation →
/// RandAugment | ColorJitter → normalise → random erasing.
pub fn train_transform(
    cfg: &Config,
    mean: &[f32],
    std: &[f32],
    out_size: usize,
) -> Result<TrainTransform> {
    let color_jitter = match cfg.augment.color_jitter.as_slice() {
        [] => None,
        [x] => Some(ColorJitter {
            brightness: *x,
            contrast: *x,
            saturation: *x,
            hue: 0.0,
        }),
        [b, c, s, h] => Some(ColorJitter {
            brightness: *b,
            contrast: *c,
            saturation: *s,
            hue: *h,
        }),
        _ => {
            return Err(Error::Config(
                "--color-jitter takes one or four values".into(),
            ));
        }
    };
    let randaugment = match &cfg.augment.randaugment {
        Some(p) => Some(
            randaugment_policy(p)?
                .with_fill_from_mean(mean)
                .with_resample(Resample::Fixed(interp(cfg.augment.interpolation))),
        ),
        None => None,
    };
    let erase_mode = match cfg.augment.remode {
        EraseKind::Pixel => EraseMode::Pixel,
        EraseKind::Rand => EraseMode::Rand,
        EraseKind::Const => EraseMode::Const,
    };
    Ok(TrainTransform {
        out_size: Some((out_size, out_size)),
        resize_interp: interp(cfg.augment.interpolation),
        crop_padding: (cfg.augment.crop_padding > 0).then_some(cfg.augment.crop_padding),
        rrc: cfg.augment.rrc.then(|| RrcConfig {
            scale: (cfg.augment.rrc_scale[0], cfg.augment.rrc_scale[1]),
            ratio: (cfg.augment.rrc_ratio[0], cfg.augment.rrc_ratio[1]),
            interp: interp(cfg.augment.interpolation),
        }),
        flip_prob: cfg.augment.hflip,
        rotation_degrees: cfg.augment.rotation,
        color_jitter,
        randaugment,
        normalize: Some(Normalize::new(mean, std)),
        erasing: (cfg.augment.reprob > 0.0)
            .then(|| ErasingConfig::timm(cfg.augment.reprob, erase_mode)),
    })
}

/// Normalise, resizing to the model's input size when the data differs.
pub fn eval_transform(cfg: &Config, mean: &[f32], std: &[f32], out_size: usize) -> EvalTransform {
    EvalTransform {
        out_size: Some((out_size, out_size)),
        interp: interp(cfg.augment.interpolation),
        ..EvalTransform::normalize_only(mean, std)
    }
}

/// Mixup/CutMix, when either alpha is set.
pub fn mix(cfg: &Config, num_classes: usize) -> Option<MixConfig> {
    (cfg.augment.mixup > 0.0 || cfg.augment.cutmix > 0.0).then_some(MixConfig {
        mixup_alpha: cfg.augment.mixup,
        cutmix_alpha: cfg.augment.cutmix,
        prob: cfg.augment.mixup_prob,
        switch_prob: cfg.augment.mixup_switch_prob,
        label_smoothing: cfg.augment.label_smoothing,
        num_classes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_randaugment_policy_is_a_config_error() {
        check(&Config::default()).unwrap();
        let cfg = {
            let mut c = Config::default();
            c.augment.randaugment = Some("rand-m9-x3".into());
            c
        };
        let e = check(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("--randaugment rand-m9-x3: unknown RandAugment section"),
            "{e}"
        );
        assert!(train_transform(&cfg, &[0.5; 3], &[0.25; 3], 32).is_err());
    }

    #[test]
    fn defaults_are_seed_001s_cifar_transform() {
        let t = train_transform(&Config::default(), &[0.5; 3], &[0.25; 3], 32).unwrap();
        assert_eq!(t.crop_padding, Some(4));
        assert_eq!(t.flip_prob, 0.5);
        assert!(
            t.rrc.is_none()
                && t.randaugment.is_none()
                && t.color_jitter.is_none()
                && t.erasing.is_none()
        );
        assert!(mix(&Config::default(), 10).is_none());
    }

    #[test]
    fn flags_reach_the_transform() {
        let cfg = {
            let mut c = Config::default();
            c.augment.rrc = true;
            c.augment.rrc_scale = vec![0.5, 1.0];
            c.augment.color_jitter = vec![0.1, 0.2, 0.3, 0.05];
            c.augment.randaugment = Some("rand-m7-n3-mstd0.5".into());
            c.augment.reprob = 0.25;
            c.augment.remode = EraseKind::Const;
            c.augment.mixup = 0.8;
            c.augment.cutmix = 1.0;
            c
        };
        let t = train_transform(&cfg, &[0.5; 3], &[0.25; 3], 32).unwrap();
        assert_eq!(t.rrc.as_ref().unwrap().scale, (0.5, 1.0));
        assert_eq!(t.color_jitter.as_ref().unwrap().hue, 0.05);
        assert_eq!(t.randaugment.as_ref().unwrap().num_ops, 3);
        assert_eq!(t.erasing.as_ref().unwrap().prob, 0.25);
        let m = mix(&cfg, 10).unwrap();
        assert_eq!(
            (m.mixup_alpha, m.cutmix_alpha, m.num_classes),
            (0.8, 1.0, 10)
        );
    }
}
