//! Data parallelism across processes: the few collectives the trainer needs, behind [`Comm`].
//!
//! One process per device, launched by `mpirun -np N` or Slurm's `srun` (cargo feature `mpi`).
//! A plain launch is one process and [`Local`], whose collectives are identities, so the
//! single-process trainer runs exactly the code it always did.
//!
//! burn 0.22.1 offers no collective that works here (its DDP is CUDA/NCCL inside one
//! process; flex has none), so gradients go through host memory: flattened into one f32
//! buffer, summed by one MPI all-reduce per optimizer step.

#[cfg(feature = "mpi")]
mod mpi_comm;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::model::params::{map_params, named_params};

/// The collectives of a data-parallel job. Every rank must make the same calls in the same
/// order (they are matched by order, as in MPI). Errors in a collective are fatal to the
/// whole job (MPI's default), so none is returned.
pub trait Comm: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Index among the ranks on this machine (picks the GPU of `--device cuda:local`).
    fn local_rank(&self) -> usize;
    /// Ranks on this machine (they share its cores).
    fn local_size(&self) -> usize;
    /// Element-wise sum over all ranks, in place.
    fn all_reduce_sum(&self, buf: &mut [f32]);
    fn all_reduce_sum_f64(&self, buf: &mut [f64]);
    /// Rank 0's values to every rank, in place.
    fn broadcast(&self, buf: &mut [f32]);
    fn broadcast_f64(&self, buf: &mut [f64]);
    fn barrier(&self);
    /// End every rank of the job now (after an error on one of them).
    fn abort(&self, code: i32) -> !;

    /// Rank 0 writes checkpoints, metrics and reports.
    fn is_main(&self) -> bool {
        self.rank() == 0
    }
}

/// One process: every collective is the identity.
pub struct Local;

impl Comm for Local {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn local_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [f32]) {}
    fn all_reduce_sum_f64(&self, _: &mut [f64]) {}
    fn broadcast(&self, _: &mut [f32]) {}
    fn broadcast_f64(&self, _: &mut [f64]) {}
    fn barrier(&self) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

static WORLD: OnceLock<Box<dyn Comm>> = OnceLock::new();

/// Variables a launcher sets in each rank's environment: Open MPI's `mpirun`, MPICH's Hydra
/// (PMI), Slurm's `srun --mpi=pmix|pmi2`.
const LAUNCHER_VARS: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"];

/// Whether a launcher started this process, and the job size if it says so.
fn launched() -> Option<Option<usize>> {
    LAUNCHER_VARS
        .iter()
        .any(|v| std::env::var_os(v).is_some())
        .then(|| {
            ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"]
                .iter()
                .find_map(|v| std::env::var(v).ok()?.parse().ok())
        })
}

/// Whether this process is not one of several launched ones (no launcher, or a job of one).
pub fn launched_alone() -> bool {
    matches!(launched(), None | Some(Some(1)))
}

/// Refuse to run `command` as one of several launched processes: it is not data-parallel,
/// and the ranks would each run it alone and overwrite one another's outputs.
pub fn refuse_launched(command: &str) -> Result<()> {
    match launched() {
        Some(n) if n != Some(1) => Err(Error::Config(format!(
            "`vitrs {command}` runs in one process (it is not data-parallel): start it without mpirun/srun"
        ))),
        _ => Ok(()),
    }
}

