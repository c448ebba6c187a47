//! Parameters by path. Every generic piece of training machinery (optimizer, gradient
//! clipping, EMA, checkpoint I/O, data-parallel all-reduce) sees a model as a list of
//! `(timm path, flat tensor)` pairs, so none of it depends on a model's Rust type.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Gradients, Tensor};

/// One parameter, flattened to rank 1 (a view: no copy).
#[derive(Clone, Debug)]
pub struct NamedParam {
    pub path: String,
    pub id: ParamId,
    pub shape: Vec<usize>,
    pub value: Tensor<1>,
    pub trainable: bool,
}

/// The module path being visited. An enum's variant (burn's derive enters it as a module of
/// type `Enum:Name`) adds no segment: `Model::Vit(vit)` has the paths of `vit` itself, so a
/// model wrapped in an enum keeps its timm names.
#[derive(Default)]
struct PathStack(Vec<Option<String>>);

impl PathStack {
    fn enter(&mut self, name: &str, container: &str) {
        self.0
            .push((!container.starts_with("Enum:")).then(|| name.to_string()));
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    fn path(&self) -> String {
        let parts: Vec<&str> = self.0.iter().flatten().map(String::as_str).collect();
        parts.join(".")
    }
}

fn flat<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    let n = t.shape().num_elements();
    t.reshape([n])
}

struct Collect {
    stack: PathStack,
    out: Vec<NamedParam>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.stack.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        self.out.push(NamedParam {
            path: self.stack.path(),
            id: param.id,
            shape: value.dims().to_vec(),
            trainable: value.is_require_grad(),
            value: flat(value.inner()),
        });
    }
}

/// All float parameters of `module` in declaration order, detached from autodiff.
pub fn named_params<M: Module>(module: &M) -> Vec<NamedParam> {
    let mut v = Collect {
        stack: PathStack::default(),
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

struct CollectGrads<'a> {
    stack: PathStack,
    grads: &'a Gradients,
    out: BTreeMap<String, Tensor<1>>,
}

impl ModuleVisitor for CollectGrads<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.stack.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = param.val().grad(self.grads) {
            self.out.insert(self.stack.path(), flat(g));
        }
    }
}

/// The gradient of every trainable parameter, by path, flattened. Frozen parameters have none.
pub fn gradients<M: Module>(module: &M, grads: &Gradients) -> BTreeMap<String, Tensor<1>> {
    let mut v = CollectGrads {
        stack: PathStack::default(),
        grads,
        out: BTreeMap::new(),
    };
    module.visit(&mut v);
    v.out
}

struct MapParams<F> {
    stack: PathStack,
    f: F,
}

impl<F: FnMut(&str, Tensor<1>) -> Option<Tensor<1>>> ModuleMapper for MapParams<F> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.stack.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.stack.path();
        let f = &mut self.f;
        param.map(|t| {
            let dims = t.dims();
            match f(&path, flat(t.clone().inner())) {
                None => t,
                Some(new) => {
                    let new: Tensor<D> = new.reshape(dims);
                    if let Some(strategy) = t.gradient_checkpointing_strategy() {
                        // Keep the parameter's checkpointing strategy: tensors of one op must share it.
                        let trainable = t.is_require_grad();
                        new.autodiff()
                            .with_gradient_checkpointing_strategy(strategy)
                            .set_require_grad(trainable)
                    } else {
                        new
                    }
                }
            }
        })
    }
}

/// Replace parameter values: `f(path, current)` returns the new flat value, or `None` to keep
/// it. Ids, trainability and the autodiff association are preserved.
pub fn map_params<M: Module>(module: M, f: impl FnMut(&str, Tensor<1>) -> Option<Tensor<1>>) -> M {
    module.map(&mut MapParams {
        stack: PathStack::default(),
        f,
    })
}

struct SetTrainable<F> {
    stack: PathStack,
    f: F,
}

impl<F: FnMut(&str) -> bool> ModuleMapper for SetTrainable<F> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.stack.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let trainable = (self.f)(&self.stack.path());
        param.set_require_grad(trainable)
    }
}

/// Freeze or unfreeze parameters by path: `f(path)` says whether it is trainable. A frozen
/// parameter gets no gradient (so [`gradients`] leaves it out and the optimizer keeps no
/// state for it).
pub fn set_trainable<M: Module>(module: M, f: impl FnMut(&str) -> bool) -> M {
    module.map(&mut SetTrainable {
        stack: PathStack::default(),
        f,
    })
}

/// BatchNorm running statistics: stored as frozen parameters so that checkpoints, EMA and
/// weight loading carry them, but buffers, not parameters, in PyTorch's sense.
pub fn is_buffer(path: &str) -> bool {
    path.ends_with(".running_mean") || path.ends_with(".running_var")
}

/// Total and trainable parameter counts (buffers left out, as PyTorch counts).
pub fn count_params<M: Module>(module: &M) -> (usize, usize) {
    let params = named_params(module);
    params
        .iter()
        .filter(|p| !is_buffer(&p.path))
        .fold((0, 0), |(t, tr), p| {
            let n: usize = p.shape.iter().product();
            (t + n, tr + if p.trainable { n } else { 0 })
        })
}
