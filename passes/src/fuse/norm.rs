//! The norm family's fusions, in the order they run ([`fusions`]):
//! - [`FuseRmsNorm`]: RMSNorm from its primitive chain, as `models::qwen3` declares HF's
//!   Qwen3RMSNorm: `mul(w, cast?(mul(x32, rsqrt(add(mean(square(x32)), eps)))))` with
//!   `x32 = cast?(x)`.
//! - [`FuseNormRope`]: Q/K norm + RoPE: `x*cos + rotate_half(x)*sin` over an RMSNorm'd `x`,
//!   with the cos/sin tables computed from the positions, becomes one `NormRope` that computes
//!   the tables itself. Then the op that consumes it absorbs it: a KV append
//!   (`NormRope { append }`, the K-cache write), or on request attention's queries
//!   (`NormRopeAttention`).
//! - [`FuseNormPrologue`]: RMSNorm folded into the matmuls that consume it, as their
//!   prologue. Only in decode graphs (`T` pinned to 1): there the norm of one row is nearly
//!   free inside a GEMV and saves a kernel and a round trip; a prefill GEMM would redo the
//!   norm for every tile of columns.
//!
//! A new fusion around a norm is written here and listed in [`fusions`].

use smelt_ir::{BinaryOp, Bound, FusedOp, Graph, IrError, NodeId, Op, ReduceOp, Sym, UnaryOp};

use super::{only_used_by, op, replace_with, scalar_value, through_cast, topo};
use crate::pass::{Pass, Report};

/// The norm family's passes, in order: the norm first, then what absorbs it (RoPE before the
/// matmul prologue, which takes the norms RoPE left).
pub(super) fn fusions() -> [Box<dyn Pass>; 3] {
    [Box::new(FuseRmsNorm), Box::new(FuseNormRope::default()), Box::new(FuseNormPrologue)]
}

pub struct FuseRmsNorm;

/// The operands (x, w) and eps of an RMSNorm chain rooted at `root`, if it is one.
fn match_rmsnorm(g: &Graph, root: NodeId) -> Option<(NodeId, NodeId, f32)> {
    if *op(g, root) != Op::Binary(BinaryOp::Mul) {
        return None;
    }
    let ops = g.operands(root);
    // mul(w, normalized) with the weight on either side.
    [(ops[0], ops[1]), (ops[1], ops[0])].into_iter().find_map(|(w, y)| {
        if !matches!(op(g, w), Op::Weight { .. }) {
            return None;
        }
        let normalized = through_cast(g, y);
        if *op(g, normalized) != Op::Binary(BinaryOp::Mul) {
            return None;
        }
        let [x32, inv] = <[NodeId; 2]>::try_from(g.operands(normalized)).ok()?;
        if *op(g, inv) != Op::Unary(UnaryOp::Rsqrt) {
            return None;
        }
        let var = g.operands(inv)[0];
        if *op(g, var) != Op::Binary(BinaryOp::Add) {
            return None;
        }
        let [mean, eps_node] = <[NodeId; 2]>::try_from(g.operands(var)).ok()?;
        let eps = scalar_value(g, eps_node)?;
        let last = g.node(x32).shape.rank().checked_sub(1)?;
        if *op(g, mean) != (Op::Reduce { op: ReduceOp::Mean, axis: last }) {
            return None;
        }
        let sq = g.operands(mean)[0];
        if *op(g, sq) != Op::Unary(UnaryOp::Square) || g.operands(sq)[0] != x32 {
            return None;
        }
        let x = through_cast(g, x32);
        // The fused op keeps x's dtype throughout; the chain must end where it began.
        (g.node(x).dtype == g.node(root).dtype && g.node(x).shape == g.node(root).shape).then_some((x, w, eps))
    })
}

impl Pass for FuseRmsNorm {
    fn name(&self) -> &'static str {
        "fuse_rmsnorm"
    }

    fn run(&self, g: &mut Graph) -> Result<Report, IrError> {
        let mut report = Report::default();
        for root in topo(g) {
            if !g.contains(root) {
                continue;
            }
            if let Some((x, w, eps)) = match_rmsnorm(g, root) {
                replace_with(g, root, Op::Fused(FusedOp::RmsNorm { eps }), &[x, w]);
                report.matched += 1;
                report.changed += 1;
            }
        }
        report.note(format!("fused {} RMSNorm chains", report.matched));
        Ok(report)
    }
}