/// Whether an environment variable belongs to an MPI launcher (removed from the environment
/// of child processes that must not join the job).
pub fn is_launcher_var(name: &str) -> bool {
    ["OMPI_", "PMI_", "PMIX_", "PRTE_", "HYDRA_"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Join the job this process was launched into (MPI under `mpirun`/`srun` with feature
/// `mpi`, else a single process). Call once, from the main thread, before [`world`].
pub fn init() -> Result<&'static dyn Comm> {
    if let Some(w) = WORLD.get() {
        return Ok(w.as_ref());
    }
    let comm: Box<dyn Comm> = match launched() {
        #[cfg(feature = "mpi")]
        Some(_) => Box::new(mpi_comm::Mpi::init()?),
        // A lone process under a launcher is harmless; several would each train alone and
        // overwrite one another's run directory.
        #[cfg(not(feature = "mpi"))]
        Some(n) if n != Some(1) => {
            return Err(Error::Config(format!(
                "launched as one of {} processes, but this vitrs was built without MPI: rebuild with `cargo build --release --features mpi` (or run one process)",
                n.map_or("several".to_string(), |n| n.to_string())
            )));
        }
        _ => Box::new(Local),
    };
    let _ = WORLD.set(comm);
    Ok(world())
}

/// The job this process belongs to ([`Local`] until [`init`] joined another).
pub fn world() -> &'static dyn Comm {
    WORLD.get_or_init(|| Box::new(Local)).as_ref()
}

/// Leave the job cleanly (MPI_Finalize); call once at the end of `main`.
pub fn finalize() {
    #[cfg(feature = "mpi")]
    mpi_comm::finalize();
}

/// `--threads 0`: this machine's cores divided among the ranks running on it.
pub fn default_threads(comm: &dyn Comm) -> usize {
    if comm.local_size() <= 1 {
        return 0; // rayon's default: every core
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / comm.local_size()).max(1)
}

/// `--device cuda:local` / `vulkan:local`: the device whose index is this rank's local index.
pub fn device_spec(spec: Option<&str>, comm: &dyn Comm) -> Option<String> {
    let spec = spec?;
    Some(match spec.strip_suffix(":local") {
        Some(name) => format!("{name}:{}", comm.local_rank()),
        None => spec.to_string(),
    })
}

/// Make every rank's parameters equal to rank 0's (one broadcast of all of them).
pub fn broadcast_params<M: Module>(comm: &dyn Comm, model: M) -> M {
    if comm.size() == 1 {
        return model;
    }
    let params = named_params(&model);
    let mut buf = Vec::with_capacity(params.iter().map(|p| p.value.dims()[0]).sum());
    for p in params {
        buf.extend(to_vec(p.value));
    }
    comm.broadcast(&mut buf);
    let mut offset = 0;
    map_params(model, |_, t| {
        let n = t.dims()[0];
        let v = buf[offset..offset + n].to_vec();
        offset += n;
        Some(Tensor::from_data(TensorData::new(v, [n]), &t.device()))
    })
}

pub fn to_vec(t: Tensor<1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

/// Sum `grads` (by path, laid out as `layout`: (path, elements); a path missing on this rank,
/// e.g. one whose shard ran out, counts as zeros) and `scalars` (counts, loss sums) over all
/// ranks, in place: one all-reduce of one flat f32 buffer, whatever the number of tensors.
pub fn all_reduce_grads(
    comm: &dyn Comm,
    layout: &[(String, usize)],
    grads: &mut BTreeMap<String, Tensor<1>>,
    scalars: &mut [f64],
    device: &Device,
) {
    let total: usize = layout.iter().map(|(_, n)| n).sum();
    let mut buf = Vec::with_capacity(total + scalars.len());
    for (path, n) in layout {
        match grads.remove(path) {
            Some(g) => buf.extend(to_vec(g)),
            None => buf.extend(std::iter::repeat_n(0.0, *n)),
        }
    }
    // Counts up to 2^24 are exact in f32; sums of losses need no more than f32's precision.
    buf.extend(scalars.iter().map(|&v| v as f32));
    comm.all_reduce_sum(&mut buf);
    let mut offset = 0;
    for (path, n) in layout {
        let g = TensorData::new(buf[offset..offset + n].to_vec(), [*n]);
        grads.insert(path.clone(), Tensor::from_data(g, device));
        offset += n;
    }
    for (s, v) in scalars.iter_mut().zip(&buf[total..]) {
        *s = *v as f64;
    }
}

/// (path, elements) of every trainable parameter of `model`: the layout of a gradient
/// all-reduce.
pub fn grad_layout<M: Module>(model: &M) -> Vec<(String, usize)> {
    named_params(model)
        .into_iter()
        .filter(|p| p.trainable)
        .map(|p| (p.path, p.shape.iter().product()))
        .collect()
}

/// (path, elements) of every BatchNorm running statistic of `model` (empty for a ViT): the
/// layout of the statistics' all-reduce.
pub fn buffer_layout<M: Module>(model: &M) -> Vec<(String, usize)> {
    named_params(model)
        .into_iter()
        .filter(|p| p.path.ends_with(".running_mean") || p.path.ends_with(".running_var"))
        .map(|p| (p.path, p.shape.iter().product()))
        .collect()
}

/// One broadcast decision from rank 0 (stop, keep going, ...), as a small integer.
pub fn decide(comm: &dyn Comm, mine: u32) -> u32 {
    let mut v = [mine as f64];
    comm.broadcast_f64(&mut v);
    v[0] as u32
}

/// An error that reached `main` on one rank of a multi-process job: print it naming the
/// rank, then end every rank (the others may be waiting in a collective).
pub fn fail(e: &Error) -> ! {
    let w = world();
    if w.size() > 1 {
        crate::log_line!("error on rank {} of {}: {e}", w.rank(), w.size());
        w.abort(1)
    }
    crate::log_line!("error: {e}");
    std::process::exit(1)
}

/// Seconds a ring all-reduce of `bytes` takes over `ranks` ranks on links of `gbit_per_s`:
/// each rank sends (and receives) 2(N−1)/N of the buffer (reduce-scatter, then all-gather).
/// Latency terms are left out: for gradients of millions of parameters bandwidth dominates.
pub fn ring_all_reduce_secs(bytes: f64, ranks: usize, gbit_per_s: f64) -> f64 {
    if ranks <= 1 {
        return 0.0;
    }
    let n = ranks as f64;
    2.0 * (n - 1.0) / n * bytes / (gbit_per_s * 1e9 / 8.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ring_all_reduce_cost_by_hand() {
        // ViT-B/16's 86.6 M f32 gradients over 8 ranks at 100 Gb/s (12.5 GB/s):
        // 2·7/8 · 346.4 MB / 12.5 GB/s = 48.5 ms.
        let t = super::ring_all_reduce_secs(86.6e6 * 4.0, 8, 100.0);
        assert!((t - 0.048_496).abs() < 1e-5, "{t}");
        assert_eq!(super::ring_all_reduce_secs(1e9, 1, 100.0), 0.0);
        // Towards 2 · bytes / bandwidth for many ranks.
        let t = super::ring_all_reduce_secs(1.25e9, 1_000_000, 100.0);
        assert!((t - 0.2).abs() < 1e-6, "{t}");
    }

    use super::*;

    #[test]
    fn local_collectives_are_identities_and_specs_resolve() {
        let l = Local;
        let mut v = [1.5f32, -2.0];
        l.all_reduce_sum(&mut v);
        l.broadcast(&mut v);
        assert_eq!(v, [1.5, -2.0]);
        assert_eq!(decide(&l, 3), 3);
        assert!(l.is_main());
        assert_eq!(default_threads(&l), 0);
        assert_eq!(
            device_spec(Some("cuda:local"), &l).as_deref(),
            Some("cuda:0")
        );
        assert_eq!(device_spec(Some("cuda:1"), &l).as_deref(), Some("cuda:1"));
        assert_eq!(device_spec(None, &l), None);
    }
}
