//! Addressed randomness. Every random draw in vitrs comes from an `Rng` seeded by *where* it is
//! used — (seed, purpose, epoch, sample index) for augmentation, (seed, purpose, step) for
//! dropout — never from one stream shared across the run. Resuming, changing the thread count
//! or the number of processes then cannot change what a sample sees.
//!
//! The generator is xoshiro256++ seeded through SplitMix64: small, fast, and fixed here so no
//! dependency upgrade can silently change a run.

/// Purposes, so that two uses of the same (seed, index) never share a stream.
pub mod stream {
    pub const SHUFFLE: u64 = 1;
    pub const AUGMENT: u64 = 2;
    pub const MIX: u64 = 3;
    pub const DROPOUT: u64 = 4;
    pub const INIT: u64 = 5;
    pub const ERASE: u64 = 6;
    pub const SYNTHETIC: u64 = 7;
    pub const REPLAY: u64 = 8;
    pub const SPLIT: u64 = 9;
    pub const FISHER: u64 = 10;
}

#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn seed(seed: u64) -> Self {
        let mut x = seed;
        Rng {
            s: [
                splitmix64(&mut x),
                splitmix64(&mut x),
                splitmix64(&mut x),
                splitmix64(&mut x),
            ],
        }
    }

    /// The generator for one address: a seed, a purpose and any number of coordinates
    /// (epoch, sample index, step, rank...).
    pub fn at(seed: u64, purpose: u64, coords: &[u64]) -> Self {
        let mut h = seed ^ purpose.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        let mut x = h;
        h = splitmix64(&mut x);
        for &c in coords {
            let mut y = h ^ c.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            h = splitmix64(&mut y);
        }
        Rng::seed(h)
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }

    /// Uniform integer in [0, n). `n` must be > 0.
    pub fn below(&mut self, n: usize) -> usize {
        // Lemire's multiply-shift; the bias is < 2^-32 for the sizes used here.
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// Uniform integer in [lo, hi] (inclusive).
    pub fn range_inclusive(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as usize) as i64
    }

    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.f64();
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Gamma(shape, 1) by Marsaglia-Tsang.
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = 1.0 - self.f64();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = 1.0 - self.f64();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Beta(a, b).
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(b);
        x / (x + y)
    }

    /// A uniformly random permutation of 0..n (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        self.shuffle(&mut p);
        p
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_give_independent_reproducible_streams() {
        let a = Rng::at(7, stream::AUGMENT, &[1, 2]).next_u64();
        assert_eq!(a, Rng::at(7, stream::AUGMENT, &[1, 2]).next_u64());
        assert_ne!(a, Rng::at(7, stream::AUGMENT, &[2, 1]).next_u64());
        assert_ne!(a, Rng::at(7, stream::MIX, &[1, 2]).next_u64());
        assert_ne!(a, Rng::at(8, stream::AUGMENT, &[1, 2]).next_u64());
    }

    #[test]
    fn uniform_and_beta_moments() {
        let mut r = Rng::seed(1);
        let n = 200_000;
        let mean: f64 = (0..n).map(|_| r.f64()).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        // Beta(2, 5) has mean 2/7.
        let m: f64 = (0..n).map(|_| r.beta(2.0, 5.0)).sum::<f64>() / n as f64;
        assert!((m - 2.0 / 7.0).abs() < 0.01, "{m}");
        // Beta(0.8, 0.8) (Mixup's default) has mean 0.5 and stays in [0, 1].
        let v: Vec<f64> = (0..n).map(|_| r.beta(0.8, 0.8)).collect();
        assert!(v.iter().all(|x| (0.0..=1.0).contains(x)));
        let m: f64 = v.iter().sum::<f64>() / n as f64;
        assert!((m - 0.5).abs() < 0.01, "{m}");
        let counts = (0..n).fold([0usize; 3], |mut c, _| {
            c[r.below(3)] += 1;
            c
        });
        assert!(
            counts
                .iter()
                .all(|&c| (c as f64 / n as f64 - 1.0 / 3.0).abs() < 0.01)
        );
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = Rng::seed(3).permutation(1000);
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }
}
