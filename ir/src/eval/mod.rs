//! The reference evaluator: what every op means, computed in f32 with each result rounded to
//! its node's dtype. It is the oracle every later backend is checked against, so it favours
//! plain loops over cleverness, except for matmul (a CPU GEMM crate) so that the real model
//! runs at a usable speed.

pub mod collective;
mod elementwise;
pub(crate) mod fused;
// An AVX2 kernel, called only after the CPU is checked to have it.
#[allow(unsafe_code)]
mod linalg;
pub(crate) mod movement;

use std::collections::HashMap;

use crate::dtype::DType;
use crate::graph::{Graph, Node, NodeId};
use crate::op::Op;
use crate::print::node_label;
use crate::shape::{Bindings, Dim, Sym};
use crate::tensor::Tensor;

pub use collective::{gather_in_rank_order, sum_in_rank_order, Collective, ThreadGroup};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("graph input {0:?} was not supplied")]
    MissingInput(String),
    #[error("graph input {name:?}: expected {expected}, found {found}")]
    InputType { name: String, expected: String, found: String },
    #[error("weight {0:?} was not supplied")]
    MissingWeight(String),
    #[error("weight {name:?}: expected {expected}, found {found}")]
    WeightType { name: String, expected: String, found: String },
    #[error("symbol {sym} is bound to both {a} and {b}")]
    Binding { sym: &'static str, a: usize, b: usize },
    #[error("node {node}: {message}")]
    Node { node: String, message: String },
    #[error("graph has a cycle")]
    Cycle,
    /// An f16 result left f16's range (±65504) although its operands were finite: the
    /// activations of this model need bf16 or f32.
    #[error("node {node}: f16 overflow: {count} values beyond ±65504 (compute in bf16 or f32)")]
    F16Overflow { node: String, count: usize },
    /// A bf16 or f32 result is not finite although its operands were: an activation overflowed,
    /// which a trained model's weights never make happen.
    #[error("node {node}: {count} {dtype} values overflowed to infinity or NaN (are the weights damaged?)")]
    Overflow { node: String, count: usize, dtype: DType },
}

/// Where the evaluator finds parameters.
pub trait WeightSource {
    fn weight(&self, name: &str) -> Option<&Tensor>;
}

impl WeightSource for HashMap<String, Tensor> {
    fn weight(&self, name: &str) -> Option<&Tensor> {
        self.get(name)
    }
}

/// A value in the evaluator's table: weights are borrowed, computed values owned.
enum Val<'w> {
    Owned(Tensor),
    Borrowed(&'w Tensor),
}

impl Val<'_> {
    fn get(&self) -> &Tensor {
        match self {
            Val::Owned(t) => t,
            Val::Borrowed(t) => t,
        }
    }
}

/// Evaluates `graph` on `inputs` (by graph-input name) and returns every graph output by name.
/// Inputs are taken by value so that a KV cache can be appended to in place when it is not
/// used again.
pub fn eval(
    graph: &Graph,
    inputs: HashMap<String, Tensor>,
    weights: &dyn WeightSource,
) -> Result<HashMap<String, Tensor>, EvalError> {
    eval_with(graph, inputs, weights, EvalOptions::default())
}

/// How [`eval_with`] treats what plain arithmetic allows.
#[derive(Clone, Copy, Debug, Default)]
pub struct EvalOptions {
    /// Fail at the first result that is not finite: [`EvalError::F16Overflow`] for f16,
    /// [`EvalError::Overflow`] for bf16 and f32 results other than the graph's outputs (whose
    /// caller names where they went wrong: a model's logits, by position). A model's
    /// activations never overflow; an arbitrary expression's may (`exp(20)` in f16).
    pub overflow_is_error: bool,
}

/// [`eval`] with options.
pub fn eval_with(
    graph: &Graph,
    inputs: HashMap<String, Tensor>,
    weights: &dyn WeightSource,
    options: EvalOptions,
) -> Result<HashMap<String, Tensor>, EvalError> {
    eval_observed(graph, inputs, weights, options, &mut || {})
}

/// [`eval_with`], calling `after_node` once per node evaluated, `graph.len()` times in all: a
/// caller's progress through a long evaluation (a long prompt).
pub fn eval_observed(
    graph: &Graph,
    inputs: HashMap<String, Tensor>,
    weights: &dyn WeightSource,
    options: EvalOptions,
    after_node: &mut dyn FnMut(),
) -> Result<HashMap<String, Tensor>, EvalError> {
    eval_rank(graph, inputs, weights, options, None, after_node)
}

