//! How each fused op becomes kernels: [`plan`] is the one exhaustive match from a node's op to
//! its kernel kind, and each kind's function builds the kernel's spec from the node (refusing
//! shapes it has no kernel for, with a clear error), prices it and emits it.

use smelt_ir::{DType, Dim, FusedOp, Graph, Node, NodeId, Op, Shape, Sym};

use super::{bytes, resolve_view, CodegenError, EmitOptions, ATTENTION_SPLIT_TOKENS, ONE_TOKEN};
use crate::kernels::attention::AttentionSpec;
use crate::kernels::gemv::GemvSpec;
use crate::kernels::norm::{norm_rope_unsupported, HeadPart};
use crate::kernels::{self, Kernel, View};

/// A node being planned, and what every kind asks of it.
pub(crate) struct NodeCtx<'g> {
    g: &'g Graph,
    node: &'g Node,
    pub id: NodeId,
    pub ops: Vec<NodeId>,
    /// The node's name (or `%index`), for errors and the schedule.
    pub label: String,
    /// `T` is pinned to 1: a decode step (GEMVs); else a prefill or batched step (GEMMs).
    decode: bool,
    options: EmitOptions,
}

/// What a node becomes: its kernels in launch order, and the op-specific part of its cost at one
/// new token.
#[derive(Default)]
pub(crate) struct Planned {
    pub kernels: Vec<Kernel>,
    pub flops: u64,
    pub kv_bytes_per_context_token: u64,
    /// Replaces the weight bytes of the operands (a gather reads only the rows it picks).
    pub weight_bytes: Option<u64>,
    /// A collective: no kernel of this program; the runtime exchanges the value with the
    /// other ranks' programs at this point of the schedule.
    pub exchange: bool,
    /// The kernel that computes the node instead at steps of at most this many new tokens
    /// (a GEMM's GEMV over the step's rows).
    pub few_rows: Option<(Kernel, usize)>,
}

impl Planned {
    fn one(kernel: Kernel, flops: u64) -> Planned {
        Planned { kernels: vec![kernel], flops, ..Planned::default() }
    }

    fn exchange() -> Planned {
        Planned { exchange: true, ..Planned::default() }
    }
}

impl<'g> NodeCtx<'g> {
    pub fn new(g: &'g Graph, id: NodeId, options: EmitOptions) -> NodeCtx<'g> {
        let node = g.node(id);
        NodeCtx {
            g,
            node,
            id,
            ops: g.operands(id),
            label: node.name.clone().unwrap_or_else(|| format!("%{}", id.index())),
            decode: g.pinned(Sym::NewTokens) == Some(1),
            options,
        }
    }

    fn operand(&self, i: usize) -> &'g Node {
        self.g.node(self.ops[i])
    }

    /// How operand `i` is addressed through its views.
    fn view(&self, i: usize) -> View {
        resolve_view(self.g, self.ops[i]).1
    }

    /// Dtypes and shapes of operands `from..`.
    fn types_from(&self, from: usize) -> Vec<(DType, Shape)> {
        self.ops[from..].iter().map(|&x| (self.g.node(x).dtype, self.g.node(x).shape.clone())).collect()
    }

    fn fixed(&self, d: Dim) -> Result<usize, CodegenError> {
        d.fixed()
            .ok_or_else(|| CodegenError::Shape { node: self.label.clone(), message: format!("dim {d} must be fixed") })
    }

    /// Operand `i` is read before the kernel's grid-dependency wait (a GEMV loads its matrix
    /// and norm weight while the previous kernel finishes), which only a weight allows: any
    /// other value may not be written yet.
    fn read_before_wait(&self, i: usize) -> Result<(), CodegenError> {
        let is_weight = matches!(self.g.node(resolve_view(self.g, self.ops[i]).0).op, Op::Weight { .. });
        self.supported(is_weight, &format!("a GEMV whose operand {i} is not a weight (it is read before the PDL wait)"))
    }

    /// A weight operand `[n, k]`'s n and k.
    fn weight_nk(&self, i: usize) -> Result<(usize, usize), CodegenError> {
        let w = &self.operand(i).shape;
        Ok((self.fixed(w.dims()[0])?, self.fixed(w.dims()[1])?))
    }

