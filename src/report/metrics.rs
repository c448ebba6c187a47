//! What the trainer records: one [`MetricRecord`] per log point in `metrics.jsonl`, and an
//! [`EvalReport`] for a finished evaluation (per-class accuracy and confusion matrix).
//!
//! `acc` is a fraction in [0, 1] everywhere in JSON; only tables and plots print percent.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};

/// One line of `metrics.jsonl`.
///
/// Train records (`split == "train"`) are averages since the previous train record and carry
/// `lr` and `img_s`; validation records (`split == "val"`) describe one full evaluation.
///
/// A NaN or infinite loss is written by `serde_json` as `null`; reading turns `null` back into
/// NaN so that a diverged run still loads and the analysis can say where it diverged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    pub split: String,
    pub epoch: usize,
    pub step: u64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub loss: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub acc: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub img_s: Option<f64>,
    /// Seconds since the run started.
    pub time: f64,
    /// Numeric additions from later trainer versions (distillation losses, per-task
    /// accuracy, ...). Non-numeric extra keys are ignored so old readers survive new writers.
    #[serde(flatten, deserialize_with = "numeric_extras")]
    pub extra: BTreeMap<String, f64>,
}

impl MetricRecord {
    /// A train record with the fields every train log point has.
    pub fn train(
        epoch: usize,
        step: u64,
        loss: f64,
        acc: f64,
        lr: f64,
        img_s: f64,
        time: f64,
    ) -> Self {
        MetricRecord {
            split: "train".into(),
            epoch,
            step,
            loss,
            acc,
            lr: Some(lr),
            img_s: Some(img_s),
            time,
            extra: BTreeMap::new(),
        }
    }

    /// A validation record.
    pub fn val(epoch: usize, step: u64, loss: f64, acc: f64, time: f64) -> Self {
        MetricRecord {
            split: "val".into(),
            epoch,
            step,
            loss,
            acc,
            lr: None,
            img_s: None,
            time,
            extra: BTreeMap::new(),
        }
    }

    pub fn is_train(&self) -> bool {
        self.split == "train"
    }

    pub fn is_val(&self) -> bool {
        self.split == "val"
    }
}

/// `null` (how serde_json writes NaN/Inf) reads back as NaN.
fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Keeps numeric (and `null` → NaN) extra keys, drops strings, bools, arrays and objects.
fn numeric_extras<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, f64>, D::Error> {
    let raw = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::Null => Some((k, f64::NAN)),
            serde_json::Value::Number(n) => n.as_f64().map(|x| (k, x)),
            _ => None,
        })
        .collect())
}

/// Reads every record of a `metrics.jsonl`. Blank lines are skipped; any other line that is
/// not a valid record is an error naming its line number.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricRecord>> {
    let file = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::data(
                path,
                "no such file",
                "is this a vitrs run directory? training writes it",
            )
        } else {
            Error::io(path, "opening", e)
        }
    })?;
    let mut records = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, "reading", e))?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line).map_err(|e| {
            Error::data(
                path,
                format_args!("line {}: not a metric record: {e}", i + 1),
                "fix or delete that line",
            )
        })?;
        records.push(record);
    }
    Ok(records)
}

/// Appends records to `metrics.jsonl`, one line each, flushed at once so that a crash loses at
/// most the line being written and `vitrs report` can run while training goes on.
pub struct MetricsWriter {
    file: File,
    path: PathBuf,
}