/// [`eval_observed`] of one rank's graph of a tensor-parallel group: its collective ops
/// exchange values with the other ranks through `collective` (every rank's evaluation must
/// run at the same time, each on its own thread). Without one, a graph of more than one rank
/// fails at its first collective; a whole model's (world 1) collectives are the identity.
pub fn eval_rank(
    graph: &Graph,
    mut inputs: HashMap<String, Tensor>,
    weights: &dyn WeightSource,
    options: EvalOptions,
    collective: Option<&dyn Collective>,
    after_node: &mut dyn FnMut(),
) -> Result<HashMap<String, Tensor>, EvalError> {
    let order = graph.topo_order().ok_or(EvalError::Cycle)?;
    let bindings = bind(graph, &inputs)?;
    let mut run = Run::new(graph, &order, bindings, options);
    run.collective = collective;
    for &id in &order {
        let node = graph.node(id);
        let val = match &node.op {
            Op::Input { name } => Val::Owned(inputs.remove(name).ok_or_else(|| EvalError::MissingInput(name.clone()))?),
            Op::Weight { name } => Val::Borrowed(checked_weight(weights, name, node, &run.bindings)?),
            Op::Constant { values } => {
                let shape = node.shape.resolve(&run.bindings);
                Val::Owned(Tensor::from_f32(node.dtype, shape, values.to_vec()))
            }
            op => Val::Owned(run.compute(id, op)?),
        };
        run.values[id.index()] = Some(val);
        after_node();
    }
    run.outputs()
}

/// The weight `name` for `node`, checked against the node's dtype and shape.
fn checked_weight<'w>(
    weights: &'w dyn WeightSource,
    name: &str,
    node: &Node,
    bindings: &Bindings,
) -> Result<&'w Tensor, EvalError> {
    let w = weights.weight(name).ok_or_else(|| EvalError::MissingWeight(name.to_string()))?;
    let expected = node.shape.resolve(bindings);
    if w.shape() != expected || w.dtype() != node.dtype {
        return Err(EvalError::WeightType {
            name: name.to_string(),
            expected: format!("{}{:?}", node.dtype, expected),
            found: format!("{}{:?}", w.dtype(), w.shape()),
        });
    }
    Ok(w)
}

/// One evaluation in progress: the value table and what decides when a value leaves it.
struct Run<'g, 'w> {
    graph: &'g Graph,
    bindings: Bindings,
    options: EvalOptions,
    /// Uses not yet evaluated, by node (a graph output counts as one).
    remaining_uses: HashMap<NodeId, usize>,
    is_output: Vec<bool>,
    /// Indexed by node index; never resized while evaluating.
    values: Vec<Option<Val<'w>>>,
    collective: Option<&'w dyn Collective>,
}

impl<'g, 'w> Run<'g, 'w> {
    fn new(graph: &'g Graph, order: &[NodeId], bindings: Bindings, options: EvalOptions) -> Run<'g, 'w> {
        let mut remaining_uses: HashMap<NodeId, usize> = HashMap::new();
        for &id in order {
            for x in graph.operands(id) {
                *remaining_uses.entry(x).or_insert(0) += 1;
            }
        }
        let mut is_output = vec![false; graph.node_bound()];
        for (_, id) in graph.outputs() {
            *remaining_uses.entry(*id).or_insert(0) += 1;
            is_output[id.index()] = true;
        }
        let values = (0..graph.node_bound()).map(|_| None).collect();
        Run { graph, bindings, options, remaining_uses, is_output, values, collective: None }
    }

