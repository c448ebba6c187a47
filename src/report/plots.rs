//! PNG plots of a run, drawn with `plotters` into an in-memory RGB buffer and encoded with
//! `image`, so nothing needs system libraries: the font is embedded (DejaVu Sans, see
//! `assets/DejaVuSans.LICENSE`) and rendered by `ab_glyph`.
//!
//! Plots that have no data (no evaluations yet, no learning rate logged) are skipped, never a
//! panic; non-finite values (a diverged loss) are left out of the curves.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::{ExtendedColorType, ImageEncoder, codecs::png::PngEncoder};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{SegmentValue, SegmentedCoord};
use plotters::coord::types::RangedCoordi32;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};
use crate::report::analysis::epoch_accuracies;
use crate::report::metrics::{EvalReport, MetricRecord};

const FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const FONT: &str = "sans-serif";

const SIZE: (u32, u32) = (1000, 600);
const TITLE_PT: u32 = 26;
// Even sizes only: plotters 0.3.7's ab_glyph renderer truncates half a pixel when placing
// glyphs of odd sizes, which lifts "." off the baseline.
const AXIS_DESC_PT: u32 = 18;
const LABEL_PT: u32 = 16;

/// Default moving-average window, in log points.
pub const DEFAULT_MA_WINDOW: usize = 10;

/// Matplotlib's "tab10": distinct, colour-blind-friendlier than plotters' primaries.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const TRAIN_COLOR: RGBColor = PALETTE[0];
const VAL_COLOR: RGBColor = PALETTE[3];

type DrawResult = std::result::Result<(), Box<dyn StdError>>;
type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// plotters' ab_glyph backend only knows fonts registered at run time.
fn register_font() -> Result<()> {
    static OK: OnceLock<bool> = OnceLock::new();
    let ok = *OK.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Io(
            "the embedded plot font is not a valid TrueType font".into(),
        ))
    }
}

/// Draws into a white canvas of `size` and writes it to `path` as PNG.
fn render(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area) -> DrawResult) -> Result<()> {
    register_font()?;
    let (w, h) = size;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE)
            .map_err(Box::<dyn StdError>::from)
            .and_then(|()| draw(&root))
            .and_then(|()| root.present().map_err(Box::<dyn StdError>::from))
            .map_err(|e| Error::Io(format!("drawing {}: {e}", path.display())))?;
    }
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(&buf, w, h, ExtendedColorType::Rgb8)
        .map_err(|e| Error::Io(format!("encoding {}: {e}", path.display())))?;
    std::fs::write(path, png).map_err(|e| Error::io(path, "writing", e))
}

fn font(pt: u32) -> FontDesc<'static> {
    (FONT, pt).into_font()
}

// ---------------------------------------------------------------------------------------------
// Line charts.

/// How a series is drawn.
#[derive(Clone, Copy)]
enum Look {
    /// Thin and translucent: raw, noisy train points behind their moving average.
    Faint,
    Line,
    /// Line with a dot at each point: sparse series such as evaluations.
    Dots,
    /// Dashed reference line.
    Dashed,
}

struct Series {
    label: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    look: Look,
}

impl Series {
    fn new(label: impl Into<String>, points: Vec<(f64, f64)>, color: RGBColor, look: Look) -> Self {
        let points = points
            .into_iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        Series {
            label: label.into(),
            points,
            color,
            look,
        }
    }
}

struct LineChart<'a> {
    title: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    /// Formats a y tick label given the axis span (to pick the number of decimals).
    y_fmt: fn(f64, f64) -> String,
    legend: SeriesLabelPosition,
    /// Values the y range must include (0 for accuracy, the gap limit, ...).
    y_include: &'a [f64],
}

/// `[lo, hi]` of finite values with 5% padding; a single value gets a band around it.
fn padded_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold(None, |acc: Option<(f64, f64)>, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })?;
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.05
    } else if lo != 0.0 {
        lo.abs() * 0.1
    } else {
        1.0
    };
    Some((lo - pad, hi + pad))
}

