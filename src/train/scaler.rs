//! Dynamic loss scaling for `--precision f16`, as PyTorch's `GradScaler`: the loss is
//! multiplied by `scale` before the backward pass so small gradients do not underflow f16;
//! a step whose gradients overflowed (inf/NaN) is skipped and the scale halved, and after
//! `growth_interval` good steps in a row the scale doubles. Its state is saved in checkpoints,
//! so a resumed run continues with the same scale.

use serde::{Deserialize, Serialize};

/// After this many skipped steps in a row the run stops: the loss itself is diverging, which
/// no scale can fix (from 65536, 40 halvings reach 6e-8).
pub const MAX_CONSECUTIVE_SKIPS: u64 = 40;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    /// Good steps since the scale last changed.
    pub good_steps: u64,
    /// Steps skipped over the whole run.
    pub skipped: u64,
    /// Steps skipped since the last good one.
    pub consecutive_skips: u64,
}

impl LossScaler {
    pub fn new(scale: f64) -> Self {
        LossScaler {
            scale,
            good_steps: 0,
            skipped: 0,
            consecutive_skips: 0,
        }
    }

    /// Record a step's outcome; `true` when its gradients may be applied.
    pub fn update(&mut self, grads_finite: bool, growth_interval: u64) -> bool {
        if grads_finite {
            self.consecutive_skips = 0;
            self.good_steps += 1;
            if self.good_steps >= growth_interval {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale *= 0.5;
            self.good_steps = 0;
            self.skipped += 1;
            self.consecutive_skips += 1;
        }
        grads_finite
    }

    /// Whether skipping has gone on so long that the run is diverging rather than overflowing.
    pub fn diverged(&self) -> bool {
        self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_halves_and_skips_growth_doubles_after_the_interval() {
        let mut s = LossScaler::new(1024.0);
        assert!(!s.update(false, 3));
        assert_eq!((s.scale, s.skipped, s.consecutive_skips), (512.0, 1, 1));
        assert!(s.update(true, 3));
        assert!(s.update(true, 3));
        assert_eq!(s.scale, 512.0);
        assert!(s.update(true, 3)); // third good step in a row: grow
        assert_eq!((s.scale, s.good_steps, s.consecutive_skips), (1024.0, 0, 0));
        // An overflow resets the run of good steps.
        s.update(true, 3);
        s.update(false, 3);
        s.update(true, 3);
        s.update(true, 3);
        assert_eq!((s.scale, s.good_steps, s.skipped), (512.0, 2, 2));
    }

    #[test]
    fn diverges_after_the_maximum_run_of_skips() {
        let mut s = LossScaler::new(65536.0);
        for _ in 0..MAX_CONSECUTIVE_SKIPS - 1 {
            s.update(false, 2000);
        }
        assert!(!s.diverged());
        s.update(false, 2000);
        assert!(s.diverged());
        s.update(true, 2000);
        assert!(!s.diverged());
    }
}