    /// Computes node `id`, whose op `op` is not a leaf, from its operands' values.
    fn compute(&mut self, id: NodeId, op: &Op) -> Result<Tensor, EvalError> {
        let graph = self.graph;
        let node = graph.node(id);
        let operands = graph.operands(id);
        // Operands at their last use leave the table; an owned one may be consumed
        // by the op (kv_append appends in place).
        let mut taken = self.take_last_uses(&operands);
        // An owned cache at its last use is appended to in place instead of copied.
        let slot = op.kv_cache_operand();
        let consumable = take_consumable(slot, &operands, &mut taken);
        let values = &self.values;
        let lookup = |x: &NodeId| -> &Tensor {
            match taken.iter().find(|(y, _)| y == x) {
                Some((_, v)) => v.get(),
                None => values[x.index()].as_ref().expect("operand evaluated").get(),
            }
        };
        let args: Vec<&Tensor> = operands
            .iter()
            .enumerate()
            .map(|(i, x)| match (&consumable, Some(i) == slot) {
                (Some(c), true) => c,
                _ => lookup(x),
            })
            .collect();
        let out_shape = node.shape.resolve(&self.bindings);
        if self.options.overflow_is_error {
            check_norm_input(op, &args).map_err(|message| EvalError::Node { node: node_label(graph, id), message })?;
        }
        let result = if consumable.is_some() {
            // The appended rows are computed before the cache is moved out of `args`.
            let rows = match op {
                Op::Fused(f) => {
                    f.appended_rows(&args).unwrap_or_else(|| Err("a fused op without a cache appends nothing".into()))
                }
                _ => Ok(args[1].clone()),
            };
            drop(args);
            rows.map(|rows| movement::append_rows(consumable.expect("checked"), &rows))
        } else if op.is_collective() {
            exchange(graph, self.collective, op, args[0])
        } else {
            apply(op, node.dtype, &out_shape, &args)
        };
        let result = result.map_err(|message| EvalError::Node { node: node_label(graph, id), message })?;
        if result.shape() != out_shape.as_slice() {
            let message = format!("computed shape {:?}, the graph says {:?}", result.shape(), out_shape);
            return Err(EvalError::Node { node: node_label(graph, id), message });
        }
        self.check_finite(id, &result)?;
        Ok(result)
    }

    /// Counts one use of each of `operands`; those at their last use leave the table.
    fn take_last_uses(&mut self, operands: &[NodeId]) -> Vec<(NodeId, Val<'w>)> {
        let mut taken: Vec<(NodeId, Val)> = Vec::new();
        for x in operands {
            let uses = self.remaining_uses.get_mut(x).expect("operand counted");
            *uses -= 1;
            if *uses == 0 {
                taken.push((*x, self.values[x.index()].take().expect("operand evaluated")));
            }
        }
        taken
    }

    /// With [`EvalOptions::overflow_is_error`], fails on a non-finite `result` of node `id`.
    /// Inputs and weights are finite and every result is checked, so the first non-finite
    /// value is where the overflow happened.
    fn check_finite(&self, id: NodeId, result: &Tensor) -> Result<(), EvalError> {
        let node = self.graph.node(id);
        let checked = node.dtype == DType::F16 || !self.is_output[id.index()];
        if !(self.options.overflow_is_error && checked) {
            return Ok(());
        }
        let count = result.f32s().map_or(0, |v| v.iter().filter(|x| !x.is_finite()).count());
        match count {
            0 => Ok(()),
            _ if node.dtype == DType::F16 => Err(EvalError::F16Overflow { node: node_label(self.graph, id), count }),
            _ => Err(EvalError::Overflow { node: node_label(self.graph, id), count, dtype: node.dtype }),
        }
    }

    /// Every graph output by name.
    fn outputs(&self) -> Result<HashMap<String, Tensor>, EvalError> {
        let mut out = HashMap::new();
        for (name, id) in self.graph.outputs() {
            let t = self.values[id.index()].as_ref().map(|v| v.get().clone());
            out.insert(name.clone(), t.ok_or_else(|| EvalError::MissingInput(name.clone()))?);
        }
        Ok(out)
    }
}

/// The operand at the op's cache slot `slot`, out of `taken`, when it is owned, at its last
/// use, and read once by this op: the op may then append to it in place.
fn take_consumable(slot: Option<usize>, operands: &[NodeId], taken: &mut Vec<(NodeId, Val)>) -> Option<Tensor> {
    match slot.and_then(|k| taken.iter().position(|(x, v)| *x == operands[k] && matches!(v, Val::Owned(_)))) {
        Some(i) if operands.iter().filter(|&&x| x == taken[i].0).count() == 1 => match taken.swap_remove(i).1 {
            Val::Owned(t) => Some(t),
            Val::Borrowed(_) => None,
        },
        _ => None,
    }
}

