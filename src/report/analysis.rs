//! Convergence analysis: turns a run's `metrics.jsonl` records into verdicts with the numbers
//! behind them and the troubleshooting advice from the project's training guides.
//!
//! The guides' convergence indicators are:
//! - *Good convergence*: validation loss steadily decreasing, train-val gap < 10%
//! - *Need more epochs*: both losses still decreasing
//! - *Overfitting*: training accuracy >> validation accuracy
//! - *Need LR adjustment*: loss plateaus early or oscillates
//!
//! Each is made precise below (see [`Verdict`] and the constants). Definitions shared by all
//! rules:
//! - **evals** are the `val` records in file order; at least [`MIN_EVALS`] are needed for any
//!   trend verdict.
//! - **train accuracy of an epoch** is the mean `acc` of that epoch's train records (each is
//!   itself an average since the previous log), see [`epoch_accuracies`].
//! - **gap** is train accuracy minus validation accuracy, in percentage points, at the last
//!   epoch that has both.
//! - **fall** of a series over a window is the least-squares line's drop across the window,
//!   as a fraction of the window's mean (positive = decreasing).

use std::fmt::Write as _;

use crate::report::metrics::MetricRecord;

/// Fewer evaluations than this give no trend verdicts, only [`Verdict::InsufficientData`].
pub const MIN_EVALS: usize = 3;
/// "Recent" means the last this many evaluations.
pub const TREND_WINDOW: usize = 5;
/// A fitted fall of at least this fraction over the recent window counts as "still decreasing".
pub const STILL_DECREASING: f64 = 0.02;
/// The guides' train–val gap limit for good convergence, in percentage points.
pub const GAP_LIMIT: f64 = 10.0;
/// A gap this large is overfitting even while validation loss holds (training accuracy >>
/// validation accuracy), in percentage points.
pub const STRONG_GAP: f64 = 20.0;
/// Validation loss this far (fraction) above its minimum counts as rising.
pub const RISE_FROM_MIN: f64 = 0.05;
/// A plateau improves validation loss by less than this fraction over the last half of evals.
pub const PLATEAU_IMPROVEMENT: f64 = 0.01;
/// A plateau is "early" while the learning rate is still above this fraction of its peak.
pub const PLATEAU_LR_FRACTION: f64 = 0.10;
/// Oscillation: at least this fraction of successive val-loss differences change sign...
pub const OSC_SIGN_CHANGES: f64 = 0.5;
/// ...and the median absolute difference exceeds this fraction of the mean loss (above noise).
/// The median, not the mean, so that a few large early drops do not make plateau noise count.
pub const OSC_AMPLITUDE: f64 = 0.02;
/// Oscillation is judged over the last this many evals, and needs at least [`OSC_MIN_EVALS`].
pub const OSC_WINDOW: usize = 10;
pub const OSC_MIN_EVALS: usize = 5;
/// A train loss above this multiple of the first logged train loss has exploded: an untrained
/// classifier starts near chance-level loss, so being far worse than that is divergence.
pub const EXPLODE_FACTOR: f64 = 2.0;
/// Good convergence needs validation loss to have fallen at least this fraction overall.
pub const GOOD_MIN_FALL: f64 = 0.05;

/// What the analysis concluded. Several can hold at once (e.g. good convergence that would
/// still profit from more epochs); contradictory ones are excluded by their rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Validation loss fell at least [`GOOD_MIN_FALL`] overall, ends within [`RISE_FROM_MIN`]
    /// of its minimum, the gap is below [`GAP_LIMIT`], and no divergence, oscillation, plateau
    /// or overfitting was found.
    GoodConvergence,
    /// Both validation and train loss fell at least [`STILL_DECREASING`] (fitted) over the last
    /// [`TREND_WINDOW`] evals, without oscillation or plateau.
    NeedsMoreEpochs,
    /// Gap above [`GAP_LIMIT`] with validation loss more than [`RISE_FROM_MIN`] above its
    /// minimum, or gap above [`STRONG_GAP`] regardless of loss.
    Overfitting,
    /// The learning rate is too high: a NaN/Inf loss anywhere, or a train loss above
    /// [`EXPLODE_FACTOR`] × the first logged train loss.
    Divergence,
    /// Over the last half of evals (at least 2) validation loss improved by less than
    /// [`PLATEAU_IMPROVEMENT`] without rising more than [`RISE_FROM_MIN`], while the last
    /// learning rate is still above [`PLATEAU_LR_FRACTION`] of its peak (or was not logged).
    EarlyPlateau,
    /// Over the last [`OSC_WINDOW`] evals (at least [`OSC_MIN_EVALS`]) at least
    /// [`OSC_SIGN_CHANGES`] of successive val-loss differences change sign, with median absolute
    /// difference above [`OSC_AMPLITUDE`] of the mean loss.
    Oscillation,
    /// Fewer than [`MIN_EVALS`] evaluations: too early to judge trends.
    InsufficientData,
}