/// Draws `series` into `path`; returns `false` (and writes nothing) if no series has a point.
fn line_chart(path: &Path, spec: &LineChart, series: &[Series]) -> Result<bool> {
    let all = || series.iter().flat_map(|s| s.points.iter());
    if all().next().is_none() {
        return Ok(false);
    }
    let (x0, x1) = padded_range(all().map(|p| p.0)).expect("non-empty");
    let (y0, y1) =
        padded_range(all().map(|p| p.1).chain(spec.y_include.iter().copied())).expect("non-empty");
    render(path, SIZE, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(spec.title, font(TITLE_PT))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(spec.x_desc)
            .y_desc(spec.y_desc)
            .axis_desc_style(font(AXIS_DESC_PT))
            .label_style(font(LABEL_PT))
            // Only whole-number ticks are labelled: a tick at 1.5 printed as "2" would repeat.
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 1e-6 {
                    format!("{x:.0}")
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| (spec.y_fmt)(*y, y1 - y0))
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(BLACK.mix(0.08))
            .draw()?;
        // An empty series would still get a legend entry for a curve that is not there.
        for s in series.iter().filter(|s| !s.points.is_empty()) {
            draw_series(&mut chart, s)?;
        }
        chart
            .configure_series_labels()
            .position(spec.legend.clone())
            .label_font(font(LABEL_PT))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
        Ok(())
    })?;
    Ok(true)
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn draw_series(chart: &mut Chart, s: &Series) -> DrawResult {
    let color = s.color;
    let pts = s.points.iter().copied();
    // A line through one point draws nothing: give lone points a dot.
    let look = match s.look {
        Look::Faint | Look::Line if s.points.len() == 1 => Look::Dots,
        look => look,
    };
    let anno = match look {
        Look::Faint => chart.draw_series(LineSeries::new(pts, color.mix(0.3).stroke_width(1)))?,
        Look::Line => chart.draw_series(LineSeries::new(pts, color.stroke_width(3)))?,
        Look::Dots => {
            chart.draw_series(LineSeries::new(pts, color.stroke_width(2)).point_size(4))?
        }
        Look::Dashed => {
            chart.draw_series(DashedLineSeries::new(pts, 10, 6, color.stroke_width(2)))?
        }
    };
    let legend_style = match look {
        Look::Faint => color.mix(0.4).stroke_width(2),
        _ => color.stroke_width(3),
    };
    anno.label(s.label.clone())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], legend_style));
    Ok(())
}

/// Trailing moving average over the last `window` finite values (fewer at the start).
pub fn moving_average(values: &[f64], window: usize) -> Vec<f64> {
    let window = window.max(1);
    (0..values.len())
        .map(|i| {
            let from = (i + 1).saturating_sub(window);
            let finite: Vec<f64> = values[from..=i]
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            if finite.is_empty() {
                f64::NAN
            } else {
                finite.iter().sum::<f64>() / finite.len() as f64
            }
        })
        .collect()
}

/// Decimals that tell ticks apart on an axis spanning `span`.
fn decimals(span: f64) -> usize {
    if span >= 20.0 {
        0
    } else if span >= 2.0 {
        1
    } else if span >= 0.2 {
        2
    } else {
        3
    }
}

fn pct_label(y: f64, span: f64) -> String {
    format!("{y:.*}%", decimals(span))
}

fn plain_label(y: f64, span: f64) -> String {
    format!("{y:.*}", decimals(span))
}

fn sci_label(y: f64, _span: f64) -> String {
    if y == 0.0 {
        "0".into()
    } else {
        format!("{y:.1e}")
    }
}

/// Train raw + moving average + val curves of one metric (`value` picks and scales it).
fn metric_series(
    records: &[MetricRecord],
    value: fn(&MetricRecord) -> f64,
    ma_window: usize,
) -> Vec<Series> {
    let train: Vec<&MetricRecord> = records.iter().filter(|r| r.is_train()).collect();
    let xs: Vec<f64> = train.iter().map(|r| r.step as f64).collect();
    let ys: Vec<f64> = train.iter().map(|r| value(r)).collect();
    let ma = moving_average(&ys, ma_window);
    let val = records
        .iter()
        .filter(|r| r.is_val())
        .map(|r| (r.step as f64, value(r)))
        .collect();
    vec![
        Series::new(
            "train",
            xs.iter().copied().zip(ys).collect(),
            TRAIN_COLOR,
            Look::Faint,
        ),
        Series::new(
            format!("train, moving average ({ma_window})"),
            xs.into_iter().zip(ma).collect(),
            TRAIN_COLOR,
            Look::Line,
        ),
        Series::new("validation", val, VAL_COLOR, Look::Dots),
    ]
}