/// Binds the symbolic dims from the shapes of the supplied inputs and checks every input's
/// dtype and fixed dims.
fn bind(graph: &Graph, inputs: &HashMap<String, Tensor>) -> Result<Bindings, EvalError> {
    let mut found: HashMap<Sym, usize> = graph.pins().iter().copied().collect();
    for (name, id) in graph.inputs() {
        let node = graph.node(id);
        let t = inputs.get(&name).ok_or_else(|| EvalError::MissingInput(name.clone()))?;
        let mismatch = || EvalError::InputType {
            name: name.clone(),
            expected: format!("{}{}", node.dtype, node.shape),
            found: format!("{}{:?}", t.dtype(), t.shape()),
        };
        if t.dtype() != node.dtype || t.shape().len() != node.shape.rank() {
            return Err(mismatch());
        }
        for (d, &n) in node.shape.dims().iter().zip(t.shape()) {
            match d {
                Dim::Fixed(f) if *f != n => return Err(mismatch()),
                Dim::Fixed(_) => {}
                Dim::Sym(s) => {
                    if let Some(&prev) = found.get(s) {
                        if prev != n {
                            return Err(EvalError::Binding { sym: s.name(), a: prev, b: n });
                        }
                    }
                    found.insert(*s, n);
                }
            }
        }
    }
    let b = Bindings {
        batch: found.get(&Sym::Batch).copied().unwrap_or(1),
        new_tokens: found.get(&Sym::NewTokens).copied().unwrap_or(0),
        cached_tokens: found.get(&Sym::CachedTokens).copied().unwrap_or(0),
    };
    if let Some(&total) = found.get(&Sym::TotalTokens) {
        if total != b.cached_tokens + b.new_tokens {
            return Err(EvalError::Binding { sym: "P+T", a: b.cached_tokens + b.new_tokens, b: total });
        }
    }
    Ok(b)
}

/// For an op that normalizes its first operand: no row's mean square overflows (see
/// [`fused::norm_overflows`]).
fn check_norm_input(op: &Op, args: &[&Tensor]) -> Result<(), String> {
    let Some(eps) = (match op {
        Op::Fused(f) => f.norm_eps(),
        _ => None,
    }) else {
        return Ok(());
    };
    match fused::norm_overflows(args[0], eps)? {
        0 => Ok(()),
        rows => Err(format!("the mean square of {rows} rows is not finite in f32 (an activation overflowed)")),
    }
}

/// A collective op's result: `value` exchanged with the other ranks of `graph`'s group.
fn exchange(graph: &Graph, collective: Option<&dyn Collective>, op: &Op, value: &Tensor) -> Result<Tensor, String> {
    let rank = graph.rank().map_or(0, |r| r.rank);
    match (collective, op) {
        (_, _) if graph.world() == 1 => Ok(value.clone()),
        (None, _) => Err(format!(
            "{} needs the other {} ranks (evaluate each rank with a collective)",
            op.kind(),
            graph.world() - 1
        )),
        (Some(c), Op::AllReduce { .. }) => c.all_reduce(rank, value),
        (Some(c), Op::AllGather { axis, .. }) => c.all_gather(rank, value, *axis),
        (Some(_), _) => Err(format!("{} is not a collective", op.kind())),
    }
}

fn apply(op: &Op, dtype: DType, out_shape: &[usize], args: &[&Tensor]) -> Result<Tensor, String> {
    let a = |i: usize| args[i];
    Ok(match op {
        Op::Unary(u) => elementwise::unary(*u, a(0), dtype),
        Op::Binary(b) => elementwise::binary(*b, a(0), a(1), dtype, out_shape),
        Op::Reduce { op, axis } => elementwise::reduce(*op, a(0), *axis, dtype),
        Op::Cast { to } => elementwise::cast(a(0), *to),
        Op::MatMul => linalg::matmul(a(0), a(1), dtype),
        Op::Attention { scale } => linalg::attention(a(0), a(1), a(2), *scale, dtype)?,
        Op::ArgMax { axis } => elementwise::argmax(a(0), *axis),
        Op::Gather => movement::gather(a(0), a(1))?,
        Op::PartialGather { start, total } => movement::partial_gather(a(0), a(1), *start, *total)?,
        Op::Reshape { .. } => a(0).clone().reshaped(out_shape.to_vec()),
        Op::Slice { axis, start, end } => movement::slice(a(0), *axis, *start, *end)?,
        Op::Concat { axis } => movement::concat(args, *axis),
        Op::KvAppend => movement::append_rows(a(0).clone(), a(1)),
        Op::Fused(f) => f.eval(args, dtype)?,
        Op::Input { .. } | Op::Weight { .. } | Op::Constant { .. } => return Err(format!("{} is a leaf", op.kind())),
        Op::AllReduce { .. } | Op::AllGather { .. } => return Err(format!("{} exchanges between ranks", op.kind())),
    })
}

#[cfg(test)]
mod fused_tests;
#[cfg(test)]
mod linalg_tests;
#[cfg(test)]
mod tests;