impl Verdict {
    pub fn title(self) -> &'static str {
        match self {
            Verdict::GoodConvergence => "Good convergence",
            Verdict::NeedsMoreEpochs => "Needs more epochs",
            Verdict::Overfitting => "Overfitting",
            Verdict::Divergence => "Divergence (learning rate too high)",
            Verdict::EarlyPlateau => "Early plateau (needs LR adjustment)",
            Verdict::Oscillation => "Oscillation (needs LR adjustment)",
            Verdict::InsufficientData => "Too early to judge",
        }
    }

    /// The guides' description of the indicator this verdict makes precise.
    pub fn indicator(self) -> &'static str {
        match self {
            Verdict::GoodConvergence => {
                "Good convergence: Validation loss steadily decreasing, train-val gap < 10%"
            }
            Verdict::NeedsMoreEpochs => "Need more epochs: Both losses still decreasing",
            Verdict::Overfitting => "Overfitting: Training accuracy >> validation accuracy",
            Verdict::Divergence => "Loss explodes/NaN",
            Verdict::EarlyPlateau | Verdict::Oscillation => {
                "Need LR adjustment: Loss plateaus early or oscillates"
            }
            Verdict::InsufficientData => "",
        }
    }

    /// The troubleshooting list the guides give for this situation, quoted.
    pub fn advice(self) -> &'static [&'static str] {
        match self {
            // "Loss explodes/NaN", plus "Check data normalization" from "NaN Loss".
            Verdict::Divergence => &[
                "Reduce learning rate by 2-5x",
                "Increase gradient clipping (try 0.5)",
                "Check for bad data samples",
                "Check data normalization",
            ],
            // "Underfitting".
            Verdict::NeedsMoreEpochs => &[
                "Train for more epochs",
                "Increase model capacity",
                "Reduce regularization",
                "Increase learning rate",
            ],
            // "Overfitting".
            Verdict::Overfitting => &[
                "Increase weight decay",
                "Add more dropout",
                "Use more data augmentation",
                "Reduce model size",
            ],
            // "Slow convergence".
            Verdict::EarlyPlateau => &[
                "Increase learning rate",
                "Reduce weight decay",
                "Increase warmup epochs",
                "Check data augmentation isn't too aggressive",
            ],
            // "Stability: If training unstable".
            Verdict::Oscillation => &[
                "Reduce learning rate",
                "Increase warmup_epochs",
                "Reduce gradient_clip threshold",
                "Check for NaN losses",
            ],
            Verdict::GoodConvergence | Verdict::InsufficientData => &[],
        }
    }
}

/// One verdict and the numbers that triggered it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub verdict: Verdict,
    pub detail: String,
}

/// Headline numbers of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Best validation accuracy (fraction) with its epoch and step.
    pub best_val_acc: Option<(f64, usize, u64)>,
    /// Last validation record: (loss, acc, epoch).
    pub final_val: Option<(f64, f64, usize)>,
    /// Mean train (loss, acc) of the last epoch with train records, and that epoch.
    pub final_train: Option<(f64, f64, usize)>,
    /// Train − val accuracy at the last epoch having both, in percentage points.
    pub gap_points: Option<f64>,
    pub epochs: usize,
    /// Mean training throughput over train records.
    pub img_s: Option<f64>,
    /// Largest `time` seen, seconds.
    pub wall_time: Option<f64>,
    pub train_records: usize,
    pub val_records: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub summary: Summary,
    pub findings: Vec<Finding>,
}

/// Train and validation accuracy (fractions) of one epoch, for the gap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochAcc {
    pub epoch: usize,
    /// Mean of the epoch's train records' `acc`.
    pub train_acc: f64,
    /// The epoch's last validation `acc`.
    pub val_acc: f64,
}

impl EpochAcc {
    pub fn gap_points(&self) -> f64 {
        (self.train_acc - self.val_acc) * 100.0
    }
}

