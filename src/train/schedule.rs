//! Per-step learning rate: linear warmup from `warmup_start_lr` to the peak, then cosine decay
//! to `min_lr` at the last step (seed 002's `WarmupCosineScheduler`, evaluated every step
//! instead of every epoch so that short runs get a smooth schedule).

#[derive(Clone, Debug, PartialEq)]
pub struct WarmupCosine {
    pub peak_lr: f64,
    pub warmup_start_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl WarmupCosine {
    pub fn new(
        peak_lr: f64,
        warmup_start_lr: f64,
        min_lr: f64,
        warmup_epochs: f64,
        epochs: usize,
        steps_per_epoch: usize,
    ) -> Self {
        let total_steps = (epochs * steps_per_epoch).max(1) as u64;
        let warmup_steps =
            ((warmup_epochs * steps_per_epoch as f64).round() as u64).min(total_steps);
        WarmupCosine {
            peak_lr,
            warmup_start_lr,
            min_lr,
            warmup_steps,
            total_steps,
        }
    }

    /// The learning rate for optimizer step `step` (0-based).
    /// The schedule `optim` asks for over `epochs` epochs of `steps_per_epoch` steps.
    pub fn of(optim: &crate::config::OptimConfig, epochs: usize, steps_per_epoch: usize) -> Self {
        WarmupCosine::new(
            optim.lr,
            optim.warmup_start_lr,
            optim.min_lr,
            optim.warmup_epochs,
            epochs,
            steps_per_epoch,
        )
    }

    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            let alpha = step as f64 / self.warmup_steps as f64;
            return self.warmup_start_lr + alpha * (self.peak_lr - self.warmup_start_lr);
        }
        let decay_steps = self.total_steps - self.warmup_steps;
        if decay_steps <= 1 {
            return self.peak_lr;
        }
        // The last step (total − 1) lands exactly on min_lr.
        let progress = ((step - self.warmup_steps) as f64 / (decay_steps - 1) as f64).min(1.0);
        self.min_lr
            + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_values_at_warmup_start_end_and_last_step() {
        // 10 epochs of 100 steps, 2 warmup epochs.
        let s = WarmupCosine::new(1e-3, 1e-6, 1e-5, 2.0, 10, 100);
        assert_eq!(s.warmup_steps, 200);
        assert_eq!(s.lr(0), 1e-6);
        assert!((s.lr(100) - (1e-6 + 0.5 * (1e-3 - 1e-6))).abs() < 1e-15);
        assert_eq!(s.lr(200), 1e-3); // warmup end = peak
        assert!((s.lr(999) - 1e-5).abs() < 1e-15); // last step = min
        // Half-way through the decay the cosine is at its mean.
        let mid = 200 + (799 / 2);
        let expect =
            1e-5 + 0.5 * (1e-3 - 1e-5) * (1.0 + (std::f64::consts::PI * (399.0 / 799.0)).cos());
        assert!((s.lr(mid) - expect).abs() < 1e-15);
        // Monotone decay after warmup.
        assert!((200..999).all(|t| s.lr(t + 1) <= s.lr(t)));
    }

    #[test]
    fn no_warmup_starts_at_peak() {
        let s = WarmupCosine::new(0.1, 0.0, 0.0, 0.0, 1, 10);
        assert_eq!(s.lr(0), 0.1);
        assert_eq!(s.lr(9), 0.0);
    }
}
