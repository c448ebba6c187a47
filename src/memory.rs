//! The size guard: work whose bytes certainly exceed what the machine has is refused with one
//! line before anything is allocated. Without it the allocator aborts the process ("memory
//! allocation of … failed", a backtrace, exit 134), sometimes after a run folder was written.
//!
//! Estimates are lower bounds (a model's weights alone, one saved activation per block, a
//! dataset's pixels), so a refusal is never wrong; work that passes may still run out of
//! memory later, as any program may.

use std::fmt::Display;

use crate::error::{Error, Result};

/// The bytes this process may use at most: RAM plus swap, or the cgroup's limit when that is
/// smaller (a container or a Slurm job). `None` where neither can be read (not Linux).
pub fn machine_bytes() -> Option<u128> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let field = |name: &str| -> Option<u128> {
        let line = meminfo.as_deref()?.lines().find(|l| l.starts_with(name))?;
        let kb: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    let total = field("MemTotal:").map(|ram| ram + field("SwapTotal:").unwrap_or(0));
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .find_map(|s| s.trim().parse::<u128>().ok());
    match (total, cgroup) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}

/// Refuses `what` when its `bytes` (a lower bound) exceed the machine's memory, naming both
/// and `fix`.
pub fn ensure_fits(what: impl Display, bytes: u128, fix: &str) -> Result<()> {
    match machine_bytes() {
        Some(have) if bytes > have => Err(Error::Config(format!(
            "{what} would need at least {}, and this machine has {}: {fix}",
            human(bytes),
            human(have)
        ))),
        _ => Ok(()),
    }
}

/// Bytes for people: "1.5 GiB".
pub fn human(bytes: u128) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The product of `dims` without overflow (sizes from files and flags can be anything).
pub fn product(dims: &[usize]) -> u128 {
    dims.iter().fold(1u128, |a, &d| a.saturating_mul(d as u128))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_reports_its_memory() {
        let have = machine_bytes().expect("Linux has /proc/meminfo");
        // Any machine that builds burn has more than 256 MiB and less than 1 EiB.
        assert!(have > 256 << 20 && have < 1 << 60, "{have}");
    }

    #[test]
    fn refuses_only_what_cannot_fit() {
        assert!(ensure_fits("a tiny thing", 1 << 20, "fix").is_ok());
        let e = ensure_fits(
            "a model of 1e15 weights",
            product(&[1 << 50, 4]),
            "use fewer",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("a model of 1e15 weights would need at least 4.0 PiB, and this machine has")
                && e.ends_with(": use fewer"),
            "{e}"
        );
        assert_eq!(product(&[usize::MAX, usize::MAX, usize::MAX]), u128::MAX);
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(12), "12 B");
    }
}
