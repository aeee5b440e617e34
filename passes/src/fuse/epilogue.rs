//! Matmul epilogues: an `Elementwise` op that consumes a matmul's result (or equal parts of it
//! along N, as after horizontal fusion) and nothing else of it becomes that matmul's epilogue:
//! SwiGLU `silu(gate)*up`, the residual add, the cast of the logits.

use smelt_ir::{Bound, Expr, ExprKind, FusedOp, Graph, IrError, NodeId, Op};

use super::{only_used_by, op, replace_with, topo};
use crate::pass::{Pass, Report};

pub struct FuseEpilogue;

/// A matmul without an epilogue: `(x, w, norm_w?)` and its `norm_eps`.
fn plain_matmul(g: &Graph, id: NodeId) -> Option<Option<f32>> {
    match op(g, id) {
        Op::MatMul => Some(None),
        Op::Fused(FusedOp::Linear { norm_eps, epilogue: None }) => Some(*norm_eps),
        _ => None,
    }
}

/// How an elementwise input reads the matmul `m`: whole, or as `part` of `parts` along N.
fn acc_part(g: &Graph, input: NodeId, m: NodeId) -> Option<ExprKind> {
    if input == m {
        return Some(ExprKind::Acc { part: 0, parts: 1 });
    }
    let n = g.node(m).shape.dims().last()?.fixed()?;
    match *op(g, input) {
        Op::Slice { axis, start: Bound::FromStart(s), end: Bound::FromStart(e) }
            if g.operands(input)[0] == m
                && axis + 1 == g.node(m).shape.rank()
                && e > s
                && n % (e - s) == 0
                && s % (e - s) == 0 =>
        {
            Some(ExprKind::Acc { part: s / (e - s), parts: n / (e - s) })
        }
        _ => None,
    }
}

impl Pass for FuseEpilogue {
    fn name(&self) -> &'static str {
        "fuse_epilogue"
    }

    fn run(&self, g: &mut Graph) -> Result<Report, IrError> {
        let mut report = Report::default();
        for e in topo(g) {
            if !g.contains(e) {
                continue;
            }
            let Op::Fused(FusedOp::Elementwise { body }) = op(g, e).clone() else { continue };
            let inputs = g.operands(e);
            // The matmul behind the first input that reads one.
            let Some(m) = inputs.iter().find_map(|&i| {
                let m = if matches!(op(g, i), Op::Slice { .. }) { g.operands(i)[0] } else { i };
                (plain_matmul(g, m).is_some() && acc_part(g, i, m).is_some()).then_some(m)
            }) else {
                continue;
            };
            // Every use of the matmul must be this op, directly or through a slice only it reads.
            let private = g.users(m).iter().all(|&u| u == e || (acc_part(g, u, m).is_some() && only_used_by(g, u, e)));
            let is_output = g.outputs().iter().any(|(_, o)| *o == m);
            let parts: Vec<Option<ExprKind>> = inputs.iter().map(|&i| acc_part(g, i, m)).collect();
            let acc_dims = |k: &ExprKind| match k {
                ExprKind::Acc { parts, .. } => g.node(m).shape.dims().last().and_then(|d| d.fixed()).map(|n| n / parts),
                _ => None,
            };
            let out_n = g.node(e).shape.dims().last().and_then(|d| d.fixed());
            let fits = parts.iter().flatten().all(|k| acc_dims(k) == out_n)
                && g.node(e).shape.rank() == g.node(m).shape.rank();
            if !private || is_output || !fits {
                continue;
            }
            let norm_eps = plain_matmul(g, m).expect("checked");
            let mut operands = g.operands(m);
            let mut remap = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                match part {
                    Some(k) => remap.push(k.clone()),
                    None => {
                        remap.push(ExprKind::Input(operands.len() - 2 - usize::from(norm_eps.is_some())));
                        operands.push(inputs[i]);
                    }
                }
            }
            let epilogue: Expr = body.map_inputs(&|i| remap[i].clone());
            replace_with(g, e, Op::Fused(FusedOp::Linear { norm_eps, epilogue: Some(epilogue) }), &operands);
            report.matched += 1;
            report.changed += 1;
        }
        report.note(format!("{} elementwise ops became matmul epilogues", report.matched));
        Ok(report)
    }
}