/// Per epoch that has both train records and an evaluation, in epoch order.
pub fn epoch_accuracies(records: &[MetricRecord]) -> Vec<EpochAcc> {
    let mut epochs: Vec<usize> = records
        .iter()
        .filter(|r| r.is_val())
        .map(|r| r.epoch)
        .collect();
    epochs.sort_unstable();
    epochs.dedup();
    epochs
        .into_iter()
        .filter_map(|epoch| {
            let train = mean(
                records
                    .iter()
                    .filter(|r| r.is_train() && r.epoch == epoch)
                    .map(|r| r.acc),
            )?;
            let val = records
                .iter()
                .rev()
                .find(|r| r.is_val() && r.epoch == epoch && r.acc.is_finite())?;
            Some(EpochAcc {
                epoch,
                train_acc: train,
                val_acc: val.acc,
            })
        })
        .collect()
}

/// Mean of the finite values, `None` if there are none.
fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values
        .filter(|v| v.is_finite())
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Least-squares slope of `ys` against `xs`.
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let cov: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}

/// The fitted drop across `ys` (against `xs`) as a fraction of their mean; positive = falling.
fn fitted_fall(xs: &[f64], ys: &[f64]) -> f64 {
    let span = xs.last().unwrap_or(&0.0) - xs.first().unwrap_or(&0.0);
    let m = ys.iter().sum::<f64>() / ys.len() as f64;
    if m == 0.0 {
        0.0
    } else {
        -slope(xs, ys) * span / m
    }
}

pub fn analyze(records: &[MetricRecord]) -> Analysis {
    let summary = summarize(records);
    let findings = judge(records, &summary);
    Analysis { summary, findings }
}

fn summarize(records: &[MetricRecord]) -> Summary {
    let train: Vec<&MetricRecord> = records.iter().filter(|r| r.is_train()).collect();
    let val: Vec<&MetricRecord> = records.iter().filter(|r| r.is_val()).collect();
    let best_val_acc = val
        .iter()
        .filter(|r| r.acc.is_finite())
        .max_by(|a, b| a.acc.total_cmp(&b.acc))
        .map(|r| (r.acc, r.epoch, r.step));
    let final_train = train.last().and_then(|last| {
        let epoch = train.iter().filter(|r| r.epoch == last.epoch);
        let loss = mean(epoch.clone().map(|r| r.loss))?;
        let acc = mean(epoch.map(|r| r.acc))?;
        Some((loss, acc, last.epoch))
    });
    Summary {
        best_val_acc,
        final_val: val.last().map(|r| (r.loss, r.acc, r.epoch)),
        final_train,
        gap_points: epoch_accuracies(records).last().map(EpochAcc::gap_points),
        epochs: records.iter().map(|r| r.epoch).max().unwrap_or(0),
        img_s: mean(train.iter().filter_map(|r| r.img_s)),
        wall_time: records
            .iter()
            .map(|r| r.time)
            .filter(|t| t.is_finite())
            .reduce(f64::max),
        train_records: train.len(),
        val_records: val.len(),
    }
}

fn judge(records: &[MetricRecord], summary: &Summary) -> Vec<Finding> {
    let mut findings = Vec::new();
    let finding = |verdict, detail: String| Finding { verdict, detail };

    // A non-finite loss makes every trend meaningless: report only that.
    if let Some(detail) = non_finite_loss(records) {
        return vec![finding(Verdict::Divergence, detail)];
    }
    let exploded = exploding_loss(records);
    let diverged = exploded.is_some();
    if let Some(detail) = exploded {
        findings.push(finding(Verdict::Divergence, detail));
    }

    let val: Vec<&MetricRecord> = records.iter().filter(|r| r.is_val()).collect();
    if val.len() < MIN_EVALS {
        let detail = format!(
            "only {} evaluation(s) so far; the trend rules need at least {MIN_EVALS}",
            val.len()
        );
        findings.push(finding(Verdict::InsufficientData, detail));
        return findings;
    }

    let losses: Vec<f64> = val.iter().map(|r| r.loss).collect();
    let trends = Trends::of(records, &val, &losses);

    let oscillation = oscillation(&losses);
    if let Some(detail) = &oscillation {
        findings.push(finding(Verdict::Oscillation, detail.clone()));
    }
    let overfit = overfitting(summary.gap_points, &trends, &val);
    if let Some(detail) = &overfit {
        findings.push(finding(Verdict::Overfitting, detail.clone()));
    }
    let plateau = if oscillation.is_none() {
        early_plateau(records, &val)
    } else {
        None
    };
    if let Some(detail) = &plateau {
        findings.push(finding(Verdict::EarlyPlateau, detail.clone()));
    }
    if oscillation.is_none()
        && plateau.is_none()
        && let Some(detail) = needs_more_epochs(&trends)
    {
        findings.push(finding(Verdict::NeedsMoreEpochs, detail));
    }
    let clean = !diverged && oscillation.is_none() && overfit.is_none() && plateau.is_none();
    if clean && let Some(detail) = good_convergence(summary.gap_points, &trends, &val) {
        findings.insert(0, finding(Verdict::GoodConvergence, detail));
    }
    findings
}

