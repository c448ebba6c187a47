//! timm's RandAugment (`timm.data.auto_augment.rand_augment_transform`).
//!
//! Per image: choose `n` ops uniformly *with* replacement (`np.random.choice(ops, n)`), then
//! for each, in order: skip it with probability `1 - p`; draw the magnitude (`m`, plus
//! Gaussian noise of std `mstd` when `mstd > 0`, or uniform in `[0, m]` when `mstd > 100`),
//! clip it to `[0, mmax]` (`mmax` defaults to 10); map it to the op's argument with timm's
//! `*_level_to_arg`; for geometric ops pick the resampling filter; apply the op.
//!
//! Level-to-argument formulas (level `m` in `[0, 10]`, `±` = sign flipped with probability
//! 1/2, `int` truncates):
//!
//! | op | argument |
//! |---|---|
//! | Rotate | ±(m/10 · 30) degrees |
//! | ShearX / ShearY | ±(m/10 · 0.3) |
//! | TranslateXRel / TranslateYRel | ±(m/10 · translate_pct) · width (height), pct 0.45 |
//! | Posterize | bits kept = int(m/10 · 4) (so m=10 keeps 4 bits, m=0 gives black) |
//! | PosterizeIncreasing | bits kept = 4 - int(m/10 · 4) |
//! | Solarize | threshold = int(m/10 · 256) |
//! | SolarizeIncreasing | threshold = 256 - int(m/10 · 256) |
//! | SolarizeAdd | add int(m/10 · 110) to values < 128 |
//! | Color / Contrast / Brightness / Sharpness | factor = m/10 · 1.8 + 0.1 |
//! | ...Increasing | factor = max(0.1, 1 ± m/10 · 0.9) |
//! | AutoContrast / Equalize / Invert | none |
//!
//! The non-increasing `Posterize` is timm's `_posterize_level_to_arg` (TF EfficientNet), not
//! `PosterizeOriginal` (`int(m/10 · 4) + 4`), because that is what `_RAND_TRANSFORMS` uses.

use super::image::{Image, Interp};
use super::pil::{self, Enhance};
use super::transforms::rotate_into;
use crate::rng::Rng;

/// The ops of timm's RandAugment transform lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    AutoContrast,
    Equalize,
    Invert,
    Rotate,
    Posterize,
    PosterizeIncreasing,
    Solarize,
    SolarizeIncreasing,
    SolarizeAdd,
    Color,
    ColorIncreasing,
    Contrast,
    ContrastIncreasing,
    Brightness,
    BrightnessIncreasing,
    Sharpness,
    SharpnessIncreasing,
    ShearX,
    ShearY,
    TranslateXRel,
    TranslateYRel,
}

/// timm `_RAND_TRANSFORMS`.
pub const RAND_TRANSFORMS: [OpKind; 15] = [
    OpKind::AutoContrast,
    OpKind::Equalize,
    OpKind::Invert,
    OpKind::Rotate,
    OpKind::Posterize,
    OpKind::Solarize,
    OpKind::SolarizeAdd,
    OpKind::Color,
    OpKind::Contrast,
    OpKind::Brightness,
    OpKind::Sharpness,
    OpKind::ShearX,
    OpKind::ShearY,
    OpKind::TranslateXRel,
    OpKind::TranslateYRel,
];

/// timm `_RAND_INCREASING_TRANSFORMS` (selected by `inc1`).
pub const RAND_INCREASING_TRANSFORMS: [OpKind; 15] = [
    OpKind::AutoContrast,
    OpKind::Equalize,
    OpKind::Invert,
    OpKind::Rotate,
    OpKind::PosterizeIncreasing,
    OpKind::SolarizeIncreasing,
    OpKind::SolarizeAdd,
    OpKind::ColorIncreasing,
    OpKind::ContrastIncreasing,
    OpKind::BrightnessIncreasing,
    OpKind::SharpnessIncreasing,
    OpKind::ShearX,
    OpKind::ShearY,
    OpKind::TranslateXRel,
    OpKind::TranslateYRel,
];

