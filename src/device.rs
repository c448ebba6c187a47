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

/// One device a compiled-in backend sees, as `vitrs devices` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adapter {
    /// What `--device` takes for it: `flex`, `vulkan:1`, `cuda:0`.
    pub spec: String,
    pub name: String,
    /// discrete, integrated, virtual, cpu (wgpu's device types), or other.
    pub kind: &'static str,
    /// Driver and version, where the backend says.
    pub driver: String,
}

/// Every device each compiled-in backend sees, in `--device` order.
pub fn list() -> Vec<Adapter> {
    let mut out = Vec::new();
    #[cfg(feature = "vulkan")]
    out.extend(
        vulkan::adapters()
            .into_iter()
            .enumerate()
            .map(|(i, a)| Adapter {
                spec: format!("vulkan:{i}"),
                name: a.name,
                kind: vulkan::kind_name(a.device_type),
                driver: format!("{} {}", a.driver, a.driver_info).trim().to_string(),
            }),
    );
    out.push(Adapter {
        spec: "flex".into(),
        name: format!(
            "burn-flex on the CPU ({} threads)",
            rayon::current_num_threads()
        ),
        kind: "cpu",
        driver: String::new(),
    });
    out
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
            (n, Some(idx))
        }
        None => (spec, None),
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
                vulkan::device(spec, index)
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
                Ok(Device::cuda(index.unwrap_or(0)))
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

/// Vulkan adapters as wgpu reports them, and burn's device for one of them.
#[cfg(feature = "vulkan")]
mod vulkan {
    use burn::tensor::{Device, DeviceKind};

    use crate::error::{Error, Result};

    /// Every Vulkan adapter, in the loader's order.
    pub fn adapters() -> Vec<wgpu::AdapterInfo> {
        quiet_runtime_dir();
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::VULKAN,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        futures_lite::future::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN))
            .iter()
            .map(wgpu::Adapter::get_info)
            .collect()
    }

    pub fn kind_name(t: wgpu::DeviceType) -> &'static str {
        match t {
            wgpu::DeviceType::DiscreteGpu => "discrete",
            wgpu::DeviceType::IntegratedGpu => "integrated",
            wgpu::DeviceType::VirtualGpu => "virtual",
            wgpu::DeviceType::Cpu => "cpu",
            wgpu::DeviceType::Other => "other",
        }
    }

    /// Discrete before integrated before virtual before a CPU device (lavapipe).
    fn rank(t: wgpu::DeviceType) -> usize {
        match t {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Cpu => 3,
            wgpu::DeviceType::Other => 4,
        }
    }

    /// `vulkan` (the best adapter) or `vulkan:N` (the N-th of all of them), as burn's
    /// device kind: cubecl counts each type from zero on its own.
    pub fn device(spec: &str, index: Option<usize>) -> Result<Device> {
        let all = adapters();
        let listed = || {
            let names: Vec<String> = all
                .iter()
                .enumerate()
                .map(|(i, a)| format!("vulkan:{i} {} ({})", a.name, kind_name(a.device_type)))
                .collect();
            if names.is_empty() {
                "no Vulkan adapter at all (install a driver: a GPU's, or mesa-vulkan-drivers for lavapipe on the CPU)".to_string()
            } else {
                format!("found {}", names.join(", "))
            }
        };
        let chosen = match index {
            Some(i) => i,
            None => (0..all.len())
                .min_by_key(|&i| (rank(all[i].device_type), i))
                .ok_or_else(|| Error::Config(format!("--device {spec}: {}", listed())))?,
        };
        let Some(a) = all.get(chosen) else {
            return Err(Error::Config(format!(
                "--device {spec}: there is no Vulkan adapter {chosen}; {} (`vitrs devices` lists them)",
                listed()
            )));
        };
        let same_before = all[..chosen]
            .iter()
            .filter(|b| b.device_type == a.device_type)
            .count();
        let kind = match a.device_type {
            wgpu::DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu(same_before),
            wgpu::DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu(same_before),
            wgpu::DeviceType::VirtualGpu => DeviceKind::VirtualGpu(same_before),
            wgpu::DeviceType::Cpu if same_before == 0 => DeviceKind::Cpu,
            _ => {
                return Err(Error::Config(format!(
                    "--device {spec}: burn cannot address {} ({}) separately from the adapters of its kind before it",
                    a.name,
                    kind_name(a.device_type)
                )));
            }
        };
        Ok(Device::vulkan(kind))
    }

    /// Mesa's Vulkan drivers print "XDG_RUNTIME_DIR is invalid or not set" on every instance
    /// when it is unset (a batch job, a container): a private one is given instead.
    fn quiet_runtime_dir() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let valid = std::env::var_os("XDG_RUNTIME_DIR")
                .map(std::path::PathBuf::from)
                .is_some_and(|d| d.is_dir());
            if valid {
                return;
            }
            // SAFETY: getuid(2) cannot fail and touches no memory.
            let uid = unsafe { libc::getuid() };
            let dir = std::env::temp_dir().join(format!("vitrs-runtime-{uid}"));
            let made = std::fs::create_dir_all(&dir).is_ok() && {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).is_ok()
            };
            if made {
                // SAFETY: called before any device exists, on the thread resolving the device;
                // Mesa reads it when the instance is created, below.
                unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
            }
        });
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
