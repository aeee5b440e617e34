//! A `Program`: the kernels of one fused graph in launch order, each with the IR node it
//! computes and what a call costs (FLOPs, bytes of weights, activations and KV cache), at one
//! new token. Decode graphs (`T` pinned to 1) get GEMVs and flash-decoding attention; prefill
//! graphs (symbolic `T`) get the tensor-core GEMM and prefill attention.

use serde::Serialize;
use smelt_ir::{Bindings, DType, Dim, Graph, Node, NodeId, Op, Shape, Sym};

use crate::kernels::{self, AttentionSpec, GemvSpec, Kernel, View};

/// Context positions each flash-decoding split covers: one 8-row chunk per warp of the split
/// kernel, so that a context of 1k already makes 256 blocks (two per SM) and every K/V load of a
/// block is issued at once. (At 256, the first GPU run measured attention at 0.6 TB/s.)
pub const ATTENTION_SPLIT_TOKENS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    #[error("node {node}: {op} has no kernel emitter yet{hint}")]
    Unsupported { node: String, op: &'static str, hint: &'static str },
    #[error("node {node}: {message}")]
    Shape { node: String, message: String },
}

/// What one call of a kernel costs. Bytes count each operand and result once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Cost {
    pub flops: u64,
    pub weight_bytes: u64,
    pub activation_bytes: u64,
    /// KV-cache bytes read per token of context (attention).
    pub kv_bytes_per_context_token: u64,
}

impl Cost {
    pub fn bytes_at(&self, context: u64) -> u64 {
        self.weight_bytes + self.activation_bytes + self.kv_bytes_per_context_token * context
    }
}

/// One launch in the schedule.
#[derive(Clone, Debug)]
pub struct Scheduled {
    /// Index into `Program::kernels`.
    pub kernel: usize,
    /// The IR node it computes and that node's op, as printed (`linear_rmsnorm[norm_eps=…]`).
    pub node: String,
    /// The decoder layer of that node, as the model marked it.
    pub layer: Option<u32>,
    pub op: String,
    /// The buffers it reads, by weight/input name or node name, in operand order.
    pub operands: Vec<String>,
    pub cost: Cost,
    /// The node and its operands as graph ids (operands as the graph has them, views
    /// included: a runtime passes the buffer under the view, the kernel applies the view).
    pub node_id: NodeId,
    pub operand_ids: Vec<NodeId>,
    /// The kernel's parameter list, in the calling convention's terms.
    pub params: Params,
}

/// A launch's parameter list. Every kernel ends with `const smelt_step* step`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Params {
    /// `(operands…, output, step)`.
    Standard,
    /// Flash-decoding's split kernel: `(operands…, output, float* scratch, step)`; it writes
    /// partials to the scratch buffer, sized by [`kernels::decode_attention_scratch_bytes`].
    AttentionSplit(AttentionSpec),
    /// Its combine kernel: `(const float* scratch, output, step)`.
    AttentionCombine(AttentionSpec),
}