/// timm `_RAND_WEIGHTED_0` (selected by `tweights`): ops and their choice weights.
const RAND_WEIGHTED_0: [(OpKind, f64); 15] = [
    (OpKind::Rotate, 3.0),
    (OpKind::ShearX, 2.0),
    (OpKind::ShearY, 2.0),
    (OpKind::TranslateXRel, 1.0),
    (OpKind::TranslateYRel, 1.0),
    (OpKind::ColorIncreasing, 0.25),
    (OpKind::SharpnessIncreasing, 0.25),
    (OpKind::AutoContrast, 0.25),
    (OpKind::SolarizeIncreasing, 0.05),
    (OpKind::SolarizeAdd, 0.05),
    (OpKind::ContrastIncreasing, 0.05),
    (OpKind::BrightnessIncreasing, 0.05),
    (OpKind::Equalize, 0.05),
    (OpKind::PosterizeIncreasing, 0.05),
    (OpKind::Invert, 0.05),
];

/// timm's `_LEVEL_DENOM`: magnitudes are on a 0..10 scale.
const LEVEL_DENOM: f64 = 10.0;

/// Resampling filter of the geometric ops (Rotate, Shear, Translate), PIL semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    Fixed(Interp),
    /// timm's default when no interpolation hparam is given: bilinear or bicubic, chosen
    /// per op call.
    RandomBilinearBicubic,
}

/// A parsed RandAugment policy. Fields are public so a caller can adjust what the policy
/// string cannot express (fill colour, resampling, translate fraction).
#[derive(Clone, Debug, PartialEq)]
pub struct RandAugment {
    /// Ops chosen per image (`n`, default 2).
    pub num_ops: usize,
    /// Magnitude on the 0..10 scale (`m`, default 10).
    pub magnitude: f64,
    /// Std of the Gaussian noise added to the magnitude per op (`mstd`, default 0); infinity
    /// means uniform in `[0, magnitude]` (timm maps `mstd > 100` to that).
    pub magnitude_std: f64,
    /// Upper clip of the noisy magnitude (`mmax`, default 10).
    pub magnitude_max: f64,
    /// Whether the "increasing" op variants are used (`inc1`).
    pub increasing: bool,
    /// Probability each chosen op is applied (`p`, default 0.5).
    pub prob: f64,
    /// The op list ops are drawn from.
    pub ops: Vec<OpKind>,
    /// Choice weights, one per op (`tweights`): then ops are drawn *without* replacement,
    /// as timm does for weighted choice.
    pub choice_weights: Option<Vec<f64>>,
    /// Fill of pixels uncovered by geometric ops on RGB images. timm's `create_transform`
    /// passes the ImageNet mean in u8, (124, 116, 104); see `with_fill_from_mean`.
    pub fill: [u8; 3],
    /// Fill for gray images.
    pub fill_gray: u8,
    pub resample: Resample,
    /// Translation as a fraction of the image side at magnitude 10 (timm `translate_pct`).
    pub translate_pct: f64,
}

/// What happened to one of the `n` op choices of an image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpTrace {
    pub kind: OpKind,
    /// False when the op lost its `p` coin flip (nothing else was drawn for it then).
    pub applied: bool,
    /// The magnitude after noise and clipping.
    pub magnitude: Option<f64>,
    /// The op's argument (degrees, shear, pixels, bits, threshold, addend or factor); `None`
    /// for argument-free ops.
    pub arg: Option<f64>,
}

fn parse_num<T: std::str::FromStr>(section: &str, val: &str) -> Result<T, String> {
    val.parse::<T>()
        .map_err(|_| format!("bad value '{val}' in RandAugment section '{section}'"))
}

