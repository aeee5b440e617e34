//! A `Program`: the kernels of one fused graph in launch order, each with the IR node it
//! computes and what a call costs (FLOPs, bytes of weights, activations and KV cache), at one
//! new token. Decode graphs (`T` pinned to 1) get GEMVs and flash-decoding attention; prefill
//! graphs (symbolic `T`) get the tensor-core GEMM, with a GEMV over the step's rows that runs
//! instead at steps of few rows ([`FewRows`]), and prefill attention.

use serde::Serialize;
use smelt_ir::{Bindings, DType, Dim, Graph, NodeId, Op, Shape, Sym};

pub use crate::kernels::Params;
use crate::kernels::{self, Kernel, View};

mod kinds;

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
    /// The IR nodes it computes: one, or several independent ones co-launched (the q, k and v
    /// heads' kernel). The kernel's parameters are each node's operands and output in this
    /// order, then the step (see [`Params`]).
    pub nodes: Vec<Served>,
    /// The decoder layer of its nodes, as the model marked them.
    pub layer: Option<u32>,
    pub cost: Cost,
    /// The kernel's parameter list, in the calling convention's terms.
    pub params: Params,
    /// A kernel that computes the same nodes at a step of few new tokens (a GEMM's GEMV),
    /// which runs instead when the step has that many or fewer.
    pub few_rows: Option<FewRows>,
}

/// The kernel a launch runs instead at a step of at most `rows` new tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct FewRows {
    /// Index into `Program::kernels`.
    pub kernel: usize,
    pub rows: usize,
    pub params: Params,
}

/// A node a launch computes.
#[derive(Clone, Debug)]
pub struct Served {
    /// Its name (or `%index`) and its op, as printed (`linear_rmsnorm[norm_eps=…]`).
    pub node: String,
    pub op: String,
    /// The buffers it reads, by weight/input name or node name, in operand order.
    pub operands: Vec<String>,
    /// The node and its operands as graph ids (operands as the graph has them, views
    /// included: a runtime passes the buffer under the view, the kernel applies the view).
    pub node_id: NodeId,
    pub operand_ids: Vec<NodeId>,
}

impl Scheduled {
    /// The nodes' names, joined by `+` (`l00.q_rope+l00.k_append`).
    pub fn node_names(&self) -> String {
        self.nodes.iter().map(|n| n.node.as_str()).collect::<Vec<_>>().join("+")
    }

    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.iter().map(|n| n.node_id)
    }

    /// The kernel that runs at a step of `new_tokens` new tokens, and its parameter list.
    pub fn kernel_at(&self, new_tokens: usize) -> (usize, &Params) {
        match &self.few_rows {
            Some(f) if new_tokens <= f.rows => (f.kernel, &f.params),
            _ => (self.kernel, &self.params),
        }
    }
}

