//! The continual-learning metrics of the literature, from the accuracy matrix R:
//! `R[i][j]` = accuracy on task j's test split after training task i (fractions in [0, 1]).
//!
//! - average accuracy after task i: `A_i = mean_{j ≤ i} R[i][j]`; `avg_acc` is the last one
//!   (the mean of the final row once every task is trained);
//! - average forgetting (GEM, L2P, DualPrompt): `mean_{j < T} max_{j ≤ i < T} R[i][j] − R[T][j]`,
//!   over the rows in which task j had been trained (L2P's code only fills those);
//! - backward transfer (GEM's BWT): `mean_{j < T} R[T][j] − R[j][j]`. Avalanche's "experience
//!   forgetting" is accuracy right after training minus the latest, i.e. `−bwt`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContinualMetrics {
    /// NaN (`null` in JSON) until a task is done.
    #[serde(deserialize_with = "null_as_nan")]
    pub avg_acc: f64,
    /// `A_i` after each task trained so far.
    pub avg_acc_per_task: Vec<f64>,
    /// `None` before the second task (nothing could have been forgotten yet).
    pub avg_forgetting: Option<f64>,
    pub bwt: Option<f64>,
}

fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { f64::NAN } else { s / n as f64 }
}

/// Metrics of the rows trained so far (`r.len()` tasks done, each row over all T tasks).
pub fn metrics(r: &[Vec<f64>]) -> ContinualMetrics {
    let k = r.len();
    let avg_acc_per_task: Vec<f64> = (0..k).map(|i| mean(r[i][..=i].iter().copied())).collect();
    let (avg_forgetting, bwt) = if k >= 2 {
        let last = &r[k - 1];
        let forgetting = mean((0..k - 1).map(|j| {
            let best = (j..k - 1)
                .map(|i| r[i][j])
                .fold(f64::NEG_INFINITY, f64::max);
            best - last[j]
        }));
        let bwt = mean((0..k - 1).map(|j| last[j] - r[j][j]));
        (Some(forgetting), Some(bwt))
    } else {
        (None, None)
    };
    ContinualMetrics {
        avg_acc: avg_acc_per_task.last().copied().unwrap_or(f64::NAN),
        avg_acc_per_task,
        avg_forgetting,
        bwt,
    }
}

/// The `joint` upper bound: one row, every task trained at once.
pub fn joint_metrics(row: &[f64]) -> ContinualMetrics {
    let avg = mean(row.iter().copied());
    ContinualMetrics {
        avg_acc: avg,
        avg_acc_per_task: vec![avg],
        avg_forgetting: None,
        bwt: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// A hand-worked 3×3 matrix in which the max-based forgetting and −BWT differ (task 0
    /// got better after task 1), and in which task 1's accuracy *before* it was trained is
    /// higher than after (chance on an untrained task must not count as "forgotten").
    #[test]
    fn hand_worked_three_tasks() {
        let r = vec![
            vec![0.70, 0.85, 0.00],
            vec![0.90, 0.80, 0.20],
            vec![0.50, 0.70, 0.95],
        ];
        let m = metrics(&r);
        // A_1 = 0.70, A_2 = (0.90 + 0.80)/2, A_3 = (0.50 + 0.70 + 0.95)/3.
        assert!(close(m.avg_acc_per_task[0], 0.70));
        assert!(close(m.avg_acc_per_task[1], 0.85));
        assert!(close(m.avg_acc_per_task[2], 2.15 / 3.0));
        assert!(close(m.avg_acc, 2.15 / 3.0));
        // Forgetting: task 0 max(0.70, 0.90) − 0.50 = 0.40; task 1 max(0.80) − 0.70 = 0.10.
        assert!(close(m.avg_forgetting.unwrap(), 0.25), "{m:?}");
        // BWT: (0.50 − 0.70) + (0.70 − 0.80) over 2 = −0.15.
        assert!(close(m.bwt.unwrap(), -0.15), "{m:?}");
    }

    #[test]
    fn partial_and_single_rows() {
        let r = vec![vec![0.9, 0.0], vec![0.1, 0.95]];
        let one = metrics(&r[..1]);
        assert_eq!(one.avg_forgetting, None);
        assert!(close(one.avg_acc, 0.9));
        let two = metrics(&r);
        assert!(close(two.avg_forgetting.unwrap(), 0.8));
        assert!(close(two.bwt.unwrap(), -0.8));
        assert!(close(two.avg_acc, 0.525));
        let j = joint_metrics(&[0.8, 0.9, 1.0]);
        assert!(close(j.avg_acc, 0.9));
        assert_eq!(j.bwt, None);
    }
}