impl RandAugment {
    /// Parses a timm policy string: `rand` followed by `-`-separated sections `m<int>`,
    /// `n<int>`, `mstd<float>`, `mmax<int>`, `inc<0|1>`, `p<float>` and `tweights`, in any
    /// order (current timm's grammar).
    ///
    /// Stricter than timm on purpose: a section without a value and a repeated section are
    /// errors (timm skips the first and lets the first `mstd`/`mmax` but the last `m`/`n`
    /// win), and transform sets other than `weights` are rejected (`3a`/`3aw` need ops not
    /// implemented here; timm falls back to the default list for unknown names).
    pub fn parse(policy: &str) -> Result<RandAugment, String> {
        let mut sections = policy.split('-');
        let head = sections.next().unwrap_or("");
        if head != "rand" {
            return Err(format!(
                "RandAugment policy '{policy}' must start with 'rand', not '{head}'"
            ));
        }
        let mut ra = RandAugment {
            num_ops: 2,
            magnitude: LEVEL_DENOM,
            magnitude_std: 0.0,
            magnitude_max: LEVEL_DENOM,
            increasing: false,
            prob: 0.5,
            ops: RAND_TRANSFORMS.to_vec(),
            choice_weights: None,
            fill: [124, 116, 104],
            fill_gray: 128,
            resample: Resample::RandomBilinearBicubic,
            translate_pct: 0.45,
        };
        let mut seen: Vec<&str> = Vec::new();
        let mut weighted = false;
        for section in sections {
            if let Some(set) = section.strip_prefix('t') {
                if seen.contains(&"t") {
                    return Err(format!("RandAugment section 't' repeated in '{policy}'"));
                }
                seen.push("t");
                if set != "weights" {
                    return Err(format!(
                        "RandAugment transform set '{section}' in '{policy}' is not supported \
                         (only 'tweights')"
                    ));
                }
                weighted = true;
                continue;
            }
            // timm: re.split(r'(\d.*)', section) -> key before the first digit, value after.
            let Some(split) = section.find(|ch: char| ch.is_ascii_digit()) else {
                return Err(format!(
                    "RandAugment section '{section}' in '{policy}' has no numeric value"
                ));
            };
            let (key, val) = section.split_at(split);
            if seen.contains(&key) {
                return Err(format!(
                    "RandAugment section '{key}' repeated in '{policy}'"
                ));
            }
            seen.push(key);
            match key {
                "m" => ra.magnitude = parse_num::<u32>(section, val)? as f64,
                "n" => ra.num_ops = parse_num::<usize>(section, val)?,
                "mstd" => {
                    let v: f64 = parse_num(section, val)?;
                    if !v.is_finite() {
                        return Err(format!(
                            "bad value '{val}' in RandAugment section '{section}'"
                        ));
                    }
                    ra.magnitude_std = if v > 100.0 { f64::INFINITY } else { v };
                }
                "mmax" => {
                    let v = parse_num::<u32>(section, val)?;
                    // timm: `magnitude_max or _LEVEL_DENOM`, so 0 means the default.
                    ra.magnitude_max = if v == 0 { LEVEL_DENOM } else { v as f64 };
                }
                "inc" => ra.increasing = parse_num::<u32>(section, val)? != 0,
                "p" => {
                    let p: f64 = parse_num(section, val)?;
                    if !(0.0..=1.0).contains(&p) {
                        return Err(format!(
                            "RandAugment section '{section}': probability must be in [0, 1]"
                        ));
                    }
                    ra.prob = p;
                }
                _ => {
                    return Err(format!(
                        "unknown RandAugment section '{section}' in '{policy}' \
                         (expected m, n, mstd, mmax, inc, p or tweights)"
                    ));
                }
            }
        }
        if weighted {
            ra.ops = RAND_WEIGHTED_0.iter().map(|&(k, _)| k).collect();
            ra.choice_weights = Some(RAND_WEIGHTED_0.iter().map(|&(_, w)| w).collect());
            if ra.num_ops > ra.ops.len() {
                return Err(format!(
                    "RandAugment '{policy}': n{} exceeds the {} ops a weighted choice can pick \
                     without replacement",
                    ra.num_ops,
                    ra.ops.len()
                ));
            }
        } else if ra.increasing {
            ra.ops = RAND_INCREASING_TRANSFORMS.to_vec();
        }
        Ok(ra)
    }

    /// Sets the geometric fill from a normalization mean, as timm's `create_transform`
    /// does: `min(255, round(255 * mean))` per channel.
    pub fn with_fill_from_mean(mut self, mean: &[f32]) -> Self {
        let to_u8 = |m: f32| (255.0 * m as f64).round_ties_even().clamp(0.0, 255.0) as u8;
        if mean.len() >= 3 {
            self.fill = [to_u8(mean[0]), to_u8(mean[1]), to_u8(mean[2])];
        }
        if let Some(&m) = mean.first() {
            self.fill_gray = to_u8(m);
        }
        self
    }

    pub fn with_resample(mut self, resample: Resample) -> Self {
        self.resample = resample;
        self
    }

