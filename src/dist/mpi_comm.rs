//! [`Comm`] over MPI (Open MPI or MPICH, through the `mpi` crate). Errors in MPI calls are
//! fatal to the whole job (MPI_ERRORS_ARE_FATAL): a rank that dies makes the launcher end
//! the others, which is what turns a dead rank into a quick error instead of a hang.

use std::cell::RefCell;

use mpi::Threading;
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};

use super::Comm;
use crate::error::{Error, Result};

thread_local! {
    // Dropping the universe calls MPI_Finalize; it lives on the thread that initialised MPI
    // (the main thread, which makes every MPI call: `Threading::Funneled`).
    static UNIVERSE: RefCell<Option<Universe>> = const { RefCell::new(None) };
}

/// MPI counts are C ints: larger buffers go in pieces.
const CHUNK: usize = 1 << 28;

pub struct Mpi {
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
}

impl Mpi {
    pub fn init() -> Result<Mpi> {
        let (universe, _) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| Error::Config("MPI was initialised twice".into()))?;
        let world = universe.world();
        // The ranks that share this machine's memory, numbered in world-rank order.
        let local = world.split_shared(world.rank());
        let me = Mpi {
            rank: world.rank() as usize,
            size: world.size() as usize,
            local_rank: local.rank() as usize,
            local_size: local.size() as usize,
        };
        UNIVERSE.with(|u| *u.borrow_mut() = Some(universe));
        Ok(me)
    }
}

fn world() -> SimpleCommunicator {
    SimpleCommunicator::world()
}

pub fn finalize() {
    UNIVERSE.with(|u| drop(u.borrow_mut().take()));
}

impl Comm for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn local_size(&self) -> usize {
        self.local_size
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) {
        let w = world();
        for chunk in buf.chunks_mut(CHUNK) {
            let send = chunk.to_vec();
            w.all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
        let w = world();
        for chunk in buf.chunks_mut(CHUNK) {
            let send = chunk.to_vec();
            w.all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
    }
    fn broadcast(&self, buf: &mut [f32]) {
        let w = world();
        for chunk in buf.chunks_mut(CHUNK) {
            w.process_at_rank(0).broadcast_into(chunk);
        }
    }
    fn broadcast_f64(&self, buf: &mut [f64]) {
        let w = world();
        for chunk in buf.chunks_mut(CHUNK) {
            w.process_at_rank(0).broadcast_into(chunk);
        }
    }
    fn barrier(&self) {
        world().barrier();
    }
    fn abort(&self, code: i32) -> ! {
        world().abort(code)
    }
}
