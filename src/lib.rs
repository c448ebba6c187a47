//! vitrs: train Vision Transformers on CIFAR-10/100 (and Fashion-MNIST, MNIST, image folders)
//! in Rust, on burn.
//!
//! The data path is one-way: CLI → [`config::Config`] → data + model → [`train::step`] →
//! [`train::trainer`] → sinks ([`report`]).
//!
//! Modules depend one way, each only on those before it: the foundation ([`error`], [`rng`],
//! [`util`], [`memory`], [`device`], `simd`; and [`report`], which needs nothing more) ← [`model`] ←
//! [`config`] ← [`data`] ← [`weights`] ← [`train`] ← [`continual`] and the [`tools`] (`bench`,
//! `compare-finetune`) ← [`cli`] (clap's structs, what each subcommand does); [`dist`]
//! (parameters over MPI) sits between [`model`] and [`train`].

/// `crate::log_line!` as one `write`: stderr is unbuffered, so `crate::log_line!` writes each formatted piece
/// on its own, and the lines of MPI ranks sharing one stderr pipe interleave mid-line.
#[macro_export]
macro_rules! log_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut line = format!($($arg)*);
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }};
}

pub mod cli;
pub mod config;
pub mod continual;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod memory;
pub mod model;
pub mod report;
pub mod rng;
pub mod signals;
mod simd;
#[cfg(test)]
mod testing;
pub mod tools;
pub mod train;
pub mod util;
pub mod weights;