    /// The `n` op choices: uniform with replacement, or weighted without replacement.
    fn choose(&self, rng: &mut Rng) -> Vec<OpKind> {
        if self.ops.is_empty() {
            return Vec::new();
        }
        match &self.choice_weights {
            None => (0..self.num_ops)
                .map(|_| self.ops[rng.below(self.ops.len())])
                .collect(),
            Some(w) => {
                let mut w: Vec<f64> = w.iter().take(self.ops.len()).copied().collect();
                let mut chosen = Vec::with_capacity(self.num_ops);
                for _ in 0..self.num_ops {
                    let total: f64 = w.iter().sum();
                    if total <= 0.0 {
                        break;
                    }
                    let mut u = rng.f64() * total;
                    let mut pick = w.iter().rposition(|&x| x > 0.0).unwrap_or(0);
                    for (i, &x) in w.iter().enumerate() {
                        if x > 0.0 && u < x {
                            pick = i;
                            break;
                        }
                        u -= x;
                    }
                    chosen.push(self.ops[pick]);
                    w[pick] = 0.0;
                }
                chosen
            }
        }
    }

    /// The magnitude of one op application (timm `AugmentOp.__call__`).
    fn sample_magnitude(&self, rng: &mut Rng) -> f64 {
        let mut m = self.magnitude;
        if self.magnitude_std > 0.0 {
            m = if self.magnitude_std.is_infinite() {
                rng.uniform(0.0, m)
            } else {
                m + self.magnitude_std * rng.normal()
            };
        }
        m.min(self.magnitude_max).max(0.0)
    }

    fn interp(&self, rng: &mut Rng) -> Interp {
        match self.resample {
            Resample::Fixed(i) => i,
            Resample::RandomBilinearBicubic => [Interp::Bilinear, Interp::Bicubic][rng.below(2)],
        }
    }

    /// Applies the policy to `img`.
    pub fn apply(&self, img: &Image, rng: &mut Rng) -> Image {
        let (mut out, mut tmp) = (Image::default(), Image::default());
        self.apply_into(img, rng, &mut out, &mut tmp, None);
        out
    }

    /// Applies the policy and reports the `n` op choices (applied or not).
    pub fn apply_traced(&self, img: &Image, rng: &mut Rng) -> (Image, Vec<OpTrace>) {
        let (mut out, mut tmp) = (Image::default(), Image::default());
        let mut trace = Vec::with_capacity(self.num_ops);
        self.apply_into(img, rng, &mut out, &mut tmp, Some(&mut trace));
        (out, trace)
    }

    /// Applies the policy from `img` into `out`; `tmp` is scratch space.
    pub fn apply_into(
        &self,
        img: &Image,
        rng: &mut Rng,
        out: &mut Image,
        tmp: &mut Image,
        mut trace: Option<&mut Vec<OpTrace>>,
    ) {
        out.copy_from(img);
        for kind in self.choose(rng) {
            // timm: `if self.prob < 1.0 and random.random() > self.prob: return img`
            if self.prob < 1.0 && rng.f64() > self.prob {
                if let Some(t) = trace.as_deref_mut() {
                    t.push(OpTrace {
                        kind,
                        applied: false,
                        magnitude: None,
                        arg: None,
                    });
                }
                continue;
            }
            let m = self.sample_magnitude(rng);
            let arg = self.apply_op(kind, m, out, tmp, rng);
            std::mem::swap(out, tmp);
            if let Some(t) = trace.as_deref_mut() {
                t.push(OpTrace {
                    kind,
                    applied: true,
                    magnitude: Some(m),
                    arg,
                });
            }
        }
    }

