//! `--device flex|vulkan[:N]|cuda[:N]`: burn picks the backend from the device at run time.

use burn::tensor::Device;

use crate::error::{Error, Result};

/// Device names compiled into this build, best first.
pub fn compiled() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    if cfg!(feature = "vulkan") {
        v.push("vulkan");
    }
    v.push("flex");
    v
}

/// Parse a device spec; `None` picks the best compiled-in backend.
pub fn resolve(spec: Option<&str>) -> Result<Device> {
    let spec = spec.unwrap_or(compiled()[0]);
    let (name, index) = match spec.split_once(':') {
        Some((n, i)) => {
            let idx = i.parse::<usize>().map_err(|_| {
                Error::Config(format!(
                    "--device {spec}: `{i}` is not a device index (e.g. cuda:0)"
                ))
            })?;
            (n, idx)
        }
        None => (spec, 0),
    };
    let missing = |feature: &str| {
        Error::Config(format!(
            "--device {spec}: this build has no {feature} backend (rebuild with `cargo build --release --features {feature}`; compiled in: {})",
            compiled().join(", ")
        ))
    };
    match name {
        "flex" | "cpu" => Ok(Device::flex()),
        "vulkan" => {
            #[cfg(feature = "vulkan")]
            {
                Ok(Device::vulkan(burn::tensor::DeviceKind::DiscreteGpu(index)))
            }
            #[cfg(not(feature = "vulkan"))]
            {
                let _ = index;
                Err(missing("vulkan"))
            }
        }
        "cuda" => {
            #[cfg(feature = "cuda")]
            {
                Ok(Device::cuda(index))
            }
            #[cfg(not(feature = "cuda"))]
            {
                Err(missing("cuda"))
            }
        }
        other => Err(Error::Config(format!(
            "--device `{other}` is not known (use flex, vulkan[:N] or cuda[:N])"
        ))),
    }
}

/// The autodiff device training runs on; `checkpointing` turns on burn's balanced gradient
/// checkpointing (memory-bound activations recomputed in the backward pass, not stored).
pub fn autodiff(device: &Device, checkpointing: bool) -> Device {
    let ad = device.clone().autodiff();
    if checkpointing {
        ad.gradient_checkpointing()
    } else {
        ad
    }
}

/// Size rayon's global pool (used by flex and the data loader). Call once, early.
pub fn set_threads(threads: usize) {
    if threads > 0 {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global();
    }
}
