//! Exponential moving average of the weights (timm's ModelEmaV3): a second copy of the model,
//! without autodiff, updated after every optimizer step.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::Tensor;

use crate::model::params::{map_params, named_params};

pub struct Ema<M: Module> {
    pub model: M,
    pub decay: f64,
    /// Use `min(decay, (1 + n) / (10 + n))` so the average is not dominated by the init.
    pub warmup: bool,
    pub updates: u64,
}

impl<M: Module> Ema<M> {
    /// Start the average at `model`'s current weights (copied off the autodiff graph).
    pub fn new(model: &M, decay: f64, warmup: bool) -> Self {
        Ema {
            model: model.valid(),
            decay,
            warmup,
            updates: 0,
        }
    }

    /// The decay used for update number `n` (0-based).
    pub fn decay_at(&self, n: u64) -> f64 {
        if self.warmup {
            self.decay.min((1.0 + n as f64) / (10.0 + n as f64))
        } else {
            self.decay
        }
    }

    /// `ema ← d · ema + (1 − d) · θ`.
    pub fn update(&mut self, model: &M) {
        let d = self.decay_at(self.updates);
        self.updates += 1;
        let current: BTreeMap<String, Tensor<1>> = named_params(model)
            .into_iter()
            .map(|p| (p.path, p.value))
            .collect();
        self.model = map_params(self.model.clone(), |path, e| {
            current.get(path).map(|p| e * d + p.clone() * (1.0 - d))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::io::state_dict;
    use crate::model::{VisionTransformer, VitConfig};
    use burn::tensor::Device;

    #[test]
    fn ema_follows_the_closed_form() {
        let device = Device::flex();
        let c = VitConfig::with_shape(8, 4, 1, 2, [4, 1, 1, 8]);
        let a = VisionTransformer::new(&c, 1, &device).unwrap();
        let b = VisionTransformer::new(&c, 2, &device).unwrap();
        let mut ema = Ema::new(&a, 0.9, false);
        ema.update(&b);
        ema.update(&b);
        // After two updates towards b: e = 0.81·a + 0.19·b.
        let (sa, sb, se) = (state_dict(&a), state_dict(&b), state_dict(&ema.model));
        for (k, e) in &se {
            for i in 0..e.data.len() {
                let want = 0.81 * sa[k].data[i] + 0.19 * sb[k].data[i];
                assert!((e.data[i] - want).abs() < 1e-6, "{k}[{i}]");
            }
        }
        let w = Ema::new(&a, 0.9999, true);
        assert_eq!(w.decay_at(0), 0.1);
        assert_eq!(w.decay_at(90), 0.91);
        assert_eq!(w.decay_at(1_000_000), 0.9999);
    }
}
