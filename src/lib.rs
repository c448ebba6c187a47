//! vitrs: train Vision Transformers on CIFAR-10/100 (and Fashion-MNIST, MNIST, image folders)
//! in Rust, on burn.
//!
//! The data path is one-way: CLI → [`config::Config`] → data + model → [`train::step`] →
//! [`train::trainer`] → sinks ([`report`]).

pub mod bench;
pub mod cli;
pub mod commands;
pub mod compare_finetune;
pub mod config;
pub mod continual;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod model;
pub mod report;
pub mod rng;
pub mod train;
pub mod util;