/// The first NaN/Inf loss, in file order.
fn non_finite_loss(records: &[MetricRecord]) -> Option<String> {
    let r = records.iter().find(|r| !r.loss.is_finite())?;
    Some(format!(
        "{} loss became {} at step {} (epoch {})",
        r.split, r.loss, r.step, r.epoch
    ))
}

/// The first train loss above [`EXPLODE_FACTOR`] × the first logged train loss.
fn exploding_loss(records: &[MetricRecord]) -> Option<String> {
    let mut train = records.iter().filter(|r| r.is_train());
    let first = train.next()?.loss;
    let r = train.find(|r| r.loss > EXPLODE_FACTOR * first)?;
    Some(format!(
        "train loss reached {:.3} at step {} (epoch {}), {:.1}× the first logged loss {:.3}",
        r.loss,
        r.step,
        r.epoch,
        r.loss / first,
        first
    ))
}

/// Validation-loss facts shared by several rules.
struct Trends {
    first: f64,
    last: f64,
    min: f64,
    min_epoch: usize,
    /// `last / min − 1`.
    rise: f64,
    /// Recent window: (first, last) val loss and the fitted fall.
    window: usize,
    val_window: (f64, f64),
    val_fall: f64,
    /// Train loss over the same steps: (first, last) and fitted fall, if ≥ 2 records.
    train: Option<((f64, f64), f64)>,
}

impl Trends {
    fn of(records: &[MetricRecord], val: &[&MetricRecord], losses: &[f64]) -> Trends {
        let (min_i, &min) = losses
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .expect("at least MIN_EVALS evals");
        let last = *losses.last().expect("at least MIN_EVALS evals");
        let window = TREND_WINDOW.min(losses.len());
        let recent = &losses[losses.len() - window..];
        let xs: Vec<f64> = (0..window).map(|i| i as f64).collect();
        let from_step = val[val.len() - window].step;
        let train: Vec<&MetricRecord> = records
            .iter()
            .filter(|r| r.is_train() && r.step >= from_step)
            .collect();
        let train = (train.len() >= 2).then(|| {
            let steps: Vec<f64> = train.iter().map(|r| r.step as f64).collect();
            let ys: Vec<f64> = train.iter().map(|r| r.loss).collect();
            ((ys[0], ys[ys.len() - 1]), fitted_fall(&steps, &ys))
        });
        Trends {
            first: losses[0],
            last,
            min,
            min_epoch: val[min_i].epoch,
            rise: if min > 0.0 { last / min - 1.0 } else { 0.0 },
            window,
            val_window: (recent[0], last),
            val_fall: fitted_fall(&xs, recent),
            train,
        }
    }
}

fn oscillation(losses: &[f64]) -> Option<String> {
    if losses.len() < OSC_MIN_EVALS {
        return None;
    }
    let recent = &losses[losses.len().saturating_sub(OSC_WINDOW)..];
    let diffs: Vec<f64> = recent.windows(2).map(|w| w[1] - w[0]).collect();
    let changes = diffs.windows(2).filter(|d| d[0] * d[1] < 0.0).count();
    let pairs = diffs.len() - 1;
    let frac = changes as f64 / pairs as f64;
    let m = recent.iter().sum::<f64>() / recent.len() as f64;
    let mut abs: Vec<f64> = diffs.iter().map(|d| d.abs()).collect();
    abs.sort_by(f64::total_cmp);
    let amplitude = abs[abs.len() / 2] / m;
    (frac >= OSC_SIGN_CHANGES && amplitude > OSC_AMPLITUDE).then(|| {
        format!(
            "over the last {} evals val loss changed direction {changes} times in {pairs} \
             (threshold {:.0}%), moving a median {:.1}% of its mean per eval (noise threshold {:.0}%)",
            recent.len(),
            OSC_SIGN_CHANGES * 100.0,
            amplitude * 100.0,
            OSC_AMPLITUDE * 100.0
        )
    })
}