impl Program {
    /// `kernels.json`: per kernel its name, kind, the fused op it computes, operands, output,
    /// launch configuration and cost per call; `at_most_rows` for a kernel that runs instead
    /// of another at steps of at most that many new tokens (a GEMM's GEMV), else null.
    pub fn to_json(&self) -> serde_json::Value {
        let kernels: Vec<serde_json::Value> = self
            .kernels
            .iter()
            .enumerate()
            .map(|(i, k)| {
                // A GEMV for few rows is listed with the launches it may stand in for.
                let few_rows = |s: &Scheduled| s.few_rows.as_ref().filter(|f| f.kernel == i).map(|f| f.rows);
                let launches: Vec<&Scheduled> =
                    self.launches.iter().filter(|s| s.kernel == i || few_rows(s).is_some()).collect();
                let at_most_rows = launches.first().and_then(|s| few_rows(s));
                let first = launches.first();
                let l = &k.launch;
                let grid = match &l.grid {
                    kernels::Grid::Fixed(n) => serde_json::json!({ "fixed": n }),
                    kernels::Grid::Cover { shape, per_block, max } => {
                        serde_json::json!({ "cover": shape.to_string(), "per_block": per_block, "max": max })
                    }
                    kernels::Grid::Tiles { rows, tile_rows, column_tiles, max, split_k } => serde_json::json!({
                        "tiles": { "rows": rows.to_string(), "tile_rows": tile_rows, "column_tiles": column_tiles },
                        "max": max,
                        "split_k": split_k.map(|s| serde_json::json!({
                            "k_steps": s.k_steps, "min_steps": s.min_steps, "target_blocks": s.target_blocks
                        })),
                    }),
                };
                let cost = first.map(|s| s.cost.clone()).unwrap_or_default();
                let fused_ops = first.map(|s| s.nodes.iter().map(|n| n.op.as_str()).collect::<Vec<_>>().join(" + "));
                let calls: Vec<serde_json::Value> = launches
                    .iter()
                    .flat_map(|s| &s.nodes)
                    .map(|n| serde_json::json!({ "node": n.node, "inputs": n.operands, "output": n.node }))
                    .collect();
                serde_json::json!({
                    "name": k.name,
                    "kind": k.kind,
                    "fused_op": fused_ops,
                    "launch": { "block": l.block, "grid": grid, "shared_bytes": l.shared_bytes },
                    "calls_per_step": launches.len(),
                    "at_most_rows": at_most_rows,
                    "per_call": {
                        "flops": cost.flops,
                        "weight_bytes": cost.weight_bytes,
                        "activation_bytes": cost.activation_bytes,
                        "kv_bytes_per_context_token": cost.kv_bytes_per_context_token,
                    },
                    "calls": calls,
                })
            })
            .collect();
        serde_json::json!({ "kernels": kernels })
    }
}

/// Distinct kernels (every layer launches the same ones: compiled once) and the launch
/// schedule of one step; for one rank of a tensor-parallel group, the exchanges between them.
#[derive(Clone, Debug, Default)]
pub struct Program {
    pub kernels: Vec<Kernel>,
    pub launches: Vec<Scheduled>,
    pub exchanges: Vec<Exchange>,
}

/// A collective (all-reduce, all-gather) in a rank's schedule: it runs after the first `after`
/// launches, over the value of `operand` into `node`'s buffer.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub after: usize,
    pub node: String,
    pub node_id: NodeId,
    pub operand_id: NodeId,
    /// `all_reduce[sum, world=4]`.
    pub op: String,
    pub layer: Option<u32>,
    /// Bytes of this rank's part (what it sends) and of the whole value (what every rank holds
    /// after), at one new token.
    pub part_bytes: u64,
    pub whole_bytes: u64,
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

/// The step every cost is priced at: one new token.
const ONE_TOKEN: Bindings = Bindings { batch: 1, new_tokens: 1, cached_tokens: 0 };

fn bytes(shape: &Shape, dtype: DType, b: &Bindings) -> u64 {
    (shape.resolve(b).iter().product::<usize>() * dtype.size_bytes()) as u64
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
    pub variants: Variants,
}

/// The kernel variants a GPU window compares: each at its default, its A/B twin a flag
/// (`--no-*`, `--l2-prefetch`, `--gemv-rows N`). A variant is a field here and a flag in the
/// CLI's `VariantArgs`. `smelt bench --json` records them, so a result names what it timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Variants {
    /// GEMMs split K among blocks when the output tiles are few (off: GEMMs that never split;
    /// `--no-split-k`).
    pub split_k: bool,
    /// Decode attention (T = 1) merges its splits in the last split's block instead of a
    /// combine kernel (off: split and combine; `--no-merged-attention`).
    pub merged_attention: bool,
    /// Decode GEMVs prefetch the weight rows they read into L2 before their grid-dependency
    /// wait (issue 17 A4; off by default until a GPU window measures it: `--l2-prefetch`).
    pub l2_prefetch: bool,
    /// Consecutive nodes run as one kernel where one is built for them: those over the heads
    /// of one row (q's norm + RoPE, k's norm + RoPE and append, v's append), and a one-row GEMV
    /// with the ArgMax of its result (off: a kernel per node; `--no-co-launch`).
    pub co_launch: bool,
    /// A prefill or batched step of at most this many new tokens runs each GEMM's matmul as a
    /// GEMV over its rows (issue 17 A5; fewer where the matmul's K leaves shared memory for
    /// fewer rows; 0: always the GEMM; `--gemv-rows N`).
    pub gemv_rows: usize,
}

