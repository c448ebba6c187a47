//! The line chart all curve plots share: [`Series`] (points, colour, how they are drawn),
//! [`LineChart`] (title, axes, legend) and [`line_chart`], which pads the ranges, draws the
//! mesh, the series and the legend, and skips a chart without points. Non-finite points are
//! left out.

use std::path::Path;

use plotters::prelude::*;

use super::canvas::{AXIS_DESC_PT, DrawResult, LABEL_PT, PALETTE, SIZE, TITLE_PT, font, render};
use crate::error::Result;

/// How a series is drawn.
#[derive(Clone, Copy)]
pub(super) enum Look {
    /// Thin and translucent: raw, noisy train points behind their moving average.
    Faint,
    Line,
    /// Line with a dot at each point: sparse series such as evaluations.
    Dots,
    /// Dashed reference line.
    Dashed,
}

pub(super) struct Series {
    label: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    look: Look,
}

impl Series {
    pub(super) fn new(
        label: impl Into<String>,
        points: Vec<(f64, f64)>,
        color: RGBColor,
        look: Look,
    ) -> Self {
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

pub(super) struct LineChart<'a> {
    pub(super) title: &'a str,
    pub(super) x_desc: &'a str,
    pub(super) y_desc: &'a str,
    /// Formats a y tick label given the axis span (to pick the number of decimals).
    pub(super) y_fmt: fn(f64, f64) -> String,
    pub(super) legend: SeriesLabelPosition,
    /// Values the y range must include (0 for accuracy, the gap limit, ...).
    pub(super) y_include: &'a [f64],
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
pub(super) fn line_chart(path: &Path, spec: &LineChart, series: &[Series]) -> Result<bool> {
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

/// One series per named line, in palette order.
pub(super) fn named_series<'a>(
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
