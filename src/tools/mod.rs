//! Subcommands that drive the engine for a measurement rather than a model: `vitrs bench`
//! and `vitrs compare-finetune`.

pub mod bench;
pub mod compare_finetune;