/// [`Variants::gemv_rows`]' default: the rows below which a GEMV is expected to beat the GEMM
/// (a guess until a GPU window measures it: `bench/results/2026-11-28-h200-decode-tuning.md`).
pub const GEMV_ROWS: usize = 4;

impl Default for Variants {
    fn default() -> Variants {
        Variants { split_k: true, merged_attention: true, l2_prefetch: false, co_launch: true, gemv_rows: GEMV_ROWS }
    }
}

/// [`emit`] with options.
pub fn emit_with(g: &Graph, options: EmitOptions) -> Result<Program, CodegenError> {
    let order = g.topo_order().unwrap_or_else(|| g.node_ids().collect());
    // Views and leaves are no kernels: what remains runs in this order.
    let order: Vec<NodeId> =
        order.into_iter().filter(|&id| !g.node(id).op.is_leaf() && !g.node(id).op.is_view()).collect();
    let mut program = Program::default();
    let mut i = 0;
    while i < order.len() {
        if options.variants.co_launch {
            let mut run = co_launch_run(g, &order[i..], options);
            if !run.is_empty() {
                i += run.len();
                let planned = kinds::plan_co_launch(&mut run)?;
                let cost = cost_of(g, &run.iter().map(|n| n.id).collect::<Vec<_>>(), &planned);
                push_launches(&mut program, g, &run, planned, cost)?;
                continue;
            }
        }
        let (id, node) = (order[i], g.node(order[i]));
        let n = kinds::NodeCtx::new(g, id, options);
        i += 1;
        let planned = kinds::plan(&n)?;
        let cost = cost_of(g, &[id], &planned);
        if planned.exchange {
            let x = g.node(n.ops[0]);
            program.exchanges.push(Exchange {
                after: program.launches.len(),
                node: n.label.clone(),
                node_id: id,
                operand_id: n.ops[0],
                op: op_text(g, id),
                layer: node.meta.layer,
                part_bytes: bytes(&x.shape, x.dtype, &ONE_TOKEN),
                whole_bytes: bytes(&node.shape, node.dtype, &ONE_TOKEN),
            });
            continue;
        }
        push_launches(&mut program, g, std::slice::from_ref(&n), planned, cost)?;
    }
    Ok(program)
}

/// The longest run of kernel nodes at the start of `order` that [`kinds::co_launch`] accepts
/// (empty when not even the first two are).
fn co_launch_run<'g>(g: &'g Graph, order: &[NodeId], options: EmitOptions) -> Vec<kinds::NodeCtx<'g>> {
    let mut run: Vec<kinds::NodeCtx> = Vec::new();
    for &id in order {
        run.push(kinds::NodeCtx::new(g, id, options));
        if run.len() >= 2 && !kinds::co_launch(&run) {
            run.pop();
            break;
        }
    }
    if run.len() >= 2 {
        run
    } else {
        Vec::new()
    }
}

/// What one launch of `planned`, computing `ids`, costs.
fn cost_of(g: &Graph, ids: &[NodeId], planned: &kinds::Planned) -> Cost {
    let mut cost = base_cost(g, ids);
    cost.flops = planned.flops;
    cost.kv_bytes_per_context_token = planned.kv_bytes_per_context_token;
    if let Some(bytes) = planned.weight_bytes {
        cost.weight_bytes = bytes;
    }
    cost
}

