//! The CPU backend: runs graphs with `ir::eval`, holding weights on the host and carrying
//! state (the KV cache) from one step to the next. It is the oracle every other backend is
//! checked against, not a fast path.

use std::collections::{HashMap, HashSet};

use smelt_ir::{
    eval_rank, Collective, DType, Data, Dim, EvalError, EvalOptions, Graph, Op, Sym, Tensor, WeightSource,
    WEIGHT_CONCAT,
};

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

    /// The bytes the tensors' storage holds (2 per element kept in 16 bits, else 4).
    pub fn bytes(&self) -> usize {
        self.tensors.values().map(Tensor::storage_bytes).sum()
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

    /// The state values (the KV caches by input name, `[cached tokens, ...]` each).
    pub fn values(&self) -> &HashMap<String, Tensor> {
        &self.values
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
        inputs: HashMap<String, Tensor>,
    ) -> Result<HashMap<String, Tensor>, EvalError> {
        self.run_observed(graph, weights, inputs, &mut || {})
    }

    /// [`CpuState::run`], calling `after_node` after each node (see [`smelt_ir::eval_observed`]).
    pub fn run_observed(
        &mut self,
        graph: &Graph,
        weights: &HostWeights,
        inputs: HashMap<String, Tensor>,
        after_node: &mut dyn FnMut(),
    ) -> Result<HashMap<String, Tensor>, EvalError> {
        self.run_rank(graph, weights, inputs, None, after_node)
    }

    /// [`CpuState::run_observed`] of one rank's graph of a tensor-parallel group, exchanging
    /// with the other ranks through `collective` (see [`smelt_ir::eval_rank`]).
    pub fn run_rank(
        &mut self,
        graph: &Graph,
        weights: &HostWeights,
        mut inputs: HashMap<String, Tensor>,
        collective: Option<&dyn Collective>,
        after_node: &mut dyn FnMut(),
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
        let mut out = eval_rank(graph, inputs, weights, MODEL_EVAL, collective, after_node)?;
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
    /// checkpoint tensors along axis 0; a part may be a slice, `q[0:512]+k[:, 0:256]`, loaded
    /// under that name), then drops tensors none of them reads. Each part is
    /// dropped as soon as the last concatenation that needs it is made, so the parts and their
    /// copies are never all held at once.
    pub fn prepare_for(&mut self, graphs: &[&Graph]) -> Result<(), EvalError> {
        let specs = weight_specs(graphs);
        let used: HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let joins: Vec<&WeightSpec> = specs.iter().filter(|s| !self.tensors.contains_key(&s.name)).collect();
        let mut pending: HashMap<&str, usize> = HashMap::new();
        for spec in &joins {
            for part in spec.name.split(WEIGHT_CONCAT) {
                *pending.entry(part).or_default() += 1;
            }
        }
        for spec in joins {
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
            self.tensors.insert(spec.name.clone(), joined);
            for part in spec.name.split(WEIGHT_CONCAT) {
                let left = pending.get_mut(part).map(|n| {
                    *n -= 1;
                    *n
                });
                if left == Some(0) && !used.contains(part) {
                    self.tensors.remove(part);
                }
            }
        }
        self.tensors.retain(|name, _| used.contains(name.as_str()));
        Ok(())
    }
}

/// Row-wise concatenation of same-dtype, same-width tensors, kept in their storage when they
/// share it.
fn concat_rows(parts: &[&Tensor]) -> Option<Tensor> {
    let first = parts.first().filter(|p| p.dtype().is_float())?;
    let mut shape = first.shape().to_vec();
    for p in &parts[1..] {
        if p.dtype() != first.dtype() || p.shape().get(1..) != first.shape().get(1..) {
            return None;
        }
        shape[0] += p.shape()[0];
    }
    fn join<T: Copy>(parts: &[&Tensor], of: impl Fn(&Data) -> Option<&Vec<T>>) -> Option<Vec<T>> {
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(of(p.data())?);
        }
        Some(out)
    }
    let dtype = first.dtype();
    if let Some(v) = join(parts, |d| if let Data::Bf16(v) = d { Some(v) } else { None }) {
        return Some(Tensor::from_bf16(dtype, shape, v));
    }
    if let Some(v) = join(parts, |d| if let Data::F16(v) = d { Some(v) } else { None }) {
        return Some(Tensor::from_f16(dtype, shape, v));
    }
    let mut values = Vec::new();
    for p in parts {
        values.extend_from_slice(&p.floats());
    }
    Some(Tensor::from_stored(dtype, shape, values))
}

#[cfg(test)]
mod tests {
    use half::bf16;
    use smelt_ir::{shape, Builder};

    use super::*;

    fn kept(rows: usize, values: &[f32]) -> Tensor {
        Tensor::from_bf16(DType::F32, vec![rows, 2], values.iter().map(|&v| bf16::from_f32(v)).collect())
    }

    /// A graph reading the weights `names` (each [rows, 2]) and nothing else.
    fn reading(names: &[(&str, usize)]) -> Graph {
        let mut b = Builder::new();
        for (i, &(name, rows)) in names.iter().enumerate() {
            let w = b.weight(name, DType::F32, shape![rows, 2]).unwrap();
            b.output(&format!("y{i}"), w).unwrap();
        }
        b.finish().unwrap()
    }

    #[test]
    fn concatenations_keep_16_bit_storage_and_their_parts_go() {
        let parts = [("a", kept(1, &[1.0, 2.0])), ("b", kept(2, &[3.0, 4.0, 5.0, 6.0])), ("c", kept(1, &[7.0, 8.0]))];
        let mut weights = HostWeights::from_map(parts.into_iter().map(|(n, t)| (n.to_string(), t)).collect());
        // `a` is in two concatenations, `c` is also read alone.
        let g = reading(&[("a+b", 3), ("c+a", 2), ("c", 1)]);
        weights.prepare_for(&[&g]).unwrap();
        let mut names: Vec<&str> = weights.tensors.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["a+b", "c", "c+a"]);
        let ab = weights.weight("a+b").unwrap();
        assert!(matches!(ab.data(), Data::Bf16(_)), "{ab:?}");
        assert_eq!(ab.to_f32_vec(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(weights.weight("c+a").unwrap().to_f32_vec(), [7.0, 8.0, 1.0, 2.0]);
    }

    #[test]
    fn mixed_storage_concatenates_in_f32() {
        let f32_part = Tensor::from_f32(DType::F32, vec![1, 2], vec![0.5, -1.0]);
        let tensors = HashMap::from([("a".to_string(), kept(1, &[1.0, 2.0])), ("b".to_string(), f32_part)]);
        let mut weights = HostWeights::from_map(tensors);
        weights.prepare_for(&[&reading(&[("a+b", 2)])]).unwrap();
        let ab = weights.weight("a+b").unwrap();
        assert_eq!((ab.f32s().is_some(), ab.to_f32_vec()), (true, vec![1.0, 2.0, 0.5, -1.0]));
        assert_eq!(weights.len(), 1);
    }
}
