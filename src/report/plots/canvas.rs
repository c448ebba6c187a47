//! The canvas every plot draws on, and its look: the embedded font, sizes, palette, the
//! heat-map colour scale, tick labels and the class (category) axis; a drawing is rendered
//! into an in-memory RGB buffer and written as PNG.

use std::error::Error as StdError;
use std::path::Path;
use std::sync::OnceLock;

use image::{ExtendedColorType, ImageEncoder, codecs::png::PngEncoder};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{SegmentValue, SegmentedCoord};
use plotters::coord::types::RangedCoordi32;
use plotters::prelude::*;

use crate::error::{Error, Result};

const FONT_BYTES: &[u8] = include_bytes!("../../../assets/DejaVuSans.ttf");
const FONT: &str = "sans-serif";

pub(super) const SIZE: (u32, u32) = (1000, 600);
pub(super) const TITLE_PT: u32 = 26;
// Even sizes only: plotters 0.3.7's ab_glyph renderer truncates half a pixel when placing
// glyphs of odd sizes, which lifts "." off the baseline.
pub(super) const AXIS_DESC_PT: u32 = 18;
pub(super) const LABEL_PT: u32 = 16;

/// Matplotlib's "tab10": distinct, colour-blind-friendlier than plotters' primaries.
pub(super) const PALETTE: [RGBColor; 10] = [
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
pub(super) const TRAIN_COLOR: RGBColor = PALETTE[0];
pub(super) const VAL_COLOR: RGBColor = PALETTE[3];

pub(super) type DrawResult = std::result::Result<(), Box<dyn StdError>>;
pub(super) type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

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
pub(super) fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&Area) -> DrawResult,
) -> Result<()> {
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

pub(super) fn font(pt: u32) -> FontDesc<'static> {
    (FONT, pt).into_font()
}

pub(super) fn create_parent(out: &Path) -> Result<()> {
    match out.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating", e)),
        None => Ok(()),
    }
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

pub(super) fn pct_label(y: f64, span: f64) -> String {
    format!("{y:.*}%", decimals(span))
}

pub(super) fn plain_label(y: f64, span: f64) -> String {
    format!("{y:.*}", decimals(span))
}

pub(super) fn sci_label(y: f64, _span: f64) -> String {
    if y == 0.0 {
        "0".into()
    } else {
        format!("{y:.1e}")
    }
}

/// Class-name label formatter for a segmented class axis.
pub(super) fn class_label(names: &[String], v: &SegmentValue<i32>) -> String {
    match v {
        SegmentValue::CenterOf(i) if *i >= 0 => names.get(*i as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    }
}

/// One segment per class. plotters' integer ranges include their end, so `0..n-1` has n
/// segments (a single class gets a spare empty one rather than a zero-width range).
pub(super) fn class_axis(n: usize) -> SegmentedCoord<RangedCoordi32> {
    (0..(n as i32 - 1).max(1)).into_segmented()
}

/// White → dark blue by the row-normalised share of a cell, on a square-root scale so that
/// confusions of a few percent are still visible next to a 90% diagonal.
pub(super) fn heat(frac: f64) -> RGBColor {
    let f = frac.clamp(0.0, 1.0).sqrt();
    let lerp = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    RGBColor(lerp(255.0, 8.0), lerp(255.0, 48.0), lerp(255.0, 107.0))
}