/// Writes `loss.png`, `accuracy.png`, `lr.png` and `gap.png` into `dir` (created if needed)
/// and returns the paths written; plots without data are skipped.
pub fn plot_training(
    dir: &Path,
    records: &[MetricRecord],
    ma_window: usize,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating", e))?;
    let mut written = Vec::new();
    let mut keep = |path: PathBuf, drawn: bool| {
        if drawn {
            written.push(path);
        }
    };

    let path = dir.join("loss.png");
    let spec = LineChart {
        title: "Loss",
        x_desc: "step",
        y_desc: "loss",
        y_fmt: plain_label,
        legend: SeriesLabelPosition::UpperRight,
        y_include: &[],
    };
    keep(
        path.clone(),
        line_chart(&path, &spec, &metric_series(records, |r| r.loss, ma_window))?,
    );

    let path = dir.join("accuracy.png");
    let spec = LineChart {
        title: "Accuracy",
        x_desc: "step",
        y_desc: "accuracy (%)",
        y_fmt: pct_label,
        legend: SeriesLabelPosition::LowerRight,
        y_include: &[],
    };
    let series = metric_series(records, |r| r.acc * 100.0, ma_window);
    keep(path.clone(), line_chart(&path, &spec, &series)?);

    let path = dir.join("lr.png");
    let lr: Vec<(f64, f64)> = records
        .iter()
        .filter(|r| r.is_train())
        .filter_map(|r| Some((r.step as f64, r.lr?)))
        .collect();
    let spec = LineChart {
        title: "Learning rate",
        x_desc: "step",
        y_desc: "learning rate",
        y_fmt: sci_label,
        legend: SeriesLabelPosition::UpperRight,
        y_include: &[0.0],
    };
    let series = [Series::new("learning rate", lr, PALETTE[2], Look::Line)];
    keep(path.clone(), line_chart(&path, &spec, &series)?);

    let path = dir.join("gap.png");
    keep(path.clone(), plot_gap(&path, records)?);
    Ok(written)
}

fn plot_gap(path: &Path, records: &[MetricRecord]) -> Result<bool> {
    let epochs = epoch_accuracies(records);
    let gap: Vec<(f64, f64)> = epochs
        .iter()
        .map(|e| (e.epoch as f64, e.gap_points()))
        .collect();
    if gap.is_empty() {
        return Ok(false);
    }
    let (first, last) = (gap[0].0, gap[gap.len() - 1].0);
    let limit = crate::report::analysis::GAP_LIMIT;
    let spec = LineChart {
        title: "Train − validation accuracy gap",
        x_desc: "epoch",
        y_desc: "gap (percentage points)",
        y_fmt: plain_label,
        legend: SeriesLabelPosition::UpperLeft,
        y_include: &[0.0, limit + 2.0],
    };
    let series = [
        Series::new("train acc − val acc", gap, PALETTE[4], Look::Dots),
        Series::new(
            format!("{limit:.0}-point limit for good convergence"),
            vec![(first, limit), (last, limit)],
            PALETTE[7],
            Look::Dashed,
        ),
    ];
    line_chart(path, &spec, &series)
}

/// Validation accuracy of several runs against epoch on one plot (for `vitrs compare`).
/// Epoch, not step, is the x axis because runs may differ in batch size.
pub fn plot_overlay(out: &Path, runs: &[(String, Vec<MetricRecord>)]) -> Result<()> {
    let series: Vec<Series> = runs
        .iter()
        .enumerate()
        .map(|(i, (name, records))| {
            let points = records
                .iter()
                .filter(|r| r.is_val())
                .map(|r| (r.epoch as f64, r.acc * 100.0))
                .collect();
            Series::new(name.clone(), points, PALETTE[i % PALETTE.len()], Look::Dots)
        })
        .collect();
    let spec = LineChart {
        title: "Validation accuracy",
        x_desc: "epoch",
        y_desc: "validation accuracy (%)",
        y_fmt: pct_label,
        legend: SeriesLabelPosition::LowerRight,
        y_include: &[],
    };
    create_parent(out)?;
    if !line_chart(out, &spec, &series)? {
        // An empty comparison still gets a file, so callers can link it unconditionally.
        render(out, SIZE, |root| {
            root.draw(&Text::new(
                "no validation records in these runs yet",
                (SIZE.0 as i32 / 2, SIZE.1 as i32 / 2),
                font(AXIS_DESC_PT)
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Center)),
            ))?;
            Ok(())
        })?;
    }
    Ok(())
}