    /// Shapes the emitters handle; anything else is a clear error, not an emitter's assertion.
    fn supported(&self, ok: bool, what: &str) -> Result<(), CodegenError> {
        if ok {
            Ok(())
        } else {
            Err(CodegenError::Shape {
                node: self.label.clone(),
                message: format!("no kernel for this shape yet: {what}"),
            })
        }
    }

    fn unsupported(&self, hint: &'static str) -> CodegenError {
        CodegenError::Unsupported { node: self.label.clone(), op: self.node.op.kind(), hint }
    }

    /// A kernel's name: what its node computes, then the kernel kind (label `qkv`, kind
    /// `gemv_rmsnorm` → `qkv_gemv_rmsnorm`). What it computes is the label the model gave the
    /// node (an empty label leaves the kind alone), else the last part of the node's name.
    /// Never the layer: every layer runs the same kernel.
    fn name(&self, kind: &str) -> String {
        named(self.what(), kind)
    }

    /// What the node computes, for kernel names: the label the model gave it, else the last
    /// part of its name.
    fn what(&self) -> &'g str {
        match (&self.node.meta.label, &self.node.name) {
            (Some(label), _) => label.as_str(),
            (None, Some(name)) => name.rsplit('.').next().unwrap_or(name),
            (None, None) => "",
        }
    }

    /// Whether x (operand 0 of a matmul) is T whole rows, as the GEMM reads it.
    fn x_is_t_rows(&self) -> bool {
        let (base, view) = resolve_view(self.g, self.ops[0]);
        self.operand(0).shape.dims().first() == Some(&Dim::Sym(Sym::NewTokens))
            && !self.g.node(base).op.is_view()
            && !view.from_last_row
    }

    /// Whether a matmul runs as the GEMM over T rows (a prefill or batched step whose x is T
    /// whole rows); otherwise it is a GEMV (decode, or the last row of a prefill).
    fn is_gemm(&self) -> bool {
        !self.decode && self.x_is_t_rows()
    }
}

/// A kernel's name from what it computes and its kind (`qkv`, `gemv_rmsnorm` →
/// `qkv_gemv_rmsnorm`; nothing computed named: the kind alone).
fn named(what: &str, kind: &str) -> String {
    kernels::kernel_name(&if what.is_empty() { kind.to_string() } else { format!("{what}_{kind}") })
}

/// The kernels of one fused node.
pub(crate) fn plan(n: &NodeCtx) -> Result<Planned, CodegenError> {
    let prefill = !n.decode;
    match &n.node.op {
        Op::Fused(FusedOp::Linear { norm_eps: Some(_), .. }) if prefill => {
            Err(n.unsupported(": a prefill matmul with a norm prologue (prefill keeps RMSNorm as its own op)"))
        }
        // A prefill matmul over T rows; one over the last row (the lm_head when only the last
        // position's logits are wanted) is a GEMV.
        Op::Fused(FusedOp::Linear { norm_eps: None, epilogue }) if n.is_gemm() => gemm(n, epilogue.as_ref()),
        Op::MatMul if n.is_gemm() => gemm(n, None),
        Op::Fused(FusedOp::Linear { norm_eps, epilogue }) => linear_gemv(n, *norm_eps, epilogue.as_ref(), false),
        Op::MatMul => matmul_gemv(n, false),
        Op::Fused(FusedOp::NormRope { eps, append }) => norm_rope(n, *eps, *append),
        Op::KvAppend => kv_append(n),
        Op::Attention { scale } => attention(n, *scale, None),
        Op::Fused(FusedOp::NormRopeAttention { scale, eps, .. }) => attention(n, *scale, Some(*eps)),
        Op::Fused(FusedOp::RmsNorm { eps }) => rmsnorm(n, *eps),
        Op::Gather => gather(n),
        Op::ArgMax { .. } => argmax(n),
        Op::Reduce { op, axis } => reduce(n, *op, *axis),
        Op::Fused(FusedOp::Elementwise { body }) => elementwise(n, body),
        Op::Input { .. } | Op::Weight { .. } | Op::Constant { .. } | Op::Reshape { .. } | Op::Slice { .. } => {
            Err(n.unsupported(": leaves and views are not kernels"))
        }
        Op::PartialGather { start, .. } => partial_gather(n, *start),
        Op::AllReduce { .. } | Op::AllGather { .. } => Ok(Planned::exchange()),
        Op::Unary(_) | Op::Binary(_) | Op::Concat { .. } | Op::Cast { .. } => {
            Err(n.unsupported(": run the pass pipeline first (primitive ops are not kernels)"))
        }
    }
}