fn op_text(g: &Graph, id: NodeId) -> String {
    let op = &g.node(id).op;
    format!("{}[{}]", op.kind(), op.attrs())
}

/// Appends the launches of `planned`'s kernels, which compute `nodes`, to the program (each
/// kernel compiled once: the same source reuses the kernel). A multi-kernel op (split
/// attention) charges its cost to its first kernel; a kernel for few rows goes with it too.
fn push_launches(
    program: &mut Program,
    g: &Graph,
    nodes: &[kinds::NodeCtx],
    planned: kinds::Planned,
    cost: Cost,
) -> Result<(), CodegenError> {
    let served: Vec<Served> = nodes
        .iter()
        .map(|n| Served {
            node: n.label.clone(),
            op: op_text(g, n.id),
            operands: n
                .ops
                .iter()
                .map(|&x| {
                    let base = g.node(resolve_view(g, x).0);
                    match &base.op {
                        Op::Weight { name } | Op::Input { name } => name.clone(),
                        _ => base.name.clone().unwrap_or_default(),
                    }
                })
                .collect(),
            node_id: n.id,
            operand_ids: n.ops.clone(),
        })
        .collect();
    let layer = g.node(nodes[0].id).meta.layer;
    let mut few_rows = match planned.few_rows {
        Some((kernel, rows)) => {
            let params = kernel.params.clone();
            Some(FewRows { kernel: add_kernel(program, kernel, &nodes[0].label)?, rows, params })
        }
        None => None,
    };
    for (i, kernel) in planned.kernels.into_iter().enumerate() {
        let params = kernel.params.clone();
        let index = add_kernel(program, kernel, &nodes[0].label)?;
        let cost = if i == 0 { cost.clone() } else { Cost::default() };
        let few_rows = few_rows.take();
        program.launches.push(Scheduled { kernel: index, nodes: served.clone(), layer, cost, params, few_rows });
    }
    Ok(())
}

/// `kernel`'s index in the program, added unless a kernel of the same source is there; two
/// different kernels of one name are an error (of `node`, the one being planned).
fn add_kernel(program: &mut Program, kernel: Kernel, node: &str) -> Result<usize, CodegenError> {
    match program.kernels.iter().position(|k| k.source == kernel.source) {
        Some(index) => Ok(index),
        None if program.kernels.iter().any(|k| k.name == kernel.name) => {
            let message = format!("two different kernels are both named {}", kernel.name);
            Err(CodegenError::Shape { node: node.to_string(), message })
        }
        None => {
            program.kernels.push(kernel);
            Ok(program.kernels.len() - 1)
        }
    }
}

/// Bytes the nodes of one launch move at one new token: each buffer they read once (weights
/// apart from activations; a KV cache read by the token, not here; not what one of them
/// computes) and their results, except appends to a cache.
fn base_cost(g: &Graph, ids: &[NodeId]) -> Cost {
    let mut cost = Cost::default();
    let mut read: Vec<NodeId> = ids.to_vec();
    for &id in ids {
        for x in g.operands(id) {
            let (base, _) = resolve_view(g, x);
            if read.contains(&base) {
                continue;
            }
            read.push(base);
            let n = g.node(base);
            match n.op {
                Op::Weight { .. } => cost.weight_bytes += bytes(&n.shape, n.dtype, &ONE_TOKEN),
                Op::Input { .. } if n.shape.dims().first() == Some(&Dim::Sym(Sym::CachedTokens)) => {}
                _ => cost.activation_bytes += bytes(&n.shape, n.dtype, &ONE_TOKEN),
            }
        }
        let node = g.node(id);
        if node.op.kv_cache_operand().is_none() {
            cost.activation_bytes += bytes(&node.shape, node.dtype, &ONE_TOKEN);
        }
    }
    cost
}
