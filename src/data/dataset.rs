//! The in-memory dataset every reader produces: u8 images, HWC, one label each.

/// A whole split held in memory as raw bytes. CIFAR-10 train is 150 MB this way; the
/// transforms work on u8 and only the batch is turned into floats.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// `len * height * width * channels` bytes, each image HWC-interleaved, row-major.
    pub images: Vec<u8>,
    /// One class index per image, `< class_names.len()`.
    pub labels: Vec<u16>,
    pub height: usize,
    pub width: usize,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    pub class_names: Vec<String>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image_bytes(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// The HWC bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_bytes();
        &self.images[i * n..(i + 1) * n]
    }

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The first `n` images (or all, if fewer).
    pub fn truncate(mut self, n: usize) -> Self {
        if n < self.len() {
            self.images.truncate(n * self.image_bytes());
            self.labels.truncate(n);
        }
        self
    }

    /// The images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Self {
        let mut images = Vec::with_capacity(indices.len() * self.image_bytes());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Dataset {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            height: self.height,
            width: self.width,
            channels: self.channels,
            class_names: self.class_names.clone(),
        }
    }

    /// The images of `classes` only, relabelled `classes[k]` → `k` (class names follow).
    pub fn select_classes(&self, classes: &[usize]) -> Self {
        let mut new_label = vec![u16::MAX; self.num_classes()];
        for (k, &c) in classes.iter().enumerate() {
            new_label[c] = k as u16;
        }
        let keep: Vec<usize> = (0..self.len())
            .filter(|&i| new_label[self.labels[i] as usize] != u16::MAX)
            .collect();
        let mut d = self.subset(&keep);
        for l in &mut d.labels {
            *l = new_label[*l as usize];
        }
        d.class_names = classes
            .iter()
            .map(|&c| self.class_names[c].clone())
            .collect();
        d
    }
}

/// Parse a class list such as `0-4` or `5,6,7,8,9` (ranges inclusive) against a dataset of
/// `num_classes` classes.
pub fn parse_classes(spec: &str, num_classes: usize) -> crate::error::Result<Vec<usize>> {
    let bad = |m: String| crate::error::Error::Config(format!("--classes {spec:?}: {m}"));
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |s: &str| -> crate::error::Result<usize> {
            s.trim().parse::<usize>().map_err(|_| {
                bad(format!(
                    "{s:?} is not a class index (write e.g. 0-4 or 5,6,7)"
                ))
            })
        };
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(part)?, num(part)?),
        };
        if lo > hi {
            return Err(bad(format!("range {part} is backwards")));
        }
        for c in lo..=hi {
            if c >= num_classes {
                return Err(bad(format!(
                    "class {c} does not exist (the dataset has classes 0–{})",
                    num_classes - 1
                )));
            }
            if out.contains(&c) {
                return Err(bad(format!("class {c} is listed twice")));
            }
            out.push(c);
        }
    }
    if out.len() < 2 {
        return Err(bad("give at least two classes".into()));
    }
    Ok(out)
}