fn gemm(n: &NodeCtx, epilogue: Option<&smelt_ir::Expr>) -> Result<Planned, CodegenError> {
    let (nw, k) = n.weight_nk(1)?;
    let extras = n.types_from(2);
    let dtype = n.operand(1).dtype;
    let spec = kernels::gemm::GemmSpec {
        k,
        n: nw,
        dtype,
        x_view: n.view(0),
        epilogue,
        extras: &extras,
        out_dtype: n.node.dtype,
        split_k: n.options.variants.split_k,
    };
    if let Some(why) = kernels::gemm::gemm_unsupported(&spec) {
        n.supported(false, &why)?;
    }
    let kind = if epilogue.is_some() { "gemm_epilogue" } else { "gemm" };
    // FLOPs at one new token, like every cost here (multiply by T).
    let mut planned = Planned::one(kernels::gemm::linear_gemm(&n.name(kind), &spec), 2 * (nw * k) as u64);
    planned.few_rows = few_rows_gemv(n, epilogue, &extras);
    Ok(planned)
}

/// The GEMV a GEMM node runs instead at a step of few rows: at most `Variants::gemv_rows`, or
/// as many as shared memory holds at its K if fewer (none: no alternative). A GEMM spreads one
/// 16-row tile's work over few blocks, and its tensor cores idle on the rows past T; the GEMV
/// spreads the columns over every SM and reads each weight byte once for all the rows.
fn few_rows_gemv(n: &NodeCtx, epilogue: Option<&smelt_ir::Expr>, extras: &[(DType, Shape)]) -> Option<(Kernel, usize)> {
    let (nw, k) = n.weight_nk(1).ok()?;
    n.read_before_wait(1).ok()?;
    let dtype = n.operand(1).dtype;
    let rows =
        (1..=n.options.variants.gemv_rows).rev().find(|&r| kernels::gemv::gemv_unsupported(r, k, dtype).is_none())?;
    let spec = GemvSpec {
        rows,
        rows_from_step: true,
        k,
        n: nw,
        dtype,
        x_view: n.view(0),
        norm_eps: None,
        epilogue,
        extras,
        out_dtype: n.node.dtype,
        l2_prefetch: n.options.variants.l2_prefetch,
        argmax: false,
    };
    Some((kernels::gemv::linear_gemv(&n.name("gemv_rows"), &spec), rows))
}

/// A GEMV node's kernel; with `argmax`, it also computes the ArgMax of its one row (the next
/// node, [`gemv_argmax`]).
fn linear_gemv(
    n: &NodeCtx,
    norm_eps: Option<f32>,
    epilogue: Option<&smelt_ir::Expr>,
    argmax: bool,
) -> Result<Planned, CodegenError> {
    let (nw, k) = n.weight_nk(1)?;
    n.read_before_wait(1)?;
    if norm_eps.is_some() {
        n.read_before_wait(2)?;
    }
    let extras = n.types_from(2 + usize::from(norm_eps.is_some()));
    let xs = &n.operand(0).shape;
    let fixed_rows = xs.dims()[..xs.rank() - 1].iter().all(|d| d.fixed().is_some());
    n.supported(fixed_rows, "a prefill matmul whose x is neither T whole rows nor the last row")?;
    let rows = xs.resolve(&ONE_TOKEN)[..xs.rank() - 1].iter().product();
    let dtype = n.operand(1).dtype;
    if let Some(why) = kernels::gemv::gemv_unsupported(rows, k, dtype) {
        n.supported(false, &why)?;
    }
    let spec = GemvSpec {
        rows,
        rows_from_step: false,
        k,
        n: nw,
        dtype,
        x_view: n.view(0),
        norm_eps,
        epilogue,
        extras: &extras,
        out_dtype: n.node.dtype,
        l2_prefetch: n.options.variants.l2_prefetch,
        argmax,
    };
    let kind = match (norm_eps.is_some(), argmax) {
        (true, false) => "gemv_rmsnorm",
        (true, true) => "gemv_rmsnorm_argmax",
        (false, false) => "gemv",
        (false, true) => "gemv_argmax",
    };
    Ok(Planned::one(kernels::gemv::linear_gemv(&n.name(kind), &spec), 2 * (rows * nw * k) as u64))
}

