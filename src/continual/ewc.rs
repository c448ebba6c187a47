//! Elastic weight consolidation (Kirkpatrick et al. 2017), online (Schwarz et al. 2018):
//! after each task a diagonal empirical Fisher `F` (mean over examples of the squared
//! gradient of −log p(y|x)) is folded into `F ← γ·F + F_task`, θ* becomes the current
//! weights, and training adds `λ/2 · Σ F·(θ − θ*)²` to the loss, i.e. `λ·F·(θ − θ*)` to each
//! parameter's gradient. Everything is by parameter path, like the optimizer.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor, TensorData};

use crate::model::io::HostTensor;
use crate::model::params::named_params;

pub type ParamMap = BTreeMap<String, Tensor<1>>;

#[derive(Clone, Debug, Default)]
pub struct Ewc {
    pub lambda: f64,
    pub gamma: f64,
    pub fisher: ParamMap,
    /// θ*: the weights after the last consolidated task.
    pub theta: ParamMap,
}

/// The trainable parameters of a model by path (flat, detached).
pub fn trainable_params<M: burn::module::Module>(model: &M) -> ParamMap {
    named_params(model)
        .into_iter()
        .filter(|p| p.trainable)
        .map(|p| (p.path, p.value))
        .collect()
}

impl Ewc {
    pub fn new(lambda: f64, gamma: f64) -> Self {
        Ewc {
            lambda,
            gamma,
            ..Default::default()
        }
    }

    pub fn is_active(&self) -> bool {
        !self.fisher.is_empty()
    }

    /// `λ/2 · Σ F·(θ − θ*)²` at `params`.
    pub fn penalty(&self, params: &ParamMap) -> f64 {
        let mut total = 0.0;
        for (k, f) in &self.fisher {
            if let (Some(p), Some(t)) = (params.get(k), self.theta.get(k)) {
                let d = p.clone() - t.clone();
                let s: f32 = (d.clone() * d * f.clone()).sum().into_scalar();
                total += s as f64;
            }
        }
        0.5 * self.lambda * total
    }

    /// Add the penalty's gradient `λ·F·(θ − θ*)` to `grads` (parameters without a gradient,
    /// i.e. frozen ones, are left alone).
    pub fn add_grads(&self, grads: &mut ParamMap, params: &ParamMap) {
        for (k, f) in &self.fisher {
            if let (Some(g), Some(p), Some(t)) =
                (grads.get_mut(k), params.get(k), self.theta.get(k))
            {
                *g = g.clone() + (p.clone() - t.clone()) * f.clone() * self.lambda;
            }
        }
    }

    /// After a task: `F ← γ·F + F_task`, `θ* ← θ`.
    pub fn consolidate(&mut self, task_fisher: ParamMap, params: ParamMap) {
        let old = std::mem::take(&mut self.fisher);
        self.fisher = task_fisher
            .into_iter()
            .map(|(k, f)| {
                let f = match old.get(&k) {
                    Some(o) => o.clone() * self.gamma + f,
                    None => f,
                };
                (k, f)
            })
            .collect();
        self.theta = params;
    }

    /// Fisher and θ* as host tensors (`fisher.<path>`, `theta.<path>`) for a checkpoint.
    pub fn state_dict(&self) -> BTreeMap<String, HostTensor> {
        let mut out = BTreeMap::new();
        for (prefix, m) in [("fisher", &self.fisher), ("theta", &self.theta)] {
            for (k, t) in m {
                let n = t.dims()[0];
                out.insert(
                    format!("{prefix}.{k}"),
                    HostTensor::from_tensor(t.clone(), &[n]),
                );
            }
        }
        out
    }

    pub fn load_state_dict(&mut self, sd: &BTreeMap<String, HostTensor>, device: &Device) {
        self.fisher.clear();
        self.theta.clear();
        for (k, h) in sd {
            let t = Tensor::<1>::from_data(TensorData::new(h.data.clone(), [h.data.len()]), device);
            if let Some(p) = k.strip_prefix("fisher.") {
                self.fisher.insert(p.to_string(), t);
            } else if let Some(p) = k.strip_prefix("theta.") {
                self.theta.insert(p.to_string(), t);
            }
        }
    }
}

/// Accumulates the empirical Fisher one example at a time: the mean of squared gradients.
#[derive(Default)]
pub struct FisherSum {
    sum: ParamMap,
    n: usize,
}