/// One series per named line, in palette order.
fn named_series<'a>(
    lines: impl Iterator<Item = (&'a String, &'a Vec<(f64, f64)>, Look)>,
) -> Vec<Series> {
    lines
        .enumerate()
        .map(|(i, (label, points, look))| {
            Series::new(
                label.clone(),
                points.clone(),
                PALETTE[i % PALETTE.len()],
                look,
            )
        })
        .collect()
}

fn create_parent(out: &Path) -> Result<()> {
    match out.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating", e)),
        None => Ok(()),
    }
}

/// Several named curves on one plot (loss of each fine-tuning method, sparsity per layer).
pub fn plot_curves(
    out: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    curves: &[(String, Vec<(f64, f64)>)],
) -> Result<bool> {
    let series = named_series(curves.iter().map(|(n, p)| (n, p, Look::Line)));
    let spec = LineChart {
        title,
        x_desc,
        y_desc,
        y_fmt: plain_label,
        legend: SeriesLabelPosition::UpperRight,
        y_include: &[],
    };
    create_parent(out)?;
    line_chart(out, &spec, &series)
}

/// One line of [`plot_lines`]: label, points, dashed.
pub type Line = (String, Vec<(f64, f64)>, bool);

/// A plain line chart (docs/scaling.md's cost model).
pub fn plot_lines(
    out: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
) -> Result<bool> {
    let series = named_series(
        lines
            .iter()
            .map(|(n, p, dashed)| (n, p, if *dashed { Look::Dashed } else { Look::Dots })),
    );
    // Head room above the lines for the legend.
    let top = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let spec = LineChart {
        title,
        x_desc,
        y_desc,
        y_fmt: plain_label,
        legend: SeriesLabelPosition::UpperRight,
        y_include: &[0.0, 1.5 * top],
    };
    line_chart(out, &spec, &series)
}

// ---------------------------------------------------------------------------------------------
// Evaluation plots.

