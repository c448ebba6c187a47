//! From a `Config` to the train and validation `Dataset`s: where each dataset lives, download
//! when allowed, subsets.

use std::path::PathBuf;

use super::Split;
use super::dataset::Dataset;
use super::formats::cifar::{self, CifarKind, Format, LabelType};
use super::formats::{download, idx, imagefolder, synthetic};
use crate::config::{Config, DatasetKind, LabelKind};
use crate::error::{Error, Result};

use super::formats::idx::FASHION_MNIST_DIR as DEBIAN_FASHION_MNIST;

pub fn data_dir(cfg: &Config) -> PathBuf {
    match (&cfg.data.data_dir, cfg.data.dataset) {
        (Some(d), _) => d.clone(),
        (None, DatasetKind::FashionMnist)
            if std::path::Path::new(DEBIAN_FASHION_MNIST).is_dir() =>
        {
            PathBuf::from(DEBIAN_FASHION_MNIST)
        }
        (None, DatasetKind::FashionMnist) => download::default_data_dir().join("fashion-mnist"),
        (None, DatasetKind::Mnist) => download::default_data_dir().join("mnist"),
        (None, _) => download::default_data_dir(),
    }
}

fn cifar_kind(d: DatasetKind) -> Option<CifarKind> {
    match d {
        DatasetKind::Cifar10 => Some(CifarKind::Ten),
        DatasetKind::Cifar100 => Some(CifarKind::Hundred),
        _ => None,
    }
}

/// Load one split as configured (with --limit-train / --limit-val applied).
pub fn load_split(cfg: &Config, split: Split) -> Result<Dataset> {
    let dir = data_dir(cfg);
    let data = match cfg.data.dataset {
        DatasetKind::Cifar10 | DatasetKind::Cifar100 => {
            let kind = cifar_kind(cfg.data.dataset)
                .ok_or_else(|| Error::Config("not a CIFAR dataset".into()))?;
            let label = match cfg.data.label_type {
                LabelKind::Fine => LabelType::Fine,
                LabelKind::Coarse => LabelType::Coarse,
            };
            // A directory that is there but damaged is reported by the reader, not re-downloaded.
            let present = [Format::Binary, Format::Python]
                .iter()
                .any(|f| dir.join(kind.dir_name(*f)).is_dir());
            if !present {
                download::ensure_cifar(&dir, kind)?;
            }
            cifar::load_cifar(&dir, kind, split, label)?
        }
        DatasetKind::FashionMnist => idx::load_idx(&dir, split, &idx::FASHION_MNIST_CLASSES)?,
        DatasetKind::Mnist => idx::load_idx(&dir, split, &idx::MNIST_CLASSES)?,
        DatasetKind::Imagefolder => {
            let (d, skipped) = imagefolder::load_imagefolder(&dir, split, cfg.data.strict)?;
            if skipped > 0 {
                crate::log_line!(
                    "warning: skipped {skipped} unreadable images in {} (use --strict to fail instead)",
                    dir.display()
                );
            }
            d
        }
        DatasetKind::Synthetic => {
            let n = match split {
                Split::Train => cfg.data.synthetic_size,
                Split::Test => (cfg.data.synthetic_size / 5).max(1),
            };
            let classes = cfg.model.num_classes.unwrap_or(10);
            let size = cfg.model.img_size.unwrap_or(32);
            if classes == 0 || classes > 65536 || size == 0 {
                return Err(Error::Config(
                    "synthetic data needs 1..=65536 classes and --img-size > 0".into(),
                ));
            }
            crate::memory::ensure_fits(
                format_args!("{n} synthetic {size}×{size} images"),
                // Pixels, then the shuffled order (8 bytes) and label (2) of each image.
                (n as u128).saturating_mul(3 * (size as u128).pow(2) + 10),
                "lower --synthetic-size or --img-size",
            )?;
            synthetic::synthetic(n, classes, size, 3, cfg.run.seed, split as u64)
        }
    };
    let data = match &cfg.data.classes {
        Some(spec) => {
            let classes = super::dataset::parse_classes(spec, data.num_classes())?;
            data.select_classes(&classes)
        }
        None => data,
    };
    let limit = match split {
        Split::Train => cfg.data.limit_train,
        Split::Test => cfg.data.limit_val,
    };
    if data.is_empty() {
        return Err(Error::Data(format!(
            "the {split:?} split of {} is empty",
            dir.display()
        )));
    }
    Ok(if limit > 0 {
        data.truncate(limit)
    } else {
        data
    })
}

/// Per-channel normalisation: `--mean`/`--std` when set (a pretrained run sets them from the
/// weights' own statistics), else the dataset's.
pub fn mean_std(cfg: &Config, channels: usize) -> (Vec<f32>, Vec<f32>) {
    let given = |v: &Option<Vec<f64>>| -> Option<Vec<f32>> {
        v.as_ref()
            .filter(|v| !v.is_empty())
            .map(|v| v.iter().map(|&x| x as f32).collect())
    };
    let (m, s): (Vec<f32>, Vec<f32>) = match (given(&cfg.data.mean), given(&cfg.data.std)) {
        (Some(m), Some(s)) => (m, s),
        _ => {
            let (m, s): (&[f32], &[f32]) = match cfg.data.dataset {
                DatasetKind::Cifar10 => (&super::CIFAR10_MEAN, &super::CIFAR10_STD),
                DatasetKind::Cifar100 => (&super::CIFAR100_MEAN, &super::CIFAR100_STD),
                DatasetKind::FashionMnist => {
                    (&super::FASHION_MNIST_MEAN, &super::FASHION_MNIST_STD)
                }
                DatasetKind::Mnist => (&super::MNIST_MEAN, &super::MNIST_STD),
                DatasetKind::Imagefolder => (&super::IMAGENET_MEAN, &super::IMAGENET_STD),
                DatasetKind::Synthetic => (&[0.5, 0.5, 0.5], &[0.25, 0.25, 0.25]),
            };
            (m.to_vec(), s.to_vec())
        }
    };
    // A grayscale set gets its one statistic; an RGB model on gray data repeats it.
    let pick = |v: &[f32]| (0..channels).map(|c| v[c.min(v.len() - 1)]).collect();
    (pick(&m), pick(&s))
}
