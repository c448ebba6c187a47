//! Errors are values: every failure a user can cause becomes one line that names the problem
//! and what to do about it. `main` prints it and exits non-zero; nothing user-supplied panics.

use std::fmt;
use std::path::Path;

#[derive(Debug)]
pub enum Error {
    /// Impossible or contradictory configuration (flags, config files, presets).
    Config(String),
    /// Missing, truncated or corrupt data files.
    Data(String),
    /// Reading or writing model weights or checkpoints.
    Checkpoint(String),
    /// Filesystem and network problems that are not the data's fault.
    Io(String),
    /// Training went wrong (NaN loss, diverged).
    Training(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(m) => write!(f, "config error: {m}"),
            Error::Data(m) => write!(f, "data error: {m}"),
            Error::Checkpoint(m) => write!(f, "checkpoint error: {m}"),
            Error::Io(m) => write!(f, "i/o error: {m}"),
            Error::Training(m) => write!(f, "training error: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// A data error about one file: `path: problem (fix)`.
    pub fn data(path: &Path, problem: impl fmt::Display, fix: impl fmt::Display) -> Self {
        Error::Data(format!("{}: {problem} ({fix})", path.display()))
    }

    /// An I/O error while touching `path`, with what was being done.
    pub fn io(path: &Path, doing: &str, err: std::io::Error) -> Self {
        Error::Io(format!("{doing} {}: {err}", path.display()))
    }
}

/// `s` with its control characters escaped (`\n`, `\u{1b}`): text taken from a file (a tensor
/// name, a pickled module name) can then be quoted in a message without breaking it over lines
/// or sending escape sequences to the terminal.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
