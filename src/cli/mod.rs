//! The command line: clap's structs and the seeds' aliases (`args`), what each subcommand
//! does (`run`), and which `train` flags the other training commands act on (`flags`).

pub mod args;
pub mod flags;
pub mod run;

pub use args::*;