/// Writes `per_class.png` and `confusion.png` into `dir`; skipped for an empty report.
pub fn plot_eval(dir: &Path, eval: &EvalReport) -> Result<Vec<PathBuf>> {
    let n = eval.class_names.len();
    if n == 0 || eval.confusion.len() != n || eval.per_class_acc.len() != n {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating", e))?;
    let per_class = dir.join("per_class.png");
    plot_per_class(&per_class, eval)?;
    let confusion = dir.join("confusion.png");
    plot_confusion(&confusion, eval)?;
    Ok(vec![per_class, confusion])
}

/// Class-name label formatter for a segmented class axis.
fn class_label(names: &[String], v: &SegmentValue<i32>) -> String {
    match v {
        SegmentValue::CenterOf(i) if *i >= 0 => names.get(*i as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    }
}

/// One segment per class. plotters' integer ranges include their end, so `0..n-1` has n
/// segments (a single class gets a spare empty one rather than a zero-width range).
fn class_axis(n: usize) -> SegmentedCoord<RangedCoordi32> {
    (0..(n as i32 - 1).max(1)).into_segmented()
}

/// Up to this many classes, class names fit horizontally under their column.
const FLAT_LABEL_CLASSES: usize = 12;

/// Font size of class names on the x axis.
fn class_label_pt(n: usize) -> u32 {
    if n <= FLAT_LABEL_CLASSES {
        LABEL_PT
    } else if n <= 30 {
        14
    } else {
        12
    }
}

/// Room below the x axis for class names: turned names need their full length.
fn class_label_area(names: &[String], n: usize) -> u32 {
    if n <= FLAT_LABEL_CLASSES {
        40
    } else {
        let longest = names.iter().map(|s| s.chars().count()).max().unwrap_or(0) as u32;
        20 + longest * class_label_pt(n) * 6 / 10
    }
}

/// The mesh's x label formatter: names for few classes; none for many, which
/// [`turned_class_labels`] draws instead.
fn mesh_class_label(names: &[String], v: &SegmentValue<i32>) -> String {
    if names.len() <= FLAT_LABEL_CLASSES {
        class_label(names, v)
    } else {
        String::new()
    }
}

/// Class names turned 90° and hanging below the axis at pixel positions `at` (column centre,
/// axis y). plotters' mesh anchors turned labels at their middle, which pushes half of each
/// name into the plot, so many-class charts place their own.
fn turned_class_labels(root: &Area, names: &[String], at: &[(i32, i32)]) -> DrawResult {
    if names.len() <= FLAT_LABEL_CLASSES {
        return Ok(());
    }
    let style = font(class_label_pt(names.len()))
        .transform(FontTransform::Rotate90)
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (name, &(x, y)) in names.iter().zip(at) {
        root.draw(&Text::new(name.as_str(), (x, y + 8), style.clone()))?;
    }
    Ok(())
}

fn plot_per_class(path: &Path, eval: &EvalReport) -> Result<()> {
    let names = &eval.class_names;
    let n = names.len();
    let width = SIZE.0.max(120 + 16 * n as u32);
    let overall = eval.acc * 100.0;
    render(path, (width, SIZE.1), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                // A legend would cover bars at 100%: the title explains the line.
                format!("Per-class accuracy (dashed line: overall {overall:.1}%)"),
                font(TITLE_PT),
            )
            .margin(16)
            .x_label_area_size(class_label_area(names, n) + 30)
            .y_label_area_size(70)
            .build_cartesian_2d(class_axis(n), 0.0..105.0f64)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n + 1)
            .label_style(font(LABEL_PT))
            .x_label_formatter(&|v| mesh_class_label(names, v))
            .y_label_formatter(&|y| pct_label(*y, 100.0))
            .x_desc("class")
            .y_desc("accuracy (%)")
            .axis_desc_style(font(AXIS_DESC_PT))
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(BLACK.mix(0.08))
            .draw()?;
        let label_at: Vec<(i32, i32)> = (0..n)
            .map(|c| chart.backend_coord(&(SegmentValue::CenterOf(c as i32), 0.0)))
            .collect();
        turned_class_labels(root, names, &label_at)?;
        chart.draw_series((0..n).map(|c| {
            let acc = eval.per_class_acc[c] * 100.0;
            let x = c as i32;
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(x), 0.0),
                    (SegmentValue::Exact(x + 1), acc),
                ],
                PALETTE[0].filled(),
            );
            bar.set_margin(0, 0, 3, 3);
            bar
        }))?;
        if n <= 20 {
            chart.draw_series((0..n).map(|c| {
                let acc = eval.per_class_acc[c] * 100.0;
                Text::new(
                    format!("{acc:.1}"),
                    (SegmentValue::CenterOf(c as i32), acc + 1.0),
                    font(14)
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                )
            }))?;
        }
        chart.draw_series(DashedLineSeries::new(
            [
                (SegmentValue::Exact(0), overall),
                (SegmentValue::Exact(n as i32), overall),
            ],
            10,
            6,
            VAL_COLOR.stroke_width(2),
        ))?;
        Ok(())
    })
}

/// White → dark blue by the row-normalised share of a cell, on a square-root scale so that
/// confusions of a few percent are still visible next to a 90% diagonal.
fn heat(frac: f64) -> RGBColor {
    let f = frac.clamp(0.0, 1.0).sqrt();
    let lerp = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    RGBColor(lerp(255.0, 8.0), lerp(255.0, 48.0), lerp(255.0, 107.0))
}