fn matmul_gemv(n: &NodeCtx, argmax: bool) -> Result<Planned, CodegenError> {
    let xs = &n.operand(0).shape;
    let one_row = xs.dims()[..xs.rank() - 1].iter().all(|d| d.fixed() == Some(1));
    n.supported(one_row, "a matmul of more than one row outside the GEMM")?;
    let (nw, k) = n.weight_nk(1)?;
    n.read_before_wait(1)?;
    let dtype = n.node.dtype;
    if let Some(why) = kernels::gemv::gemv_unsupported(1, k, dtype) {
        n.supported(false, &why)?;
    }
    let spec = GemvSpec {
        rows: 1,
        rows_from_step: false,
        k,
        n: nw,
        dtype,
        x_view: n.view(0),
        norm_eps: None,
        epilogue: None,
        extras: &[],
        out_dtype: dtype,
        l2_prefetch: n.options.variants.l2_prefetch,
        argmax,
    };
    let kind = if argmax { "gemv_argmax" } else { "gemv" };
    Ok(Planned::one(kernels::gemv::linear_gemv(&n.name(kind), &spec), 2 * (nw * k) as u64))
}

fn norm_rope(n: &NodeCtx, eps: f32, append: bool) -> Result<Planned, CodegenError> {
    let s = &n.operand(0).shape;
    let (heads, d) = (n.fixed(s.dims()[1])?, n.fixed(s.dims()[2])?);
    if let Some(why) = kernels::norm::norm_rope_unsupported(d) {
        n.supported(false, &why)?;
    }
    let (dtype, view) = (n.node.dtype, n.view(0));
    let kernel = if append {
        kernels::norm::norm_rope_kv_append(&n.name("norm_rope_kv_append"), heads, d, dtype, eps, view)
    } else {
        kernels::norm::norm_rope(&n.name("norm_rope"), heads, d, dtype, eps, view)
    };
    Ok(Planned::one(kernel, 0))
}

/// A node of a head-rows kernel: its part, and what must match the other parts': the value
/// whose heads it reads, the tokens and the head dim.
fn head_part(n: &NodeCtx) -> Option<(HeadPart, (NodeId, Dim, usize))> {
    let (x, part) = match n.node.op {
        Op::Fused(FusedOp::NormRope { eps, append }) => {
            let heads = n.operand(0).shape.dims()[1].fixed()?;
            (0, HeadPart::NormRope { heads, eps, x_view: n.view(0), append })
        }
        Op::KvAppend => (1, HeadPart::Append { heads: n.operand(1).shape.dims()[1].fixed()?, x_view: n.view(1) }),
        _ => return None,
    };
    let dims = n.operand(x).shape.dims();
    let (tokens, d) = (dims[0], dims[2].fixed()?);
    let (base, view) = resolve_view(n.g, n.ops[x]);
    // Every other operand is a leaf (norm weight, positions, frequencies, the cache): a part
    // reads nothing another part could write.
    let leaves = n.ops.iter().enumerate().all(|(i, &o)| i == x || n.g.node(resolve_view(n.g, o).0).op.is_leaf());
    (norm_rope_unsupported(d).is_none() && leaves && !view.from_last_row).then_some((part, (base, tokens, d)))
}

/// Whether consecutive kernel nodes `nodes` run as one kernel built for them: the heads of one
/// row ([`head_rows`]) or a GEMV with its argmax ([`gemv_argmax`]). Nothing runs between them,
/// so one launch at the first one's place computes what they would.
pub(crate) fn co_launch(nodes: &[NodeCtx]) -> bool {
    head_rows(nodes) || gemv_argmax(nodes)
}