impl MetricsWriter {
    /// Opens `path` for appending (creating it), so a resumed run continues the same file.
    pub fn create(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, "opening for append", e))?;
        Ok(MetricsWriter {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Opens `path` to continue a run resumed at optimizer step `step`: records after that step
    /// (written by the interrupted process and about to be redone) and a line cut short by a
    /// crash are dropped first, so the file reads as one uninterrupted run.
    pub fn resume(path: &Path, step: u64) -> Result<Self> {
        if let Ok(text) = std::fs::read_to_string(path) {
            let kept: String = text
                .split_inclusive('\n')
                .filter(|line| line.ends_with('\n'))
                .filter(|line| {
                    serde_json::from_str::<MetricRecord>(line).is_ok_and(|r| r.step <= step)
                })
                .collect();
            let tmp = path.with_extension("jsonl.tmp");
            crate::util::write_file_synced(&tmp, kept.as_bytes())?;
            std::fs::rename(&tmp, path).map_err(|e| Error::io(path, "replacing", e))?;
        }
        Self::create(path)
    }

    pub fn write(&mut self, record: &MetricRecord) -> Result<()> {
        let mut line = serde_json::to_string(record)
            .map_err(|e| Error::Io(format!("serializing metric record: {e}")))?;
        line.push('\n');
        // One write_all per line: with O_APPEND the line lands whole or not at all in practice.
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::io(&self.path, "appending to", e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The result of evaluating a model on a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub loss: f64,
    /// Overall accuracy, a fraction.
    pub acc: f64,
    /// Accuracy per true class, a fraction; 0 for a class with no samples (see `confusion`).
    pub per_class_acc: Vec<f64>,
    /// `confusion[true][pred]` = number of samples.
    pub confusion: Vec<Vec<u64>>,
    pub class_names: Vec<String>,
    pub num_samples: usize,
    /// `vitrs eval --teacher`: share of samples where the model's top-1 equals the teacher's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_agreement: Option<f64>,
}

/// Classes beyond this count get a worst-classes summary instead of a full matrix in text.
const MAX_MATRIX_CLASSES: usize = 20;
/// How many worst classes and confused pairs the many-class summary lists.
const WORST_K: usize = 10;
/// Width of class names in the text confusion matrix header.
const SHORT_NAME: usize = 5;

impl EvalReport {
    /// Builds the report from predicted and true class indices. Mismatched lengths or an index
    /// outside `class_names` is a data error (corrupt labels), not a panic.
    pub fn from_predictions(
        preds: &[usize],
        labels: &[usize],
        class_names: Vec<String>,
        loss: f64,
    ) -> Result<Self> {
        if preds.len() != labels.len() {
            return Err(Error::Data(format!(
                "evaluation: {} predictions for {} labels",
                preds.len(),
                labels.len()
            )));
        }
        let n = class_names.len();
        let mut confusion = vec![vec![0u64; n]; n];
        for (i, (&p, &t)) in preds.iter().zip(labels).enumerate() {
            if p >= n || t >= n {
                return Err(Error::Data(format!(
                    "evaluation: sample {i} has label {t} / prediction {p}, but there are only {n} classes"
                )));
            }
            confusion[t][p] += 1;
        }
        let per_class_acc = confusion
            .iter()
            .enumerate()
            .map(|(c, row)| ratio(row[c], row.iter().sum()))
            .collect();
        let correct: u64 = (0..n).map(|c| confusion[c][c]).sum();
        Ok(EvalReport {
            loss,
            acc: ratio(correct, labels.len() as u64),
            per_class_acc,
            confusion,
            class_names,
            num_samples: labels.len(),
            teacher_agreement: None,
        })
    }

    /// Number of samples whose true class is `c`.
    pub fn support(&self, c: usize) -> u64 {
        self.confusion[c].iter().sum()
    }

    /// A plain-text report for terminals and `report.md`: per-class table, then the confusion
    /// matrix (≤ 20 classes) or the worst classes and most confused pairs (more classes).
    pub fn to_table(&self) -> String {
        let mut out = self.per_class_table();
        out.push('\n');
        if self.class_names.len() <= MAX_MATRIX_CLASSES {
            out.push_str(&self.confusion_table());
        } else {
            out.push_str(&self.worst_summary());
        }
        out
    }

    fn per_class_table(&self) -> String {
        let w = name_width(&self.class_names);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<w$}  {:>7}  {:>7}  {:>7}",
            "class", "samples", "correct", "acc"
        );
        for (c, name) in self.class_names.iter().enumerate() {
            let support = self.support(c);
            let acc = if support == 0 {
                "-".to_string()
            } else {
                pct(self.per_class_acc[c])
            };
            let _ = writeln!(
                out,
                "{name:<w$}  {support:>7}  {:>7}  {acc:>7}",
                self.confusion[c][c]
            );
        }
        let correct: u64 = (0..self.class_names.len())
            .map(|c| self.confusion[c][c])
            .sum();
        let _ = writeln!(
            out,
            "{:<w$}  {:>7}  {correct:>7}  {:>7}   loss {:.4}",
            "overall",
            self.num_samples,
            pct(self.acc),
            self.loss
        );
        out
    }

    fn confusion_table(&self) -> String {
        let short: Vec<String> = self.class_names.iter().map(|s| short_name(s)).collect();
        let max = self.confusion.iter().flatten().copied().max().unwrap_or(0);
        let cell = (max.to_string().len() + 1).max(SHORT_NAME + 1);
        let mut out = String::from("confusion matrix (rows: true class, columns: predicted)\n");
        let _ = write!(out, "{:<SHORT_NAME$}", "");
        for s in &short {
            let _ = write!(out, "{s:>cell$}");
        }
        out.push('\n');
        for (row, s) in self.confusion.iter().zip(&short) {
            let _ = write!(out, "{s:<SHORT_NAME$}");
            for n in row {
                let _ = write!(out, "{n:>cell$}");
            }
            out.push('\n');
        }
        out
    }

    /// For many classes a 100×100 matrix is unreadable as text: list what is worst instead.
    fn worst_summary(&self) -> String {
        let names = &self.class_names;
        let mut classes: Vec<usize> = (0..names.len()).filter(|&c| self.support(c) > 0).collect();
        classes.sort_by(|&a, &b| self.per_class_acc[a].total_cmp(&self.per_class_acc[b]));
        let mut out = format!("{WORST_K} worst classes (most common wrong prediction)\n");
        for &c in classes.iter().take(WORST_K) {
            let confused = self.most_confused_with(c);
            let _ = write!(out, "  {:<20} {:>7}", names[c], pct(self.per_class_acc[c]));
            if let Some((p, n)) = confused {
                let _ = write!(out, "   -> {} ({n})", names[p]);
            }
            out.push('\n');
        }
        let mut pairs: Vec<(u64, usize, usize)> = Vec::new();
        for (t, row) in self.confusion.iter().enumerate() {
            for (p, &n) in row.iter().enumerate() {
                if t != p && n > 0 {
                    pairs.push((n, t, p));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let _ = writeln!(
            out,
            "\n{WORST_K} most confused pairs (true -> predicted: count)"
        );
        for &(n, t, p) in pairs.iter().take(WORST_K) {
            let _ = writeln!(out, "  {} -> {}: {n}", names[t], names[p]);
        }
        out
    }

    fn most_confused_with(&self, c: usize) -> Option<(usize, u64)> {
        self.confusion[c]
            .iter()
            .enumerate()
            .filter(|&(p, &n)| p != c && n > 0)
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
            .map(|(p, &n)| (p, n))
    }

    /// Writes the report as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Io(format!("serializing evaluation report: {e}")))?;
        std::fs::write(path, json).map_err(|e| Error::io(path, "writing", e))
    }

    /// Reads a report written by [`EvalReport::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "reading", e))?;
        serde_json::from_str(&text).map_err(|e| {
            Error::data(
                path,
                format_args!("not an evaluation report: {e}"),
                "re-run the evaluation",
            )
        })
    }
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

fn pct(frac: f64) -> String {
    format!("{:.1}%", frac * 100.0)
}

fn name_width(names: &[String]) -> usize {
    names
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(0)
        .max("overall".len())
}

/// The first few characters of a class name, for matrix headers.
pub fn short_name(name: &str) -> String {
    name.chars().take(SHORT_NAME).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("class{i}")).collect()
    }

    #[test]
    fn record_json_matches_the_documented_lines() {
        let line = r#"{"split":"train","epoch":1,"step":50,"loss":2.1,"acc":0.31,"lr":0.0003,"img_s":410.2,"time":12.5}"#;
        let r: MetricRecord = serde_json::from_str(line).unwrap();
        assert_eq!(
            r,
            MetricRecord::train(1, 50, 2.1, 0.31, 0.0003, 410.2, 12.5)
        );
        assert_eq!(serde_json::to_string(&r).unwrap(), line);

        let line = r#"{"split":"val","epoch":1,"step":390,"loss":1.7,"acc":0.42,"time":30.1}"#;
        let r: MetricRecord = serde_json::from_str(line).unwrap();
        assert_eq!(r, MetricRecord::val(1, 390, 1.7, 0.42, 30.1));
        assert_eq!(serde_json::to_string(&r).unwrap(), line);
    }

    #[test]
    fn extra_keys_round_trip_and_non_numbers_are_dropped() {
        let line = r#"{"split":"train","epoch":2,"step":100,"loss":1.0,"acc":0.5,"time":1.0,"distill_loss":0.25,"note":"resumed"}"#;
        let r: MetricRecord = serde_json::from_str(line).unwrap();
        assert_eq!(r.extra.get("distill_loss"), Some(&0.25));
        assert!(!r.extra.contains_key("note"));
        let back: MetricRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn nan_loss_survives_a_round_trip() {
        let r = MetricRecord::train(3, 150, f64::NAN, 0.1, 1e-3, 100.0, 5.0);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""loss":null"#), "{json}");
        let back: MetricRecord = serde_json::from_str(&json).unwrap();
        assert!(back.loss.is_nan());
    }

    #[test]
    fn writer_then_reader_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let records = vec![
            MetricRecord::train(1, 50, 2.1, 0.31, 3e-4, 410.2, 12.5),
            MetricRecord::val(1, 390, 1.7, 0.42, 30.1),
        ];
        let mut w = MetricsWriter::create(&path).unwrap();
        w.write(&records[0]).unwrap();
        drop(w);
        // Re-opening appends, as a resumed run does.
        let mut w = MetricsWriter::create(&path).unwrap();
        w.write(&records[1]).unwrap();
        assert_eq!(read_metrics(&path).unwrap(), records);
    }

    #[test]
    fn resume_drops_redone_steps_and_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut w = MetricsWriter::create(&path).unwrap();
        for step in [50, 100, 150] {
            w.write(&MetricRecord::train(1, step, 1.0, 0.5, 1e-3, 10.0, 1.0))
                .unwrap();
        }
        drop(w);
        // A kill in the middle of a line.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"split\":\"train\",\"ep");
        std::fs::write(&path, text).unwrap();
        // Resumed at step 100: step 150 will be redone.
        let mut w = MetricsWriter::resume(&path, 100).unwrap();
        w.write(&MetricRecord::train(1, 150, 0.9, 0.6, 1e-3, 10.0, 2.0))
            .unwrap();
        let steps: Vec<u64> = read_metrics(&path)
            .unwrap()
            .iter()
            .map(|r| r.step)
            .collect();
        assert_eq!(steps, vec![50, 100, 150]);
        assert_eq!(read_metrics(&path).unwrap()[2].loss, 0.9);
    }

    #[test]
    fn malformed_line_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let good = r#"{"split":"val","epoch":1,"step":390,"loss":1.7,"acc":0.42,"time":30.1}"#;
        std::fs::write(&path, format!("{good}\n\n{{\"split\":\"train\",\"epo\n")).unwrap();
        let err = read_metrics(&path).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("metrics.jsonl"), "{err}");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_metrics(&dir.path().join("metrics.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such file"), "{err}");
    }

    #[test]
    fn eval_report_from_known_predictions() {
        // class 0: 3 samples, 2 right (one predicted as 1); class 1: 2 samples, both right;
        // class 2: 1 sample predicted as 0.
        let labels = [0, 0, 0, 1, 1, 2];
        let preds = [0, 1, 0, 1, 1, 0];
        let r = EvalReport::from_predictions(&preds, &labels, names(3), 0.75).unwrap();
        assert_eq!(
            r.confusion,
            vec![vec![2, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]
        );
        assert_eq!(r.per_class_acc, vec![2.0 / 3.0, 1.0, 0.0]);
        assert_eq!(r.acc, 4.0 / 6.0);
        assert_eq!(r.num_samples, 6);
        assert_eq!(r.loss, 0.75);
    }

    #[test]
    fn eval_report_rejects_bad_input() {
        assert!(EvalReport::from_predictions(&[0], &[0, 1], names(2), 0.0).is_err());
        let err = EvalReport::from_predictions(&[0, 5], &[0, 1], names(2), 0.0).unwrap_err();
        assert!(err.to_string().contains("only 2 classes"), "{err}");
    }

    #[test]
    fn eval_report_json_round_trip() {
        let r = EvalReport::from_predictions(&[0, 1, 1], &[0, 1, 0], names(2), 0.5).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eval.json");
        r.save(&path).unwrap();
        assert_eq!(EvalReport::load(&path).unwrap(), r);
    }

    #[test]
    fn table_for_ten_classes_has_matrix_and_percentages() {
        let cifar = [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ];
        let labels: Vec<usize> = (0..1000).map(|i| i % 10).collect();
        let preds: Vec<usize> = labels
            .iter()
            .enumerate()
            .map(|(i, &l)| if i % 7 == 0 { (l + 1) % 10 } else { l })
            .collect();
        let names = cifar.iter().map(|s| s.to_string()).collect();
        let table = EvalReport::from_predictions(&preds, &labels, names, 0.4)
            .unwrap()
            .to_table();
        assert!(table.contains("automobile"), "{table}");
        assert!(table.contains("autom"), "{table}");
        assert!(table.contains('%'), "{table}");
        assert!(table.contains("confusion matrix"), "{table}");
        let widest = table.lines().map(|l| l.chars().count()).max().unwrap();
        assert!(widest <= 80, "too wide for a terminal: {widest}\n{table}");
    }

    #[test]
    fn table_for_hundred_classes_summarises_worst() {
        let labels: Vec<usize> = (0..1000).map(|i| i % 100).collect();
        // Class 7 is always predicted as 8; everything else is right.
        let preds: Vec<usize> = labels.iter().map(|&l| if l == 7 { 8 } else { l }).collect();
        let table = EvalReport::from_predictions(&preds, &labels, names(100), 1.0)
            .unwrap()
            .to_table();
        assert!(!table.contains("confusion matrix"));
        assert!(table.contains("worst classes"), "{table}");
        assert!(table.contains("class7 -> class8: 10"), "{table}");
    }
}
