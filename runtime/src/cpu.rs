//! The CPU backend: runs graphs with `ir::eval`, holding weights on the host and carrying
//! state (the KV cache) from one step to the next. It is the oracle every other backend is
//! checked against, not a fast path.

use std::collections::HashMap;

use smelt_ir::{eval_with, DType, Dim, EvalError, EvalOptions, Graph, Op, Sym, Tensor, WeightSource, WEIGHT_CONCAT};

/// How the CPU backend evaluates a model: an f16 activation that overflows is an error naming
/// the op, not an inf that silently turns the logits into NaN.
pub const MODEL_EVAL: EvalOptions = EvalOptions { overflow_is_error: true };

use crate::weights::{Checkpoint, WeightError, WeightSpec};

/// Host weights by checkpoint name.
#[derive(Default)]
pub struct HostWeights {
    tensors: HashMap<String, Tensor>,
}

impl HostWeights {
    /// Validates `checkpoint` against every weight `graphs` use and loads them in `dtype`.
    /// Returns the weights and the names present in the checkpoint but unused (to warn about).
    pub fn load(
        checkpoint: &Checkpoint,
        graphs: &[&Graph],
        ignore: &[&str],
        dtype: DType,
    ) -> Result<(HostWeights, Vec<String>), WeightError> {
        let specs = weight_specs(graphs);
        let loaded = checkpoint.load_all(&specs, ignore, dtype)?;
        let tensors = loaded.tensors.into_iter().collect();
        Ok((HostWeights { tensors }, loaded.unexpected))
    }

    pub fn from_map(tensors: HashMap<String, Tensor>) -> HostWeights {
        HostWeights { tensors }
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

impl WeightSource for HostWeights {
    fn weight(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }
}

/// The weights `graphs` read, by name, with their fixed shapes (first declaration wins; the
/// builder already refuses one name with two shapes).
pub fn weight_specs(graphs: &[&Graph]) -> Vec<WeightSpec> {
    let mut specs: Vec<WeightSpec> = Vec::new();
    for g in graphs {
        for (name, id) in g.weights() {
            if specs.iter().any(|s| s.name == name) {
                continue;
            }
            let shape = g.node(id).shape.dims().iter().map(|d| d.fixed().unwrap_or(0)).collect::<Vec<_>>();
            specs.push(WeightSpec { name, shape });
        }
    }
    specs
}

/// Values that persist between runs: the graph's KV-cache inputs (by role), which the graph
/// writes back under the same names. They start empty along the cached-tokens dim.
#[derive(Default)]
pub struct CpuState {
    values: HashMap<String, Tensor>,
}

impl CpuState {
    pub fn new() -> CpuState {
        CpuState::default()
    }

    /// Forgets all state (a new sequence).
    pub fn reset(&mut self) {
        self.values.clear();
    }

    /// Runs `graph` with `inputs`, supplying state inputs from the previous run (or empty ones)
    /// and keeping the state outputs for the next. Returns the non-state outputs.
    pub fn run(
        &mut self,
        graph: &Graph,
        weights: &HostWeights,
        mut inputs: HashMap<String, Tensor>,
    ) -> Result<HashMap<String, Tensor>, EvalError> {
        let mut state_names = Vec::new();
        for (name, id) in graph.kv_cache_inputs() {
            let t = match self.values.remove(&name) {
                Some(t) => t,
                None => empty_state(graph.node(id)),
            };
            inputs.insert(name.clone(), t);
            state_names.push(name);
        }
        let mut out = eval_with(graph, inputs, weights, MODEL_EVAL)?;
        for name in state_names {
            if let Some(t) = out.remove(&name) {
                self.values.insert(name, t);
            }
        }
        Ok(out)
    }
}

/// A state tensor with zero cached tokens; other symbolic dims cannot size a state.
fn empty_state(node: &smelt_ir::Node) -> Tensor {
    let shape = node
        .shape
        .dims()
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => *n,
            Dim::Sym(Sym::Batch) => 1,
            Dim::Sym(_) => 0,
        })
        .collect();
    debug_assert!(matches!(node.op, Op::Input { .. }));
    Tensor::zeros(node.dtype, shape)
}

impl HostWeights {
    /// Makes the weights fit `graphs` (fused ones may name `a+b+c`, the concatenation of
    /// checkpoint tensors along axis 0), then drops tensors none of them reads.
    pub fn prepare_for(&mut self, graphs: &[&Graph]) -> Result<(), EvalError> {
        for spec in weight_specs(graphs) {
            if self.tensors.contains_key(&spec.name) {
                continue;
            }
            let parts: Vec<&Tensor> = spec
                .name
                .split(WEIGHT_CONCAT)
                .map(|p| self.tensors.get(p).ok_or_else(|| EvalError::MissingWeight(p.to_string())))
                .collect::<Result<_, _>>()?;
            let joined =
                concat_rows(&parts).filter(|t| t.shape() == spec.shape).ok_or_else(|| EvalError::WeightType {
                    name: spec.name.clone(),
                    expected: format!("{:?}", spec.shape),
                    found: parts.iter().map(|p| format!("{:?}", p.shape())).collect::<Vec<_>>().join(" + "),
                })?;
            self.tensors.insert(spec.name, joined);
        }
        let used: std::collections::HashSet<String> = weight_specs(graphs).into_iter().map(|s| s.name).collect();
        self.tensors.retain(|name, _| used.contains(name));
        Ok(())
    }
}

/// Row-wise concatenation of same-dtype, same-width tensors.
fn concat_rows(parts: &[&Tensor]) -> Option<Tensor> {
    let first = parts.first()?;
    let width: usize = first.shape().get(1..)?.iter().product();
    let mut rows = 0;
    let mut values = Vec::new();
    for p in parts {
        if p.dtype() != first.dtype() || p.shape().get(1..) != first.shape().get(1..) {
            return None;
        }
        rows += p.shape()[0];
        values.extend_from_slice(p.f32s()?);
    }
    let mut shape = first.shape().to_vec();
    shape[0] = rows;
    debug_assert_eq!(values.len(), rows * width);
    Some(Tensor::from_f32(first.dtype(), shape, values))
}