/// Whether `nodes` are a matmul that runs as a GEMV of one row and the ArgMax of its result
/// over the last axis (the lm_head and the greedy token): one kernel whose blocks fold their
/// columns' best and whose last block folds theirs, instead of an argmax kernel reading the
/// logits back.
fn gemv_argmax(nodes: &[NodeCtx]) -> bool {
    let [gemv, argmax] = nodes else { return false };
    let gemv_planned = match gemv.node.op {
        // As `plan` chooses (a prefill matmul with a norm prologue has no kernel).
        Op::Fused(FusedOp::Linear { norm_eps, .. }) => !gemv.is_gemm() && (gemv.decode || norm_eps.is_none()),
        Op::MatMul => !gemv.is_gemm(),
        _ => false,
    };
    let xs = &gemv.operand(0).shape;
    let one_row = xs.dims()[..xs.rank() - 1].iter().all(|d| d.fixed() == Some(1));
    let last_axis = matches!(argmax.node.op, Op::ArgMax { axis } if axis + 1 == gemv.node.shape.rank());
    gemv_planned && one_row && last_axis && argmax.ops == [gemv.id]
}

/// Whether `nodes` (at least two) run as one [`kernels::norm::head_rows`] kernel: each is a
/// NormRope or KvAppend over heads of one value (the fused q/k/v projection's row), with the
/// same head dim, dtype and tokens. They read only that value and leaves, so no part reads
/// another's output, and no buffer the memory plan hands over between them is in use (the
/// value they share stays live until the last of them).
fn head_rows(nodes: &[NodeCtx]) -> bool {
    let Some(first) = nodes.first() else { return false };
    let Some((_, shared)) = head_part(first) else { return false };
    let like = |n: &NodeCtx| n.node.dtype == first.node.dtype && head_part(n).is_some_and(|(_, s)| s == shared);
    nodes.len() >= 2 && nodes.iter().all(like)
}

/// The one kernel of nodes that [`co_launch`] accepts: a GEMV with the argmax, or the heads'
/// kernel.
pub(crate) fn plan_co_launch(nodes: &mut [NodeCtx]) -> Result<Planned, CodegenError> {
    if gemv_argmax(nodes) {
        let n = &nodes[0];
        return match &n.node.op {
            Op::Fused(FusedOp::Linear { norm_eps, epilogue }) => linear_gemv(n, *norm_eps, epilogue.as_ref(), true),
            _ => matmul_gemv(n, true),
        };
    }
    Ok(Planned::one(plan_head_rows(nodes)?, 0))
}

/// The heads' kernel, its parts in order (sorted into `nodes`): the norms, then the plain
/// appends (the kernel's norm parts come first), each in the order of their heads in the row
/// they read (q, k, v).
fn plan_head_rows(nodes: &mut [NodeCtx]) -> Result<Kernel, CodegenError> {
    let order = |n: &NodeCtx| match head_part(n) {
        Some((HeadPart::NormRope { x_view, .. }, _)) => (0, x_view.offset),
        Some((HeadPart::Append { x_view, .. }, _)) => (1, x_view.offset),
        None => (2, 0),
    };
    nodes.sort_by_key(order);
    let parts: Vec<HeadPart> = nodes.iter().filter_map(|n| head_part(n).map(|(p, _)| p)).collect();
    let first = &nodes[0];
    let d = first.fixed(*first.node.shape.dims().last().expect("rank 3"))?;
    let norms = parts.iter().any(|p| matches!(p, HeadPart::NormRope { .. }));
    let appends = parts.iter().any(|p| matches!(p, HeadPart::NormRope { append: true, .. } | HeadPart::Append { .. }));
    let kind = match (norms, appends) {
        (true, true) => "norm_rope_kv_append",
        (true, false) => "norm_rope",
        (false, _) => "kv_append",
    };
    let whats: String = nodes.iter().map(|n| n.what()).collect();
    Ok(kernels::norm::head_rows(&named(&whats, kind), d, first.node.dtype, &parts))
}

fn kv_append(n: &NodeCtx) -> Result<Planned, CodegenError> {
    let s = &n.operand(1).shape;
    let (heads, d) = (n.fixed(s.dims()[1])?, n.fixed(s.dims()[2])?);
    Ok(Planned::one(kernels::norm::kv_append(&n.name("kv_append"), heads, d, n.node.dtype, n.view(1)), 0))
}