    /// One op at level `m` from `src` into `dst`; returns its argument.
    fn apply_op(
        &self,
        kind: OpKind,
        m: f64,
        src: &Image,
        dst: &mut Image,
        rng: &mut Rng,
    ) -> Option<f64> {
        use OpKind::*;
        let level = m / LEVEL_DENOM;
        // timm `_randomly_negate`: `-v if random.random() > 0.5 else v`.
        let mut negate = |v: f64| if rng.f64() > 0.5 { -v } else { v };
        match kind {
            AutoContrast => {
                pil::apply_luts_into(src, &pil::autocontrast_luts(src), dst);
                None
            }
            Equalize => {
                pil::apply_luts_into(src, &pil::equalize_luts(src), dst);
                None
            }
            Invert => {
                pil::apply_lut_into(src, &pil::invert_lut(), dst);
                None
            }
            Posterize | PosterizeIncreasing => {
                let b = (level * 4.0) as i64;
                let bits = if kind == Posterize { b } else { 4 - b };
                // timm skips posterize for bits >= 8; PIL's mask makes bits <= 0 black.
                pil::apply_lut_into(src, &pil::posterize_lut(bits.clamp(0, 8) as u32), dst);
                Some(bits as f64)
            }
            Solarize | SolarizeIncreasing => {
                let t = (level * 256.0) as i64;
                let thresh = if kind == Solarize { t } else { 256 - t };
                pil::apply_lut_into(src, &pil::solarize_lut(thresh), dst);
                Some(thresh as f64)
            }
            SolarizeAdd => {
                let add = (level * 110.0) as i64;
                pil::apply_lut_into(src, &pil::solarize_add_lut(add, 128), dst);
                Some(add as f64)
            }
            Color | Contrast | Brightness | Sharpness => {
                let factor = level * 1.8 + 0.1;
                pil::enhance_into(src, enhance_of(kind), factor, dst);
                Some(factor)
            }
            ColorIncreasing | ContrastIncreasing | BrightnessIncreasing | SharpnessIncreasing => {
                let factor = (1.0 + negate(level * 0.9)).max(0.1);
                pil::enhance_into(src, enhance_of(kind), factor, dst);
                Some(factor)
            }
            Rotate => {
                let degrees = negate(level * 30.0);
                let interp = self.interp(rng);
                rotate_into(src, degrees, interp, self.fill_for(src), dst);
                Some(degrees)
            }
            ShearX | ShearY => {
                let shear = negate(level * 0.3);
                let interp = self.interp(rng);
                let mat = if kind == ShearX {
                    [1.0, shear, 0.0, 0.0, 1.0, 0.0]
                } else {
                    [1.0, 0.0, 0.0, shear, 1.0, 0.0]
                };
                pil::affine_into(src, mat, interp, &self.fill_for(src), dst);
                Some(shear)
            }
            TranslateXRel | TranslateYRel => {
                let pct = negate(level * self.translate_pct);
                let interp = self.interp(rng);
                let (mat, pixels) = if kind == TranslateXRel {
                    let px = pct * src.width as f64;
                    ([1.0, 0.0, px, 0.0, 1.0, 0.0], px)
                } else {
                    let px = pct * src.height as f64;
                    ([1.0, 0.0, 0.0, 0.0, 1.0, px], px)
                };
                pil::affine_into(src, mat, interp, &self.fill_for(src), dst);
                Some(pixels)
            }
        }
    }

    fn fill_for(&self, img: &Image) -> [u8; 3] {
        if img.channels == 3 {
            self.fill
        } else {
            [self.fill_gray; 3]
        }
    }
}