fn plot_confusion(path: &Path, eval: &EvalReport) -> Result<()> {
    let names = &eval.class_names;
    let n = names.len();
    let row_pt = if n <= 30 { LABEL_PT } else { 10 };
    // Horizontal row labels need the longest name's width.
    let longest = names.iter().map(|s| s.chars().count()).max().unwrap_or(0) as u32;
    let label_area = 20 + longest * row_pt * 6 / 10;
    let cell = match n {
        0..=12 => 70,
        13..=20 => 50,
        _ => 12,
    };
    let cells = (cell * n as u32).max(400);
    let size = (
        cells + label_area + 120,
        cells + class_label_area(names, n) + 150,
    );
    let show_counts = n <= 20;
    // Row i (true class i) is drawn at y = n-1-i so the first class is on top.
    let flip = |i: usize| (n - 1 - i) as i32;
    render(path, size, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Confusion matrix (colour: share of the true class)",
                font(TITLE_PT - 4),
            )
            .margin(16)
            .x_label_area_size(class_label_area(names, n) + 30)
            .y_label_area_size(label_area + 30)
            .build_cartesian_2d(class_axis(n), class_axis(n))?;
        let row_labels: Vec<String> = (0..n).rev().map(|i| names[i].clone()).collect();
        let y_style: TextStyle = font(row_pt).into();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(n + 1)
            .y_labels(n + 1)
            .x_label_formatter(&|v| mesh_class_label(names, v))
            .y_label_formatter(&|v| class_label(&row_labels, v))
            .x_label_style(font(LABEL_PT))
            .y_label_style(y_style)
            .x_desc("predicted class")
            .y_desc("true class")
            .axis_desc_style(font(AXIS_DESC_PT))
            .draw()?;
        let row_total = |i: usize| eval.confusion[i].iter().sum::<u64>().max(1) as f64;
        chart.draw_series((0..n).flat_map(|i| {
            (0..n).map(move |j| {
                let frac = eval.confusion[i][j] as f64 / row_total(i);
                let (x, y) = (j as i32, flip(i));
                Rectangle::new(
                    [
                        (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1)),
                    ],
                    heat(frac).filled(),
                )
            })
        }))?;
        let label_at: Vec<(i32, i32)> = (0..n)
            .map(|c| {
                chart.backend_coord(&(SegmentValue::CenterOf(c as i32), SegmentValue::Exact(0)))
            })
            .collect();
        turned_class_labels(root, names, &label_at)?;
        if show_counts {
            chart.draw_series((0..n).flat_map(|i| {
                (0..n).map(move |j| {
                    let count = eval.confusion[i][j];
                    let frac = count as f64 / row_total(i);
                    let color = if frac.sqrt() > 0.6 { WHITE } else { BLACK };
                    Text::new(
                        count.to_string(),
                        (
                            SegmentValue::CenterOf(j as i32),
                            SegmentValue::CenterOf(flip(i)),
                        ),
                        font(if n <= 12 { 16 } else { 12 })
                            .color(&color)
                            .pos(Pos::new(HPos::Center, VPos::Center)),
                    )
                })
            }))?;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Continual learning.

/// Heatmap of the accuracy matrix R (row i: after training task i; column j: tested on
/// task j), cells labelled in %.
pub fn plot_acc_matrix(path: &Path, r: &[Vec<f64>], title: &str) -> Result<()> {
    let rows = r.len();
    let cols = r.first().map_or(0, Vec::len);
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let cell = if cols <= 10 { 70 } else { 40 };
    let size = (
        (cell * cols as u32).max(400) + 200,
        (cell * rows as u32).max(300) + 180,
    );
    let row_labels: Vec<String> = (0..rows)
        .rev()
        .map(|i| format!("after {}", i + 1))
        .collect();
    let col_labels: Vec<String> = (0..cols).map(|j| format!("{}", j + 1)).collect();
    render(path, size, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, font(TITLE_PT - 6))
            .margin(16)
            .x_label_area_size(60)
            .y_label_area_size(110)
            .build_cartesian_2d(class_axis(cols), class_axis(rows))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(cols + 1)
            .y_labels(rows + 1)
            .x_label_formatter(&|v| class_label(&col_labels, v))
            .y_label_formatter(&|v| class_label(&row_labels, v))
            .label_style(font(LABEL_PT))
            .x_desc("tested on task")
            .y_desc("trained through task")
            .axis_desc_style(font(AXIS_DESC_PT))
            .draw()?;
        let flip = |i: usize| (rows - 1 - i) as i32;
        chart.draw_series((0..rows).flat_map(|i| {
            (0..cols).map(move |j| {
                let (x, y) = (j as i32, flip(i));
                Rectangle::new(
                    [
                        (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1)),
                    ],
                    heat(r[i][j]).filled(),
                )
            })
        }))?;
        chart.draw_series((0..rows).flat_map(|i| {
            (0..cols).map(move |j| {
                let v = r[i][j];
                Text::new(
                    format!("{:.0}", 100.0 * v),
                    (
                        SegmentValue::CenterOf(j as i32),
                        SegmentValue::CenterOf(flip(i)),
                    ),
                    font(if cols <= 10 { 16 } else { 12 })
                        .color(if v.sqrt() > 0.6 { &WHITE } else { &BLACK })
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                )
            })
        }))?;
        Ok(())
    })
}