fn overfitting(gap: Option<f64>, t: &Trends, val: &[&MetricRecord]) -> Option<String> {
    let gap = gap?;
    let rising = t.rise > RISE_FROM_MIN;
    if !((gap > GAP_LIMIT && rising) || gap > STRONG_GAP) {
        return None;
    }
    let last_epoch = val.last().map_or(0, |r| r.epoch);
    let mut detail = format!("final train–val accuracy gap {gap:.1} points (limit {GAP_LIMIT:.0})");
    if rising {
        let _ = write!(
            detail,
            "; val loss rose {:.0}% from its minimum {:.3} (epoch {}) to {:.3} (epoch {last_epoch})",
            t.rise * 100.0,
            t.min,
            t.min_epoch,
            t.last
        );
    } else {
        let _ = write!(detail, " (over {STRONG_GAP:.0} counts by itself)");
    }
    Some(detail)
}

fn early_plateau(records: &[MetricRecord], val: &[&MetricRecord]) -> Option<String> {
    let half = (val.len() / 2).max(2);
    let h: Vec<f64> = val[val.len() - half..].iter().map(|r| r.loss).collect();
    let start = h[0];
    if start <= 0.0 {
        return None; // a zero loss has nowhere left to improve: not a plateau to fix
    }
    let best = h.iter().copied().fold(f64::INFINITY, f64::min);
    let worst = h.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let improvement = (start - best) / start;
    if improvement >= PLATEAU_IMPROVEMENT || worst > start * (1.0 + RISE_FROM_MIN) {
        return None;
    }
    let lrs: Vec<f64> = records
        .iter()
        .filter(|r| r.is_train())
        .filter_map(|r| r.lr)
        .collect();
    let lr_note = match (lrs.iter().copied().reduce(f64::max), lrs.last()) {
        (Some(peak), Some(&last)) if peak > 0.0 => {
            if last <= PLATEAU_LR_FRACTION * peak {
                return None; // the schedule has annealed: flattening is expected, not early
            }
            format!(
                "while the learning rate is still {:.0}% of its peak ({last:.2e} of {peak:.2e})",
                last / peak * 100.0
            )
        }
        _ => "(learning rate not logged)".to_string(),
    };
    Some(format!(
        "val loss improved only {:.2}% over the last {half} evals ({start:.3} → best {best:.3}) {lr_note}",
        improvement * 100.0
    ))
}

fn needs_more_epochs(t: &Trends) -> Option<String> {
    if t.val_fall < STILL_DECREASING {
        return None;
    }
    let mut detail = format!(
        "over the last {} evals val loss fell {:.3} → {:.3} (fitted fall {:.1}%)",
        t.window,
        t.val_window.0,
        t.val_window.1,
        t.val_fall * 100.0
    );
    if let Some(((a, b), fall)) = t.train {
        if fall < STILL_DECREASING {
            return None;
        }
        let _ = write!(
            detail,
            " and train loss fell {a:.3} → {b:.3} (fitted fall {:.1}%)",
            fall * 100.0
        );
    }
    Some(detail)
}

fn good_convergence(gap: Option<f64>, t: &Trends, val: &[&MetricRecord]) -> Option<String> {
    let gap = gap?;
    let fell = t.first > 0.0 && (t.first - t.last) / t.first >= GOOD_MIN_FALL;
    if !(fell && t.rise <= RISE_FROM_MIN && gap < GAP_LIMIT) {
        return None;
    }
    Some(format!(
        "val loss fell {:.3} → {:.3} over {} evals (best {:.3} at epoch {}); final train–val gap {gap:.1} points",
        t.first,
        t.last,
        val.len(),
        t.min,
        t.min_epoch
    ))
}

impl Analysis {
    pub fn has(&self, verdict: Verdict) -> bool {
        self.findings.iter().any(|f| f.verdict == verdict)
    }

    /// The summary table and the verdicts with their numbers and advice, as markdown.
    pub fn to_markdown(&self) -> String {
        let mut md = String::from("## Summary\n\n");
        md.push_str(&self.summary.to_markdown());
        md.push_str("\n## Convergence\n\n");
        if self.findings.is_empty() {
            md.push_str(
                "No convergence rule fired: the run is neither clearly converged nor clearly \
                 failing. Read the plots.\n",
            );
        }
        for f in &self.findings {
            let _ = writeln!(
                md,
                "### {}\n\n{}.\n",
                f.verdict.title(),
                capitalize(&f.detail)
            );
            let indicator = f.verdict.indicator();
            if !indicator.is_empty() {
                let _ = writeln!(md, "> {indicator}\n");
            }
            if !f.verdict.advice().is_empty() {
                md.push_str("What to try:\n\n");
                for a in f.verdict.advice() {
                    let _ = writeln!(md, "- {a}");
                }
                md.push('\n');
            }
        }
        md
    }
}