fn enhance_of(kind: OpKind) -> Enhance {
    use OpKind::*;
    match kind {
        Color | ColorIncreasing => Enhance::Color,
        Contrast | ContrastIncreasing => Enhance::Contrast,
        Brightness | BrightnessIncreasing => Enhance::Brightness,
        _ => Enhance::Sharpness,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;

    fn rng(i: u64) -> Rng {
        Rng::at(99, stream::AUGMENT, &[3, i])
    }

    fn natural(h: usize, w: usize, c: usize) -> Image {
        // A smooth gradient plus texture: every op has something to change.
        let mut img = Image::new(h, w, c);
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    let v = 40 + (y * 150 / h) + (x * 7 + ch * 13) % 50;
                    img.set(y, x, ch, v as u8);
                }
            }
        }
        img
    }

    #[test]
    fn parse_standard_policies() {
        let ra = RandAugment::parse("rand-m9-mstd0.5-inc1").unwrap();
        assert_eq!(ra.num_ops, 2);
        assert_eq!(ra.magnitude, 9.0);
        assert_eq!(ra.magnitude_std, 0.5);
        assert!(ra.increasing);
        assert_eq!(ra.prob, 0.5);
        assert_eq!(ra.magnitude_max, 10.0);
        assert_eq!(ra.ops, RAND_INCREASING_TRANSFORMS.to_vec());

        let ra = RandAugment::parse("rand-m9-n3-mstd0.5").unwrap();
        assert_eq!((ra.num_ops, ra.magnitude, ra.increasing), (3, 9.0, false));
        assert_eq!(ra.ops, RAND_TRANSFORMS.to_vec());

        let ra = RandAugment::parse("rand-m7-n2").unwrap();
        assert_eq!((ra.num_ops, ra.magnitude, ra.magnitude_std), (2, 7.0, 0.0));

        let ra = RandAugment::parse("rand").unwrap();
        assert_eq!((ra.num_ops, ra.magnitude), (2, 10.0));

        let ra = RandAugment::parse("rand-mstd101-mmax15-p0.8-inc0").unwrap();
        assert!(ra.magnitude_std.is_infinite());
        assert_eq!(ra.magnitude_max, 15.0);
        assert!(ra.choice_weights.is_none() && !ra.increasing);
        assert_eq!(ra.prob, 0.8);

        let ra = RandAugment::parse("rand-m9-tweights").unwrap();
        assert_eq!(ra.ops.len(), 15);
        assert_eq!(ra.choice_weights.as_ref().unwrap()[0], 3.0);
    }

    #[test]
    fn bad_policies_are_rejected_naming_the_part() {
        for (bad, part) in [
            ("", "''"),
            ("auto-m9", "'auto'"),
            ("rand-m9-x3", "'x3'"),
            ("rand-mfoo", "'mfoo'"),
            ("rand-m9.5", "'9.5'"),
            ("rand-n2-n3", "'n'"),
            ("rand-p1.5", "'p1.5'"),
            ("rand-w0", "'w0'"),
            ("rand-m9-", "''"),
            ("rand-t3a", "'t3a'"),
            ("rand-n20-tweights", "n20"),
        ] {
            let err = RandAugment::parse(bad).expect_err(bad);
            assert!(err.contains(part), "{bad}: {err}");
        }
    }

    #[test]
    fn applies_exactly_n_choices_with_probability_p() {
        let img = natural(16, 16, 3);
        let ra = RandAugment::parse("rand-m9-n3-mstd0.5-inc1").unwrap();
        let (mut applied, mut total) = (0, 0);
        for i in 0..600 {
            let (out, trace) = ra.apply_traced(&img, &mut rng(i));
            assert_eq!(trace.len(), 3);
            assert_eq!((out.height, out.width, out.channels), (16, 16, 3));
            for t in &trace {
                assert!(ra.ops.contains(&t.kind));
                total += 1;
                if t.applied {
                    applied += 1;
                    let m = t.magnitude.unwrap();
                    assert!((0.0..=10.0).contains(&m));
                }
            }
            if trace.iter().all(|t| !t.applied) {
                assert_eq!(out, img);
            }
        }
        let rate = applied as f64 / total as f64;
        assert!((rate - 0.5).abs() < 0.05, "apply rate {rate}");
        // Same address, same result.
        assert_eq!(ra.apply(&img, &mut rng(5)), ra.apply(&img, &mut rng(5)));
    }

    #[test]
    fn weighted_choice_is_without_replacement_and_follows_weights() {
        let ra = RandAugment::parse("rand-n5-tweights").unwrap();
        let (mut rotate, mut invert) = (0, 0);
        for i in 0..2000 {
            let chosen = ra.choose(&mut rng(i));
            assert_eq!(chosen.len(), 5);
            for (k, a) in chosen.iter().enumerate() {
                assert!(!chosen[k + 1..].contains(a), "{chosen:?}");
            }
            rotate += chosen.contains(&OpKind::Rotate) as usize;
            invert += chosen.contains(&OpKind::Invert) as usize;
        }
        // Rotate has weight 3 of 11.3 and is nearly always among 5 picks; Invert (0.05) rarely.
        assert!(rotate > 1500 && invert < 300, "{rotate} {invert}");
    }

    #[test]
    fn every_op_keeps_shape_and_changes_something() {
        let mut ra = RandAugment::parse("rand-m9").unwrap();
        // Large enough for Pillow's equalize to have a non-zero step (>= 512 pixels).
        for img in [natural(24, 24, 3), natural(24, 24, 1)] {
            for kind in RAND_TRANSFORMS.iter().chain(&RAND_INCREASING_TRANSFORMS) {
                for resample in [
                    Resample::Fixed(Interp::Nearest),
                    Resample::Fixed(Interp::Bilinear),
                    Resample::Fixed(Interp::Bicubic),
                    Resample::RandomBilinearBicubic,
                ] {
                    ra.resample = resample;
                    let mut out = Image::default();
                    let arg = ra.apply_op(*kind, 9.0, &img, &mut out, &mut rng(1));
                    assert_eq!(
                        (out.height, out.width, out.channels, out.data.len()),
                        (img.height, img.width, img.channels, img.data.len()),
                        "{kind:?}"
                    );
                    // Colour is a no-op on gray images; everything else acts at m=9.
                    if !(img.channels == 1
                        && matches!(kind, OpKind::Color | OpKind::ColorIncreasing))
                    {
                        assert_ne!(out, img, "{kind:?} {resample:?} c={}", img.channels);
                    }
                    if matches!(
                        kind,
                        OpKind::Rotate | OpKind::ShearX | OpKind::TranslateYRel
                    ) {
                        assert!(arg.is_some());
                    }
                }
            }
        }
    }

    #[test]
    fn invert_twice_is_identity() {
        let ra = RandAugment::parse("rand").unwrap();
        let img = natural(9, 7, 3);
        let (mut a, mut b) = (Image::default(), Image::default());
        ra.apply_op(OpKind::Invert, 5.0, &img, &mut a, &mut rng(0));
        assert_ne!(a, img);
        ra.apply_op(OpKind::Invert, 5.0, &a, &mut b, &mut rng(0));
        assert_eq!(b, img);
    }

    #[test]
    fn level_to_arg_formulas() {
        let ra = RandAugment::parse("rand").unwrap();
        let img = natural(8, 8, 3);
        let mut out = Image::default();
        let mut arg = |k: OpKind, m: f64| ra.apply_op(k, m, &img, &mut out, &mut rng(0)).unwrap();
        assert_eq!(arg(OpKind::Posterize, 9.0), 3.0);
        assert_eq!(arg(OpKind::PosterizeIncreasing, 9.0), 1.0);
        assert_eq!(arg(OpKind::Solarize, 9.0), 230.0);
        assert_eq!(arg(OpKind::SolarizeIncreasing, 9.0), 26.0);
        assert_eq!(arg(OpKind::SolarizeAdd, 9.0), 99.0);
        assert!((arg(OpKind::Sharpness, 9.0) - 1.72).abs() < 1e-12);
        let f = arg(OpKind::SharpnessIncreasing, 9.0);
        assert!((f - 1.81).abs() < 1e-12 || (f - 0.19).abs() < 1e-12, "{f}");
        assert!((arg(OpKind::Rotate, 9.0).abs() - 27.0).abs() < 1e-12);
        assert!((arg(OpKind::ShearX, 10.0).abs() - 0.3).abs() < 1e-12);
        assert!((arg(OpKind::TranslateXRel, 10.0).abs() - 0.45 * 8.0).abs() < 1e-12);
    }

    #[test]
    fn magnitude_noise_is_clipped() {
        let ra = RandAugment::parse("rand-m9-mstd3").unwrap();
        let ms: Vec<f64> = (0..2000)
            .map(|i| ra.sample_magnitude(&mut rng(i)))
            .collect();
        assert!(ms.iter().all(|m| (0.0..=10.0).contains(m)));
        assert!(ms.contains(&10.0) && ms.iter().any(|&m| m < 6.0));
        let fixed = RandAugment::parse("rand-m7").unwrap();
        assert_eq!(fixed.sample_magnitude(&mut rng(0)), 7.0);
        let uni = RandAugment::parse("rand-m8-mstd200").unwrap();
        assert!((0..500).all(|i| (0.0..8.0).contains(&uni.sample_magnitude(&mut rng(i)))));
    }

    #[test]
    fn fill_follows_the_mean() {
        let ra = RandAugment::parse("rand")
            .unwrap()
            .with_fill_from_mean(&[0.4914, 0.4822, 0.4465]);
        assert_eq!(ra.fill, [125, 123, 114]);
        assert_eq!(ra.fill_gray, 125);
        let ra = RandAugment::parse("rand").unwrap();
        assert_eq!(ra.fill, [124, 116, 104]);
        // A full translation uncovers everything: all fill.
        let mut out = Image::default();
        let img = natural(8, 8, 3);
        let mut r = rng(0);
        let mut ra = ra.with_resample(Resample::Fixed(Interp::Nearest));
        ra.translate_pct = 1.0;
        ra.apply_op(OpKind::TranslateXRel, 10.0, &img, &mut out, &mut r);
        assert_eq!(out, Image::filled(8, 8, &[124, 116, 104]));
    }
}