impl Program {
    /// `kernels.json`: per kernel its name, kind, the fused op it computes, operands, output,
    /// launch configuration and cost per call.
    pub fn to_json(&self) -> serde_json::Value {
        let kernels: Vec<serde_json::Value> = self
            .kernels
            .iter()
            .map(|k| {
                let launches: Vec<&Scheduled> = self.launches.iter().filter(|s| &self.kernels[s.kernel] == k).collect();
                let first = launches.first();
                let l = &k.launch;
                let grid = match &l.grid {
                    kernels::Grid::Fixed(n) => serde_json::json!({ "fixed": n }),
                    kernels::Grid::Cover { shape, per_block, max } => {
                        serde_json::json!({ "cover": shape.to_string(), "per_block": per_block, "max": max })
                    }
                };
                let cost = first.map(|s| s.cost.clone()).unwrap_or_default();
                serde_json::json!({
                    "name": k.name,
                    "kind": k.kind,
                    "fused_op": first.map(|s| s.op.as_str()),
                    "launch": { "block": l.block, "grid": grid, "shared_bytes": l.shared_bytes },
                    "calls_per_step": launches.len(),
                    "per_call": {
                        "flops": cost.flops,
                        "weight_bytes": cost.weight_bytes,
                        "activation_bytes": cost.activation_bytes,
                        "kv_bytes_per_context_token": cost.kv_bytes_per_context_token,
                    },
                    "calls": launches.iter().map(|s| serde_json::json!({ "node": s.node, "inputs": s.operands, "output": s.node })).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({ "kernels": kernels })
    }
}

/// Distinct kernels (every layer launches the same ones: compiled once) and the launch
/// schedule of one step.
#[derive(Clone, Debug, Default)]
pub struct Program {
    pub kernels: Vec<Kernel>,
    pub launches: Vec<Scheduled>,
}

/// The buffer a view chain (reshape, last-axis slice) reads, and how rows are addressed in it.
/// A row is everything after the leading (token) dim, which the views here keep: a row of
/// the base buffer holds one token's values.
pub fn resolve_view(g: &Graph, mut id: NodeId) -> (NodeId, View) {
    use smelt_ir::Bound::{FromEnd, FromStart};
    let width = |id: NodeId| g.node(id).shape.dims()[1..].iter().map(|d| d.fixed().unwrap_or(1)).product();
    let mut offset = 0;
    let mut from_last_row = false;
    loop {
        match g.node(id).op {
            Op::Reshape { .. } => id = g.operands(id)[0],
            Op::Slice { axis, start: FromStart(s), .. } if axis + 1 == g.node(id).shape.rank() => {
                offset += s;
                id = g.operands(id)[0];
            }
            // The last row of a 2-D value whose rows are the new tokens (`[T, d]`).
            Op::Slice { axis: 0, start: FromEnd(1), end: FromEnd(0) }
                if !from_last_row && g.node(id).shape.rank() == 2 =>
            {
                from_last_row = true;
                id = g.operands(id)[0];
            }
            _ => return (id, View { offset, row_stride: width(id), from_last_row }),
        }
    }
}

/// Whether x (`ops[0]` of a matmul) is T whole rows, as the GEMM reads it.
fn x_is_t_rows(g: &Graph, x: NodeId) -> bool {
    let (base, view) = resolve_view(g, x);
    g.node(x).shape.dims().first() == Some(&Dim::Sym(Sym::NewTokens))
        && !g.node(base).op.is_view()
        && !view.from_last_row
}

/// Shapes the emitters handle; anything else is a clear error, not an emitter's assertion.
fn supported(node: &str, ok: bool, what: &str) -> Result<(), CodegenError> {
    if ok {
        Ok(())
    } else {
        Err(CodegenError::Shape { node: node.to_string(), message: format!("no kernel for this shape yet: {what}") })
    }
}

/// One warp per head, each lane owning 4 to 16 bytes of it.
fn head_dim_ok(d: usize, dtype: DType) -> bool {
    let per_lane = d / 32;
    d % 32 == 0 && per_lane.is_power_of_two() && (4..=16).contains(&(per_lane * dtype.size_bytes()))
}

fn gemv_ok(rows: usize, k: usize, dtype: DType) -> bool {
    let elt = dtype.size_bytes();
    (1..=kernels::GEMV_MAX_ROWS).contains(&rows)
        && k > 0
        && (k * elt) % 16 == 0
        && rows * k * elt <= kernels::GEMV_MAX_SHARED
}

fn fixed(node: &str, d: Dim) -> Result<usize, CodegenError> {
    d.fixed().ok_or_else(|| CodegenError::Shape { node: node.to_string(), message: format!("dim {d} must be fixed") })
}

fn bytes(shape: &Shape, dtype: DType, b: &Bindings) -> u64 {
    (shape.resolve(b).iter().product::<usize>() * dtype.size_bytes()) as u64
}

/// A kernel's name: what its node computes, then the kernel kind (label `qkv`, kind
/// `gemv_rmsnorm` → `qkv_gemv_rmsnorm`). What it computes is the label the model gave the node
/// (an empty label leaves the kind alone), else the last part of the node's name. Never the
/// layer: every layer runs the same kernel.
fn name_for(node: &Node, kind: &str) -> String {
    let what = match (&node.meta.label, &node.name) {
        (Some(label), _) => label.as_str(),
        (None, Some(name)) => name.rsplit('.').next().unwrap_or(name),
        (None, None) => "",
    };
    let name = if what.is_empty() { kind.to_string() } else { format!("{what}_{kind}") };
    kernels::kernel_name(&name)
}

/// Emits the kernels of a fused decode or prefill graph in topological order.
pub fn emit(g: &Graph) -> Result<Program, CodegenError> {
    emit_with(g, EmitOptions::default())
}

/// Choices [`emit`] leaves at their defaults.
#[derive(Clone, Copy, Debug, Default)]
pub struct EmitOptions {
    /// A graph of T new-token rows runs as a batched decode step: each row is a sequence of
    /// its own (the step's `row_positions` and `row_tables`), so attention is the decode
    /// kernel, row by row, instead of the prefill kernel's causal tiles over one sequence.
    pub rows_are_sequences: bool,
}

/// [`emit`] with options.
pub fn emit_with(g: &Graph, options: EmitOptions) -> Result<Program, CodegenError> {
    let order = g.topo_order().unwrap_or_else(|| g.node_ids().collect());
    let step = Bindings { batch: 1, new_tokens: 1, cached_tokens: 0 };
    let decode = g.pinned(Sym::NewTokens) == Some(1);
    let mut program = Program::default();
    for id in order {
        let node = g.node(id);
        if node.op.is_leaf() || node.op.is_view() {
            continue;
        }
        let label = node.name.clone().unwrap_or_else(|| format!("%{}", id.index()));
        let ops = g.operands(id);
        let ty = |x: NodeId| (g.node(x).dtype, g.node(x).shape.clone());
        let mut cost = Cost::default();
        for &x in &ops {
            let (base, _) = resolve_view(g, x);
            let n = g.node(base);
            match n.op {
                Op::Weight { .. } => cost.weight_bytes += bytes(&n.shape, n.dtype, &step),
                Op::Input { .. } if n.shape.dims().first() == Some(&Dim::Sym(Sym::CachedTokens)) => {}
                _ => cost.activation_bytes += bytes(&n.shape, n.dtype, &step),
            }
        }
        if node.op.kv_cache_operand().is_none() {
            cost.activation_bytes += bytes(&node.shape, node.dtype, &step);
        }
        // One entry per kernel the op becomes, when not all Standard.
        let mut params: Vec<Params> = Vec::new();
        let unsupported = |hint| CodegenError::Unsupported { node: label.clone(), op: node.op.kind(), hint };
        let kernels: Vec<Kernel> = match &node.op {
            Op::Linear { norm_eps: Some(_), .. } if !decode => {
                return Err(unsupported(
                    ": a prefill matmul with a norm prologue (prefill keeps RMSNorm as its own op)",
                ))
            }
            // A prefill matmul over T rows; one over the last row (the lm_head when only the
            // last position's logits are wanted) is a GEMV below.
            Op::Linear { norm_eps: None, .. } | Op::MatMul if !decode && x_is_t_rows(g, ops[0]) => {
                let (_, view) = resolve_view(g, ops[0]);
                let w = &g.node(ops[1]).shape;
                let (n, k) = (fixed(&label, w.dims()[0])?, fixed(&label, w.dims()[1])?);
                let epilogue = match &node.op {
                    Op::Linear { epilogue, .. } => epilogue.as_ref(),
                    _ => None,
                };
                let extras: Vec<(DType, Shape)> = ops[2..].iter().map(|&e| ty(e)).collect();
                let dtype = g.node(ops[1]).dtype;
                let spec =
                    kernels::GemmSpec { k, n, dtype, x_view: view, epilogue, extras: &extras, out_dtype: node.dtype };
                if let Some(why) = kernels::gemm_unsupported(&spec) {
                    supported(&label, false, &why)?;
                }
                // FLOPs at one new token, like every cost here (multiply by T).
                cost.flops = 2 * (n * k) as u64;
                let kind = if epilogue.is_some() { "gemm_epilogue" } else { "gemm" };
                vec![kernels::linear_gemm(&name_for(node, kind), &spec)]
            }
            Op::Linear { norm_eps, epilogue } => {
                let (_, view) = resolve_view(g, ops[0]);
                let w = &g.node(ops[1]).shape;
                let (n, k) = (fixed(&label, w.dims()[0])?, fixed(&label, w.dims()[1])?);
                let extras: Vec<(DType, Shape)> =
                    ops[2 + usize::from(norm_eps.is_some())..].iter().map(|&e| ty(e)).collect();
                let xs = &g.node(ops[0]).shape;
                let fixed_rows = xs.dims()[..xs.rank() - 1].iter().all(|d| d.fixed().is_some());
                supported(&label, fixed_rows, "a prefill matmul whose x is neither T whole rows nor the last row")?;
                let rows = xs.resolve(&step)[..xs.rank() - 1].iter().product();
                let what = format!("GEMV of {rows} rows with K = {k} (K x dtype bytes must be a multiple of 16)");
                supported(&label, gemv_ok(rows, k, g.node(ops[1]).dtype), &what)?;
                cost.flops = 2 * (rows * n * k) as u64;
                let spec = GemvSpec {
                    rows,
                    k,
                    n,
                    dtype: g.node(ops[1]).dtype,
                    x_view: view,
                    norm_eps: *norm_eps,
                    epilogue: epilogue.as_ref(),
                    extras: &extras,
                    out_dtype: node.dtype,
                };
                let kind = if norm_eps.is_some() { "gemv_rmsnorm" } else { "gemv" };
                vec![kernels::linear_gemv(&name_for(node, kind), &spec)]
            }
            Op::MatMul => {
                let xs = &g.node(ops[0]).shape;
                let one_row = xs.dims()[..xs.rank() - 1].iter().all(|d| d.fixed() == Some(1));
                supported(&label, one_row, "a matmul of more than one row outside the GEMM")?;
                let (_, view) = resolve_view(g, ops[0]);
                let w = &g.node(ops[1]).shape;
                let (n, k) = (fixed(&label, w.dims()[0])?, fixed(&label, w.dims()[1])?);
                supported(&label, gemv_ok(1, k, node.dtype), &format!("GEMV with K = {k}"))?;
                cost.flops = 2 * (n * k) as u64;
                let spec = GemvSpec {
                    rows: 1,
                    k,
                    n,
                    dtype: node.dtype,
                    x_view: view,
                    norm_eps: None,
                    epilogue: None,
                    extras: &[],
                    out_dtype: node.dtype,
                };
                vec![kernels::linear_gemv(&name_for(node, "gemv"), &spec)]
            }
            Op::NormRope { eps, append } => {
                let (_, view) = resolve_view(g, ops[0]);
                let s = &g.node(ops[0]).shape;
                let (heads, d) = (fixed(&label, s.dims()[1])?, fixed(&label, s.dims()[2])?);
                supported(&label, d % 32 == 0, &format!("head dim {d} (a multiple of 32 is needed)"))?;
                if *append {
                    vec![kernels::norm_rope_kv_append(
                        &name_for(node, "norm_rope_kv_append"),
                        heads,
                        d,
                        node.dtype,
                        *eps,
                        view,
                    )]
                } else {
                    vec![kernels::norm_rope(&name_for(node, "norm_rope"), heads, d, node.dtype, *eps, view)]
                }
            }
            Op::KvAppend => {
                let (_, view) = resolve_view(g, ops[1]);
                let s = &g.node(ops[1]).shape;
                let (heads, d) = (fixed(&label, s.dims()[1])?, fixed(&label, s.dims()[2])?);
                vec![kernels::kv_append(&name_for(node, "kv_append"), heads, d, node.dtype, view)]
            }
            Op::Attention { scale } | Op::NormRopeAttention { scale, .. } => {
                let eps = match node.op {
                    Op::NormRopeAttention { eps, .. } => Some(eps),
                    _ => None,
                };
                let (_, q_view) = resolve_view(g, ops[0]);
                let (q, k) = (&g.node(ops[0]).shape, &g.node(ops[ops.len() - 2]).shape);
                let spec = AttentionSpec {
                    heads: fixed(&label, q.dims()[1])?,
                    kv_heads: fixed(&label, k.dims()[1])?,
                    d: fixed(&label, q.dims()[2])?,
                    dtype: node.dtype,
                    scale: *scale,
                    q_view,
                    norm_rope_eps: eps,
                    split_tokens: ATTENTION_SPLIT_TOKENS,
                };
                cost.kv_bytes_per_context_token = (2 * spec.kv_heads * spec.d * node.dtype.size_bytes()) as u64;
                cost.flops = (4 * spec.heads * spec.d) as u64;
                // Prefill: flash attention on tensor cores where it has a kernel for the head
                // dim; otherwise the decode kernel, which is correct for any T (but reads the
                // cache once per query token).
                let one_sequence = !options.rows_are_sequences;
                if !decode && one_sequence && kernels::PrefillAttentionSpec::supports(spec.d, node.dtype) {
                    let prefill = kernels::PrefillAttentionSpec::from(&spec);
                    vec![kernels::prefill_attention(&name_for(node, "prefill_attention"), &prefill)]
                } else {
                    supported(
                        &label,
                        head_dim_ok(spec.d, node.dtype),
                        &format!("head dim {} in {}", spec.d, node.dtype),
                    )?;
                    let kernels = kernels::decode_attention(&name_for(node, "attention"), &spec);
                    if kernels.len() == 2 {
                        params = vec![Params::AttentionSplit(spec), Params::AttentionCombine(spec)];
                    }
                    kernels
                }
            }
            Op::RmsNorm { eps } => {
                let (_, view) = resolve_view(g, ops[0]);
                let s = &node.shape;
                let d = fixed(&label, *s.dims().last().expect("rank >= 1"))?;
                vec![kernels::rmsnorm(&name_for(node, "rmsnorm"), s.dims()[0], d, node.dtype, *eps, view)]
            }
            Op::Gather => {
                let t = &g.node(ops[0]).shape;
                let d = fixed(&label, t.dims()[1])?;
                // Only the gathered rows of the table are read.
                cost.weight_bytes = bytes(&node.shape, node.dtype, &step);
                vec![kernels::gather(&name_for(node, "gather"), node.shape.dims()[0], d, node.dtype)]
            }
            Op::ArgMax { .. } => {
                let s = &g.node(ops[0]).shape;
                let v = fixed(&label, *s.dims().last().expect("rank >= 1"))?;
                vec![kernels::argmax(&name_for(node, "argmax"), s.dims()[0], v, g.node(ops[0]).dtype)]
            }
            Op::Reduce { op, axis } => {
                let x = ty(ops[0]);
                supported(&label, x.0 != DType::I32 && node.dtype != DType::I32, "a reduction of i32")?;
                vec![kernels::reduce(&name_for(node, "reduce"), *op, (x.0, &x.1), *axis, node.dtype)]
            }
            Op::Elementwise { body } => {
                let inputs: Vec<(DType, Shape)> = ops.iter().map(|&x| ty(x)).collect();
                vec![kernels::elementwise(&name_for(node, "elementwise"), body, &inputs, (node.dtype, &node.shape))]
            }
            _ => return Err(unsupported(": run the pass pipeline first (primitive ops are not kernels)")),
        };
        let op = format!("{}[{}]", node.op.kind(), node.op.attrs());
        let operands: Vec<String> = ops
            .iter()
            .map(|&x| {
                let base = g.node(resolve_view(g, x).0);
                match &base.op {
                    Op::Weight { name } | Op::Input { name } => name.clone(),
                    _ => base.name.clone().unwrap_or_default(),
                }
            })
            .collect();
        for (i, kernel) in kernels.into_iter().enumerate() {
            // A multi-kernel op (split attention) charges its cost to its first kernel.
            let cost = if i == 0 { cost.clone() } else { Cost::default() };
            let index = match program.kernels.iter().position(|k| k.source == kernel.source) {
                Some(index) => index,
                None if program.kernels.iter().any(|k| k.name == kernel.name) => {
                    let message = format!("two different kernels are both named {}", kernel.name);
                    return Err(CodegenError::Shape { node: label.clone(), message });
                }
                None => {
                    program.kernels.push(kernel);
                    program.kernels.len() - 1
                }
            };
            program.launches.push(Scheduled {
                kernel: index,
                node: label.clone(),
                layer: node.meta.layer,
                op: op.clone(),
                operands: operands.clone(),
                cost,
                node_id: id,
                operand_ids: ops.clone(),
                params: params.get(i).copied().unwrap_or(Params::Standard),
            });
        }
    }
    Ok(program)
}