impl Summary {
    pub fn to_markdown(&self) -> String {
        let mut md = String::from("| metric | value |\n|---|---|\n");
        let mut row = |k: &str, v: String| {
            let _ = writeln!(md, "| {k} | {v} |");
        };
        if let Some((acc, epoch, step)) = self.best_val_acc {
            row(
                "best val acc",
                format!("{} (epoch {epoch}, step {step})", pct(acc)),
            );
        }
        if let Some((loss, acc, epoch)) = self.final_val {
            row(
                "final val loss / acc",
                format!("{loss:.4} / {} (epoch {epoch})", pct(acc)),
            );
        }
        if let Some((loss, acc, epoch)) = self.final_train {
            row(
                "final train loss / acc",
                format!("{loss:.4} / {} (mean over epoch {epoch})", pct(acc)),
            );
        }
        if let Some(gap) = self.gap_points {
            row("train–val gap", format!("{gap:.1} points"));
        }
        row("epochs", self.epochs.to_string());
        row(
            "log points",
            format!("{} train, {} val", self.train_records, self.val_records),
        );
        if let Some(img_s) = self.img_s {
            row("throughput", format!("{img_s:.0} images/s (mean)"));
        }
        if let Some(t) = self.wall_time {
            row("training time", duration(t));
        }
        md
    }
}

fn pct(frac: f64) -> String {
    format!("{:.2}%", frac * 100.0)
}

fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s:02}s"),
        (h, m, s) => format!("{h}h {m:02}m {s:02}s"),
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS_PER_EPOCH: u64 = 100;
    const LOGS_PER_EPOCH: u64 = 2;

    /// A run from per-epoch (train loss, train acc, val loss, val acc, lr): two train records
    /// per epoch, then one eval.
    fn run(epochs: &[(f64, f64, f64, f64, f64)]) -> Vec<MetricRecord> {
        let mut records = Vec::new();
        for (i, &(tl, ta, vl, va, lr)) in epochs.iter().enumerate() {
            let epoch = i + 1;
            for k in 1..=LOGS_PER_EPOCH {
                let step = i as u64 * STEPS_PER_EPOCH + k * STEPS_PER_EPOCH / LOGS_PER_EPOCH;
                records.push(MetricRecord::train(
                    epoch,
                    step,
                    tl,
                    ta,
                    lr,
                    500.0,
                    step as f64,
                ));
            }
            let step = epoch as u64 * STEPS_PER_EPOCH;
            records.push(MetricRecord::val(epoch, step, vl, va, step as f64 + 1.0));
        }
        records
    }

    /// Cosine learning rate from 1e-3 to 0 over `n` epochs.
    fn cosine(i: usize, n: usize) -> f64 {
        1e-3 * 0.5 * (1.0 + (std::f64::consts::PI * i as f64 / n as f64).cos())
    }

    fn verdicts(a: &Analysis) -> Vec<Verdict> {
        a.findings.iter().map(|f| f.verdict).collect()
    }

    #[test]
    fn good_convergence() {
        // Loss decays towards a floor and flattens as the cosine schedule anneals.
        let n = 30;
        let epochs: Vec<_> = (0..n)
            .map(|i| {
                let x = (-(i as f64) / 5.0).exp();
                (
                    0.4 + 1.8 * x,
                    0.90 - 0.6 * x,
                    0.5 + 1.5 * x,
                    0.85 - 0.55 * x,
                    cosine(i, n),
                )
            })
            .collect();
        let a = analyze(&run(&epochs));
        let v = verdicts(&a);
        assert!(a.has(Verdict::GoodConvergence), "{v:?}");
        for bad in [
            Verdict::Overfitting,
            Verdict::Divergence,
            Verdict::Oscillation,
            Verdict::EarlyPlateau,
        ] {
            assert!(!a.has(bad), "{v:?}");
        }
        let md = a.to_markdown();
        assert!(md.contains("Good convergence"), "{md}");
        assert!(md.contains("| best val acc | 84."), "{md}");
    }

    #[test]
    fn needs_more_epochs_when_both_losses_still_fall() {
        let n = 10;
        let epochs: Vec<_> = (0..n)
            .map(|i| {
                let t = i as f64;
                (
                    2.2 - 0.15 * t,
                    0.2 + 0.05 * t,
                    2.0 - 0.12 * t,
                    0.25 + 0.04 * t,
                    1e-3,
                )
            })
            .collect();
        let a = analyze(&run(&epochs));
        let v = verdicts(&a);
        assert!(a.has(Verdict::NeedsMoreEpochs), "{v:?}");
        for bad in [
            Verdict::Overfitting,
            Verdict::Divergence,
            Verdict::EarlyPlateau,
            Verdict::Oscillation,
        ] {
            assert!(!a.has(bad), "{v:?}");
        }
        let detail = &a
            .findings
            .iter()
            .find(|f| f.verdict == Verdict::NeedsMoreEpochs)
            .unwrap()
            .detail;
        assert!(
            detail.contains("over the last 5 evals val loss fell 1.400 → 0.920"),
            "{detail}"
        );
    }

    #[test]
    fn overfitting_when_gap_is_large_and_val_loss_rises() {
        let n = 20;
        let epochs: Vec<_> = (0..n)
            .map(|i| {
                let t = i as f64;
                // Train keeps improving; val loss bottoms out at epoch 8 and climbs.
                let vl = 0.8 + 0.01 * (t - 8.0).powi(2);
                (
                    1.5 * (-t / 5.0).exp() + 0.05,
                    (0.5 + 0.03 * t).min(0.99),
                    vl,
                    0.70,
                    cosine(i, n),
                )
            })
            .collect();
        let a = analyze(&run(&epochs));
        let v = verdicts(&a);
        assert!(a.has(Verdict::Overfitting), "{v:?}");
        for bad in [
            Verdict::GoodConvergence,
            Verdict::NeedsMoreEpochs,
            Verdict::EarlyPlateau,
            Verdict::Divergence,
        ] {
            assert!(!a.has(bad), "{v:?}");
        }
        let detail = &a
            .findings
            .iter()
            .find(|f| f.verdict == Verdict::Overfitting)
            .unwrap()
            .detail;
        assert!(detail.contains("gap 29.0 points"), "{detail}");
        assert!(detail.contains("minimum 0.800 (epoch 9)"), "{detail}");
    }

    #[test]
    fn strong_gap_alone_is_overfitting() {
        let epochs: Vec<_> = (0..6)
            .map(|i| (0.1, 0.99, 1.0 - 0.001 * i as f64, 0.70, 1e-4))
            .collect();
        let a = analyze(&run(&epochs));
        assert!(a.has(Verdict::Overfitting), "{:?}", verdicts(&a));
        assert!(!a.has(Verdict::GoodConvergence));
    }

    #[test]
    fn nan_loss_is_divergence_only() {
        let mut records = run(&[(2.3, 0.1, 2.2, 0.12, 1e-2), (1.9, 0.3, 1.8, 0.3, 1e-2)]);
        records.push(MetricRecord::train(
            3,
            250,
            f64::NAN,
            0.1,
            1e-2,
            500.0,
            250.0,
        ));
        records.push(MetricRecord::val(3, 300, f64::NAN, 0.1, 301.0));
        let a = analyze(&records);
        assert_eq!(verdicts(&a), vec![Verdict::Divergence]);
        assert!(
            a.findings[0]
                .detail
                .contains("train loss became NaN at step 250 (epoch 3)")
        );
        assert!(a.to_markdown().contains("Reduce learning rate by 2-5x"));
    }

    #[test]
    fn exploding_loss_is_divergence() {
        let epochs: Vec<_> = (0..6)
            .map(|i| {
                let l = 2.3 * 1.6f64.powi(i);
                (l, 0.1, l, 0.1, 5e-2)
            })
            .collect();
        let a = analyze(&run(&epochs));
        let v = verdicts(&a);
        assert!(a.has(Verdict::Divergence), "{v:?}");
        assert!(
            !a.has(Verdict::GoodConvergence) && !a.has(Verdict::NeedsMoreEpochs),
            "{v:?}"
        );
        let detail = &a.findings[0].detail;
        assert!(
            detail.contains(
                "train loss reached 5.888 at step 250 (epoch 3), 2.6× the first logged loss 2.300"
            ),
            "{detail}"
        );
    }

    #[test]
    fn early_plateau_while_lr_is_high() {
        let epochs: Vec<_> = (0..12)
            .map(|i| {
                // Falls for 4 epochs, then flat at 1.5 with tiny noise while lr stays at peak.
                let vl = if i < 4 {
                    2.2 - 0.175 * i as f64
                } else {
                    1.5 + 0.001 * (i % 2) as f64
                };
                (vl + 0.1, 0.45, vl, 0.45, 1e-3)
            })
            .collect();
        let a = analyze(&run(&epochs));
        let v = verdicts(&a);
        assert!(a.has(Verdict::EarlyPlateau), "{v:?}");
        for bad in [
            Verdict::GoodConvergence,
            Verdict::NeedsMoreEpochs,
            Verdict::Oscillation,
            Verdict::Overfitting,
        ] {
            assert!(!a.has(bad), "{v:?}");
        }
        let detail = &a
            .findings
            .iter()
            .find(|f| f.verdict == Verdict::EarlyPlateau)
            .unwrap()
            .detail;
        assert!(detail.contains("still 100% of its peak"), "{detail}");
    }

    #[test]
    fn flat_loss_after_annealing_is_not_a_plateau() {
        let n = 12;
        let epochs: Vec<_> = (0..n)
            .map(|i| {
                let vl = if i < 4 { 2.2 - 0.175 * i as f64 } else { 1.5 };
                (vl - 0.1, 0.6, vl, 0.55, if i < 4 { 1e-3 } else { 1e-5 })
            })
            .collect();
        let a = analyze(&run(&epochs));
        assert!(!a.has(Verdict::EarlyPlateau), "{:?}", verdicts(&a));
        assert!(a.has(Verdict::GoodConvergence), "{:?}", verdicts(&a));
    }

    #[test]
    fn oscillation_when_val_loss_zigzags() {
        let epochs: Vec<_> = (0..12)
            .map(|i| {
                let vl = 1.2 - 0.01 * i as f64 + if i % 2 == 0 { 0.15 } else { -0.15 };
                (1.0, 0.6, vl, 0.55, 1e-3)
            })
            .collect();
        let a = analyze(&run(&epochs));
        let v = verdicts(&a);
        assert!(a.has(Verdict::Oscillation), "{v:?}");
        for bad in [
            Verdict::GoodConvergence,
            Verdict::NeedsMoreEpochs,
            Verdict::EarlyPlateau,
        ] {
            assert!(!a.has(bad), "{v:?}");
        }
    }

    #[test]
    fn small_noise_is_not_oscillation() {
        let n = 20;
        let epochs: Vec<_> = (0..n)
            .map(|i| {
                let x = (-(i as f64) / 4.0).exp();
                let noise = if i % 2 == 0 { 0.003 } else { -0.003 };
                (
                    0.4 + 1.8 * x,
                    0.88 - 0.6 * x,
                    0.5 + 1.5 * x + noise,
                    0.84 - 0.55 * x,
                    cosine(i, n),
                )
            })
            .collect();
        let a = analyze(&run(&epochs));
        assert!(!a.has(Verdict::Oscillation), "{:?}", verdicts(&a));
        assert!(a.has(Verdict::GoodConvergence), "{:?}", verdicts(&a));
    }

    #[test]
    fn too_few_evals_and_empty_input() {
        let a = analyze(&run(&[
            (2.0, 0.3, 1.9, 0.3, 1e-3),
            (1.8, 0.35, 1.7, 0.36, 1e-3),
        ]));
        assert_eq!(verdicts(&a), vec![Verdict::InsufficientData]);

        let a = analyze(&[]);
        assert_eq!(verdicts(&a), vec![Verdict::InsufficientData]);
        assert_eq!(a.summary, Summary::default());
        assert!(a.to_markdown().contains("## Summary"));
    }

    #[test]
    fn epoch_accuracies_average_train_records() {
        let records = vec![
            MetricRecord::train(1, 50, 2.0, 0.2, 1e-3, 1.0, 1.0),
            MetricRecord::train(1, 100, 1.8, 0.4, 1e-3, 1.0, 2.0),
            MetricRecord::val(1, 100, 1.7, 0.25, 3.0),
            MetricRecord::train(2, 150, 1.6, 0.5, 1e-3, 1.0, 4.0),
        ];
        let e = epoch_accuracies(&records);
        assert_eq!(e.len(), 1);
        assert!((e[0].train_acc - 0.3).abs() < 1e-12);
        assert!((e[0].gap_points() - 5.0).abs() < 1e-9);
        let s = analyze(&records).summary;
        assert_eq!(s.final_train, Some((1.6, 0.5, 2)));
        assert_eq!(s.best_val_acc, Some((0.25, 1, 100)));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(42.4), "42s");
        assert_eq!(duration(125.0), "2m 05s");
        assert_eq!(duration(3723.0), "1h 02m 03s");
    }
}