/// The norm + RoPE fusion. A fused NormRope goes into the KV append that is its only user;
/// into attention (as its queries) only with `queries_into_attention`, which the standard
/// pipeline leaves off: a decode attention block would redo the queries' norm + RoPE for each
/// of its splits, while on its own the queries' NormRope runs once per head, in the same
/// kernel as the k and v appends (`codegen`'s co-launch of the heads of one row).
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseNormRope {
    pub queries_into_attention: bool,
}

/// `(positions, inv_freq)` if `table` is `reshape(cast?(f(concat(freqs, freqs))))` with
/// `freqs = reshape(cast(positions)) * inv_freq` and `f` the given unary op.
fn match_table(g: &Graph, table: NodeId, f: UnaryOp) -> Option<(NodeId, NodeId)> {
    let table = if matches!(op(g, table), Op::Reshape { .. }) { g.operands(table)[0] } else { table };
    let trig = through_cast(g, table);
    if *op(g, trig) != Op::Unary(f) {
        return None;
    }
    let emb = g.operands(trig)[0];
    let halves = g.operands(emb);
    if !matches!(op(g, emb), Op::Concat { axis: 1 }) || halves.len() != 2 || halves[0] != halves[1] {
        return None;
    }
    let freqs = halves[0];
    if *op(g, freqs) != Op::Binary(BinaryOp::Mul) {
        return None;
    }
    let ops = g.operands(freqs);
    [(ops[0], ops[1]), (ops[1], ops[0])].into_iter().find_map(|(col, inv)| {
        let col = if matches!(op(g, col), Op::Reshape { .. }) { g.operands(col)[0] } else { col };
        let pos = through_cast(g, col);
        let is_input = matches!(op(g, pos), Op::Input { .. }) && g.node(pos).dtype == smelt_ir::DType::I32;
        (is_input && matches!(op(g, inv), Op::Constant { .. })).then_some((pos, inv))
    })
}

/// `(raw, norm_w, eps, positions, inv_freq)` of a norm+rope chain rooted at `root`.
fn match_norm_rope(g: &Graph, root: NodeId) -> Option<[NodeId; 4]> {
    if *op(g, root) != Op::Binary(BinaryOp::Add) {
        return None;
    }
    let [a, c] = <[NodeId; 2]>::try_from(g.operands(root)).ok()?;
    [(a, c), (c, a)].into_iter().find_map(|(x_cos, rot_sin)| {
        let both = |m: NodeId| (*op(g, m) == Op::Binary(BinaryOp::Mul)).then(|| g.operands(m));
        let (xc, rs) = (both(x_cos)?, both(rot_sin)?);
        let (x, cos, rot, sin) = (xc[0], xc[1], rs[0], rs[1]);
        let x_node = g.node(x);
        let d = x_node.shape.dims().last()?.fixed()?;
        let Op::Fused(FusedOp::RmsNorm { .. }) = op(g, x) else { return None };
        if x_node.shape.rank() != 3 {
            return None;
        }
        let parts = g.operands(rot);
        if !matches!(op(g, rot), Op::Concat { axis: 2 })
            || parts.len() != 2
            || *op(g, parts[0]) != Op::Unary(UnaryOp::Neg)
        {
            return None;
        }
        let (x2, x1) = (g.operands(parts[0])[0], parts[1]);
        let half = |s: NodeId, a: usize, b: usize| {
            *op(g, s) == (Op::Slice { axis: 2, start: Bound::FromStart(a), end: Bound::FromStart(b) })
                && g.operands(s)[0] == x
        };
        if !half(x1, 0, d / 2) || !half(x2, d / 2, d) {
            return None;
        }
        let (pos, inv) = match_table(g, cos, UnaryOp::Cos)?;
        if match_table(g, sin, UnaryOp::Sin)? != (pos, inv) {
            return None;
        }
        // Everything between the norm and the root must be private to this chain.
        let private = [(x2, parts[0]), (parts[0], rot), (x1, rot), (rot, rot_sin), (rot_sin, root), (x_cos, root)];
        if !private.iter().all(|&(n, user)| only_used_by(g, n, user)) {
            return None;
        }
        let mut x_users = g.users(x);
        x_users.sort();
        let mut expected = vec![x_cos, x1, x2];
        expected.sort();
        (x_users == expected).then_some([x, pos, inv, root])
    })
}

