//! Where the loop's events go: metrics.jsonl and TensorBoard (rank 0 only), and the
//! progress bar on a terminal.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::checkpoint::TrainingState;
use crate::error::Result;
use crate::report::metrics::{MetricRecord, MetricsWriter};
use crate::report::tensorboard::{EventWriter, log_record};

/// The sinks every event goes to (rank 0's only: the other ranks write nothing).
pub struct Sinks {
    pub metrics: Option<MetricsWriter>,
    pub tensorboard: Option<EventWriter>,
    start: Instant,
    time_offset: f64,
}

impl Sinks {
    /// A fresh run (step 0) starts metrics.jsonl over; a resumed one drops what it will redo.
    pub fn open(run_dir: &Path, state: &TrainingState, is_main: bool) -> Result<Self> {
        Ok(Sinks {
            metrics: match is_main {
                true => Some(MetricsWriter::resume(
                    &run_dir.join("metrics.jsonl"),
                    state.global_step,
                )?),
                false => None,
            },
            tensorboard: match is_main {
                true => Some(EventWriter::create(run_dir)?),
                false => None,
            },
            start: Instant::now(),
            time_offset: state.elapsed_secs,
        })
    }

    /// Sinks that write nothing (`vitrs bench`).
    pub fn none() -> Self {
        Sinks {
            metrics: None,
            tensorboard: None,
            start: Instant::now(),
            time_offset: 0.0,
        }
    }

    pub fn emit(&mut self, mut r: MetricRecord) -> Result<()> {
        r.time = self.time_offset + self.start.elapsed().as_secs_f64();
        if let Some(m) = &mut self.metrics {
            m.write(&r)?;
        }
        if let Some(tb) = &mut self.tensorboard {
            log_record(tb, &r)?;
        }
        Ok(())
    }
}

pub(super) fn progress_bar(quiet: bool, len: usize, prefix: String) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix);
    pb
}
