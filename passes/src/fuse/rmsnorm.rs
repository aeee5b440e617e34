//! RMSNorm from its primitive chain, as `models::qwen3` declares HF's Qwen3RMSNorm:
//! `mul(w, cast?(mul(x32, rsqrt(add(mean(square(x32)), eps)))))` with `x32 = cast?(x)`.

use smelt_ir::{BinaryOp, FusedOp, Graph, IrError, NodeId, Op, ReduceOp, UnaryOp};

use super::{op, replace_with, scalar_value, through_cast, topo};
use crate::pass::{Pass, Report};

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