impl Pass for FuseNormRope {
    fn name(&self) -> &'static str {
        "fuse_norm_rope"
    }

    fn run(&self, g: &mut Graph) -> Result<Report, IrError> {
        let mut report = Report::default();
        let (mut appends, mut attentions) = (0, 0);
        for root in topo(g) {
            if !g.contains(root) {
                continue;
            }
            let Some([norm, pos, inv, _]) = match_norm_rope(g, root) else { continue };
            let Op::Fused(FusedOp::RmsNorm { eps }) = *op(g, norm) else { continue };
            let [raw, w] = <[NodeId; 2]>::try_from(g.operands(norm)).expect("rmsnorm has 2 operands");
            let fused = replace_with(g, root, Op::Fused(FusedOp::NormRope { eps, append: false }), &[raw, w, pos, inv]);
            report.matched += 1;
            let users = g.users(fused);
            let Some(&user) = users.first().filter(|&&u| only_used_by(g, fused, u)) else {
                continue;
            };
            let uops = g.operands(user);
            match op(g, user).clone() {
                // Not also the cache operand: that one is [P, ..], this one [T, ..].
                Op::KvAppend if uops[1] == fused => {
                    replace_with(
                        g,
                        user,
                        Op::Fused(FusedOp::NormRope { eps, append: true }),
                        &[raw, w, pos, inv, uops[0]],
                    );
                    appends += 1;
                }
                // Only as the queries; if k or v is the same value, it stays computed for them.
                Op::Attention { scale } if uops[0] == fused && self.queries_into_attention => {
                    replace_with(
                        g,
                        user,
                        Op::Fused(FusedOp::NormRopeAttention { eps, scale }),
                        &[raw, w, pos, inv, uops[1], uops[2]],
                    );
                    attentions += 1;
                }
                _ => {}
            }
        }
        report.changed = report.matched + appends + attentions;
        report.note(format!(
            "fused {} norm+rope chains; {appends} into a KV append, {attentions} into attention",
            report.matched
        ));
        Ok(report)
    }
}

pub struct FuseNormPrologue;

impl Pass for FuseNormPrologue {
    fn name(&self) -> &'static str {
        "fuse_norm_prologue"
    }

    fn run(&self, g: &mut Graph) -> Result<Report, IrError> {
        let mut report = Report::default();
        if g.pinned(Sym::NewTokens) != Some(1) {
            report.note("not a decode graph (T is not pinned to 1): norms stay separate");
            return Ok(report);
        }
        for norm in topo(g) {
            if !g.contains(norm) {
                continue;
            }
            let Op::Fused(FusedOp::RmsNorm { eps }) = *op(g, norm) else { continue };
            let users = g.users(norm);
            let is_output = g.outputs().iter().any(|(_, o)| *o == norm);
            let all_matmuls =
                users.iter().all(|&u| *op(g, u) == Op::MatMul && g.operands(u)[0] == norm && g.operands(u)[1] != norm);
            if users.is_empty() || is_output || !all_matmuls {
                continue;
            }
            let [h, w] = <[NodeId; 2]>::try_from(g.operands(norm)).expect("rmsnorm has 2 operands");
            for mm in users {
                let weight = g.operands(mm)[1];
                replace_with(
                    g,
                    mm,
                    Op::Fused(FusedOp::Linear { norm_eps: Some(eps), epilogue: None }),
                    &[h, weight, w],
                );
                report.changed += 1;
            }
            report.matched += 1;
        }
        report.note(format!("folded {} norms into {} matmul prologues", report.matched, report.changed));
        Ok(report)
    }
}