/// Accuracy of each task (one line per task) across the sequence of trained tasks.
pub fn plot_task_curves(path: &Path, r: &[Vec<f64>]) -> Result<bool> {
    let cols = r.first().map_or(0, Vec::len);
    let series: Vec<Series> = (0..cols)
        .map(|j| {
            // A task's curve starts where it was trained.
            let points = (j..r.len())
                .map(|i| ((i + 1) as f64, 100.0 * r[i][j]))
                .collect();
            Series::new(
                format!("task {}", j + 1),
                points,
                PALETTE[j % PALETTE.len()],
                Look::Dots,
            )
        })
        .collect();
    let spec = LineChart {
        title: "Accuracy of each task as later tasks are learned",
        x_desc: "tasks trained",
        y_desc: "test accuracy (%)",
        y_fmt: pct_label,
        legend: SeriesLabelPosition::LowerLeft,
        y_include: &[0.0, 100.0],
    };
    line_chart(path, &spec, &series)
}

/// Average accuracy over the tasks seen so far (A_i) of several continual runs.
pub fn plot_continual_overlay(out: &Path, runs: &[(String, Vec<f64>)]) -> Result<bool> {
    let series: Vec<Series> = runs
        .iter()
        .enumerate()
        .map(|(k, (name, a))| {
            let points = a
                .iter()
                .enumerate()
                .map(|(i, v)| ((i + 1) as f64, 100.0 * v))
                .collect();
            Series::new(name.clone(), points, PALETTE[k % PALETTE.len()], Look::Dots)
        })
        .collect();
    let spec = LineChart {
        title: "Average accuracy on the tasks seen so far",
        x_desc: "tasks trained",
        y_desc: "average accuracy (%)",
        y_fmt: pct_label,
        legend: SeriesLabelPosition::MiddleRight,
        y_include: &[0.0, 100.0],
    };
    create_parent(out)?;
    line_chart(out, &spec, &series)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_ok(path: &Path) {
        let bytes = std::fs::read(path).unwrap();
        assert!(
            bytes.len() > 1000,
            "{} is only {} bytes",
            path.display(),
            bytes.len()
        );
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    }

    fn synthetic_run(epochs: usize) -> Vec<MetricRecord> {
        let mut records = Vec::new();
        for e in 1..=epochs {
            for k in 1..=8u64 {
                let step = (e as u64 - 1) * 400 + k * 50;
                let t = step as f64 / 400.0;
                let wobble = ((step / 50) % 3) as f64 * 0.03;
                let lr = 3e-4
                    * (t / 2.0).min(1.0)
                    * (0.5 + 0.5 * (std::f64::consts::PI * t / epochs as f64).cos());
                records.push(MetricRecord::train(
                    e,
                    step,
                    0.4 + 1.9 * (-t / 4.0).exp() + wobble,
                    0.92 - 0.8 * (-t / 4.0).exp() - wobble / 4.0,
                    lr,
                    420.0,
                    t * 30.0,
                ));
            }
            let t = e as f64;
            records.push(MetricRecord::val(
                e,
                e as u64 * 400,
                0.55 + 1.6 * (-t / 4.0).exp(),
                0.86 - 0.7 * (-t / 4.0).exp(),
                t * 30.0 + 3.0,
            ));
        }
        records
    }

    fn cifar10_eval() -> EvalReport {
        let names: Vec<String> = [
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
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut preds = Vec::new();
        let mut labels = Vec::new();
        for c in 0..10 {
            for i in 0..1000 {
                labels.push(c);
                // Cats and dogs confuse each other; others miss ~1 in (5 + c).
                let p = if c == 3 && i % 4 == 0 {
                    5
                } else if c == 5 && i % 5 == 0 {
                    3
                } else if i % (5 + c) == 0 {
                    (c + 1) % 10
                } else {
                    c
                };
                preds.push(p);
            }
        }
        EvalReport::from_predictions(&preds, &labels, names, 0.52).unwrap()
    }

    #[test]
    fn training_plots_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let written = plot_training(dir.path(), &synthetic_run(12), DEFAULT_MA_WINDOW).unwrap();
        let names: Vec<_> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["loss.png", "accuracy.png", "lr.png", "gap.png"]);
        for p in &written {
            png_ok(p);
        }
    }

    #[test]
    fn eval_plots_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let written = plot_eval(dir.path(), &cifar10_eval()).unwrap();
        assert_eq!(written.len(), 2);
        for p in &written {
            png_ok(p);
        }
    }

    #[test]
    fn hundred_class_eval_plots_are_written() {
        let names: Vec<String> = (0..100).map(|i| format!("class_{i:02}")).collect();
        let labels: Vec<usize> = (0..5000).map(|i| i % 100).collect();
        let preds: Vec<usize> = labels
            .iter()
            .enumerate()
            .map(|(i, &l)| if i % 3 == 0 { (l + i) % 100 } else { l })
            .collect();
        let eval = EvalReport::from_predictions(&preds, &labels, names, 1.3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for p in plot_eval(dir.path(), &eval).unwrap() {
            png_ok(&p);
        }
    }

    #[test]
    fn empty_and_degenerate_inputs_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(plot_training(dir.path(), &[], 10).unwrap().is_empty());

        // Train only, no evaluation yet: no gap plot.
        let one = [MetricRecord::train(1, 50, 2.3, 0.1, 1e-4, 400.0, 1.0)];
        let written = plot_training(dir.path(), &one, 10).unwrap();
        assert_eq!(written.len(), 3);
        written.iter().for_each(|p| png_ok(p));

        // NaN loss and a zero window.
        let mut records = synthetic_run(3);
        records[5].loss = f64::NAN;
        records[8].loss = f64::INFINITY;
        plot_training(dir.path(), &records, 0).unwrap();

        // All losses NaN: the loss plot is skipped, accuracy still drawn.
        let nan: Vec<_> = (1..4)
            .map(|i| MetricRecord::train(1, i * 50, f64::NAN, 0.1, 1e-3, 1.0, 1.0))
            .collect();
        let written = plot_training(&dir.path().join("nan"), &nan, 10).unwrap();
        assert!(!written.iter().any(|p| p.ends_with("loss.png")));

        // Val-only records and records without lr.
        let val = [MetricRecord::val(1, 100, 1.0, 0.5, 1.0)];
        plot_training(&dir.path().join("val"), &val, 10).unwrap();

        let empty_eval = EvalReport::from_predictions(&[], &[], vec![], 0.0).unwrap();
        assert!(plot_eval(dir.path(), &empty_eval).unwrap().is_empty());
        let one_class = EvalReport::from_predictions(&[0], &[0], vec!["only".into()], 0.0).unwrap();
        assert_eq!(plot_eval(dir.path(), &one_class).unwrap().len(), 2);
    }

    #[test]
    fn overlay_of_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut other = synthetic_run(8);
        for r in &mut other {
            r.acc *= 0.9;
        }
        let out = dir.path().join("compare").join("val_acc.png");
        plot_overlay(
            &out,
            &[
                ("vit-tiny".into(), synthetic_run(12)),
                ("vit-small".into(), other),
            ],
        )
        .unwrap();
        png_ok(&out);
        let empty = dir.path().join("empty.png");
        plot_overlay(&empty, &[("none".into(), vec![])]).unwrap();
        png_ok(&empty);
    }

    #[test]
    fn moving_average_is_trailing_and_skips_nan() {
        let ma = moving_average(&[1.0, 3.0, f64::NAN, 5.0], 2);
        assert_eq!(ma[0], 1.0);
        assert_eq!(ma[1], 2.0);
        assert_eq!(ma[2], 3.0);
        assert_eq!(ma[3], 5.0);
    }
}