fn attention(n: &NodeCtx, scale: f32, norm_rope_eps: Option<f32>) -> Result<Planned, CodegenError> {
    let (q, k) = (&n.operand(0).shape, &n.operand(n.ops.len() - 2).shape);
    let dtype = n.node.dtype;
    let spec = AttentionSpec {
        heads: n.fixed(q.dims()[1])?,
        kv_heads: n.fixed(k.dims()[1])?,
        d: n.fixed(q.dims()[2])?,
        dtype,
        scale,
        q_view: n.view(0),
        norm_rope_eps,
        split_tokens: ATTENTION_SPLIT_TOKENS,
        // One counter per KV head: only a step of one token (a decode program) merges.
        merge_splits: n.decode && n.options.variants.merged_attention,
    };
    let mut planned = Planned {
        kernels: Vec::new(),
        flops: (4 * spec.heads * spec.d) as u64,
        kv_bytes_per_context_token: (2 * spec.kv_heads * spec.d * dtype.size_bytes()) as u64,
        ..Planned::default()
    };
    // Prefill: flash attention on tensor cores where it has a kernel for the head dim;
    // otherwise the decode kernel, which is correct for any T (but reads the cache once per
    // query token). A batched decode step's rows are sequences of their own: decode kernel.
    let one_sequence = !n.options.rows_are_sequences;
    if !n.decode && one_sequence && kernels::prefill_attention::PrefillAttentionSpec::supports(spec.d, dtype) {
        let prefill = kernels::prefill_attention::PrefillAttentionSpec::from(&spec);
        let kernel = kernels::prefill_attention::prefill_attention(&n.name("prefill_attention"), &prefill);
        planned.kernels.push(kernel);
        return Ok(planned);
    }
    if let Some(why) = spec.unsupported() {
        n.supported(false, &why)?;
    }
    planned.kernels = kernels::attention::decode_attention(&n.name("attention"), &spec);
    Ok(planned)
}

fn rmsnorm(n: &NodeCtx, eps: f32) -> Result<Planned, CodegenError> {
    let s = &n.node.shape;
    let d = n.fixed(*s.dims().last().expect("rank >= 1"))?;
    Ok(Planned::one(kernels::norm::rmsnorm(&n.name("rmsnorm"), s.dims()[0], d, n.node.dtype, eps, n.view(0)), 0))
}

fn gather(n: &NodeCtx) -> Result<Planned, CodegenError> {
    let d = n.fixed(n.operand(0).shape.dims()[1])?;
    let node = n.node;
    let mut planned = Planned::one(kernels::gather::gather(&n.name("gather"), node.shape.dims()[0], d, node.dtype), 0);
    // Only the gathered rows of the table are read.
    planned.weight_bytes = Some(bytes(&node.shape, node.dtype, &ONE_TOKEN));
    Ok(planned)
}

fn partial_gather(n: &NodeCtx, start: usize) -> Result<Planned, CodegenError> {
    let (part_rows, d) = n.weight_nk(0)?;
    let node = n.node;
    let kernel = kernels::gather::partial_gather(
        &n.name("partial_gather"),
        node.shape.dims()[0],
        d,
        node.dtype,
        start,
        part_rows,
    );
    let mut planned = Planned::one(kernel, 0);
    // At most the gathered rows of the table are read.
    planned.weight_bytes = Some(bytes(&node.shape, node.dtype, &ONE_TOKEN));
    Ok(planned)
}

fn argmax(n: &NodeCtx) -> Result<Planned, CodegenError> {
    let x = n.operand(0);
    let v = n.fixed(*x.shape.dims().last().expect("rank >= 1"))?;
    Ok(Planned::one(kernels::argmax::argmax(&n.name("argmax"), x.shape.dims()[0], v, x.dtype), 0))
}

fn reduce(n: &NodeCtx, op: smelt_ir::ReduceOp, axis: usize) -> Result<Planned, CodegenError> {
    let x = n.operand(0);
    n.supported(x.dtype != DType::I32 && n.node.dtype != DType::I32, "a reduction of i32")?;
    Ok(Planned::one(kernels::reduce::reduce(&n.name("reduce"), op, (x.dtype, &x.shape), axis, n.node.dtype), 0))
}

fn elementwise(n: &NodeCtx, body: &smelt_ir::Expr) -> Result<Planned, CodegenError> {
    let inputs = n.types_from(0);
    let out = (n.node.dtype, &n.node.shape);
    Ok(Planned::one(kernels::elementwise::elementwise(&n.name("elementwise"), body, &inputs, out), 0))
}