impl FisherSum {
    /// `grads`: the gradient of −log p(y|x) for one example.
    pub fn add(&mut self, grads: ParamMap) {
        for (k, g) in grads {
            let sq = g.clone() * g;
            let s = match self.sum.remove(&k) {
                Some(acc) => acc + sq,
                None => sq,
            };
            self.sum.insert(k, s);
        }
        self.n += 1;
    }

    /// The mean over the examples of every rank of a data-parallel job: sums and counts
    /// added up over ranks (one all-reduce; `layout` names every parameter, since a rank may
    /// have had no example).
    pub fn mean_over(
        mut self,
        comm: &dyn crate::dist::Comm,
        layout: &[(String, usize)],
        device: &Device,
    ) -> ParamMap {
        if comm.size() > 1 {
            let mut n = [self.n as f64];
            crate::dist::all_reduce_grads(comm, layout, &mut self.sum, &mut n, device);
            self.n = n[0] as usize;
        }
        self.mean()
    }

    pub fn mean(self) -> ParamMap {
        let n = self.n.max(1) as f64;
        self.sum.into_iter().map(|(k, s)| (k, s / n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Device::flex())
    }
    fn host(x: &Tensor<1>) -> Vec<f32> {
        x.clone()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }
    fn map(pairs: &[(&str, &[f32])]) -> ParamMap {
        pairs.iter().map(|(k, v)| (k.to_string(), t(v))).collect()
    }

    /// θ = (1, 2 | 3), θ* = (0.5, 2 | 1), F = (2, 3 | 0.25), λ = 4:
    /// penalty = 4/2 · (2·0.25 + 0 + 0.25·4) = 3; gradient = 4·F·(θ − θ*) = (4, 0 | 2).
    #[test]
    fn penalty_and_gradient_by_hand() {
        let mut ewc = Ewc::new(4.0, 1.0);
        ewc.consolidate(
            map(&[("a", &[2.0, 3.0]), ("b", &[0.25])]),
            map(&[("a", &[0.5, 2.0]), ("b", &[1.0])]),
        );
        let theta = map(&[("a", &[1.0, 2.0]), ("b", &[3.0])]);
        assert!((ewc.penalty(&theta) - 3.0).abs() < 1e-6);
        let mut grads = map(&[("a", &[1.0, 1.0]), ("b", &[-1.0])]);
        ewc.add_grads(&mut grads, &theta);
        assert_eq!(host(&grads["a"]), [5.0, 1.0]);
        assert_eq!(host(&grads["b"]), [1.0]);
        // The gradient is the penalty's derivative (central differences).
        let h = 1e-2f32;
        let plus = ewc.penalty(&map(&[("a", &[1.0 + h, 2.0]), ("b", &[3.0])]));
        let minus = ewc.penalty(&map(&[("a", &[1.0 - h, 2.0]), ("b", &[3.0])]));
        assert!(((plus - minus) / (2.0 * h as f64) - 4.0).abs() < 1e-3);
        // At θ = θ*: no penalty, gradients untouched.
        let at_star = ewc.theta.clone();
        assert_eq!(ewc.penalty(&at_star), 0.0);
        let mut g = map(&[("a", &[0.3, -0.7]), ("b", &[2.0])]);
        ewc.add_grads(&mut g, &at_star);
        assert_eq!(host(&g["a"]), [0.3, -0.7]);
        assert_eq!(host(&g["b"]), [2.0]);
    }

    #[test]
    fn online_accumulation_and_round_trip() {
        let mut ewc = Ewc::new(1.0, 0.5);
        ewc.consolidate(map(&[("a", &[2.0, 3.0])]), map(&[("a", &[0.0, 0.0])]));
        ewc.consolidate(map(&[("a", &[1.0, 1.0])]), map(&[("a", &[1.0, 2.0])]));
        assert_eq!(host(&ewc.fisher["a"]), [2.0, 2.5]); // 0.5·(2, 3) + (1, 1)
        assert_eq!(host(&ewc.theta["a"]), [1.0, 2.0]);
        let mut back = Ewc::new(1.0, 0.5);
        back.load_state_dict(&ewc.state_dict(), &Device::flex());
        assert_eq!(host(&back.fisher["a"]), [2.0, 2.5]);
        assert_eq!(host(&back.theta["a"]), [1.0, 2.0]);
    }

    #[test]
    fn fisher_is_the_mean_of_squares() {
        let mut f = FisherSum::default();
        f.add(map(&[("a", &[1.0, -2.0])]));
        f.add(map(&[("a", &[3.0, 0.0])]));
        assert_eq!(host(&f.mean()["a"]), [5.0, 2.0]);
    }
}
