//! Generic elementwise fusion: every maximal region of unary, binary and cast ops whose inner
//! values are used only inside the region becomes one `Elementwise` op whose body is the
//! region's expression tree. Scalar constants are inlined into the body.

use std::collections::HashMap;

use smelt_ir::{Expr, ExprKind, FusedOp, Graph, IrError, NodeId, Op};

use super::{only_used_by, op, replace_with, topo};
use crate::pass::{Pass, Report};

pub struct FuseElementwise;

fn is_elementwise(op: &Op) -> bool {
    matches!(op, Op::Unary(_) | Op::Binary(_) | Op::Cast { .. })
}

/// Builds the expression for `id`, absorbing operands private to the region and recording the
/// rest as inputs.
fn build(g: &Graph, id: NodeId, root: NodeId, inputs: &mut Vec<NodeId>, absorbed: &mut usize) -> Expr {
    let node = g.node(id);
    let absorb =
        id == root || (is_elementwise(&node.op) && g.users(id).len() == 1 && only_used_by(g, id, g.users(id)[0]));
    if !absorb {
        if let Op::Constant { values } = &node.op {
            if values.len() == 1 && node.shape.rank() == 0 {
                return Expr::new(ExprKind::Const(values[0]), node.dtype);
            }
        }
        let index = inputs.iter().position(|&x| x == id).unwrap_or_else(|| {
            inputs.push(id);
            inputs.len() - 1
        });
        return Expr::new(ExprKind::Input(index), node.dtype);
    }
    *absorbed += 1;
    let mut sub = |x: NodeId| Box::new(build(g, x, root, inputs, absorbed));
    let ops = g.operands(id);
    let kind = match &node.op {
        Op::Unary(u) => ExprKind::Unary(*u, sub(ops[0])),
        Op::Binary(b) => {
            let a = sub(ops[0]);
            ExprKind::Binary(*b, a, sub(ops[1]))
        }
        Op::Cast { .. } => ExprKind::Cast(sub(ops[0])),
        other => unreachable!("{} is not elementwise", other.kind()),
    };
    Expr::new(kind, node.dtype)
}

impl Pass for FuseElementwise {
    fn name(&self) -> &'static str {
        "fuse_elementwise"
    }

    fn run(&self, g: &mut Graph) -> Result<Report, IrError> {
        let mut report = Report::default();
        let order = topo(g);
        let position: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        // Roots are elementwise nodes not absorbed by a user; visit users first.
        for &root in order.iter().rev() {
            if !g.contains(root) || !is_elementwise(op(g, root)) {
                continue;
            }
            let users = g.users(root);
            let absorbed_by_user =
                users.len() == 1 && is_elementwise(op(g, users[0])) && only_used_by(g, root, users[0]);
            if absorbed_by_user && position.contains_key(&users[0]) {
                continue;
            }
            let (mut inputs, mut absorbed) = (Vec::new(), 0);
            let body = build(g, root, root, &mut inputs, &mut absorbed);
            replace_with(g, root, Op::Fused(FusedOp::Elementwise { body }), &inputs);
            report.matched += 1;
            report.changed += absorbed;
        }
        report.note(format!("{} elementwise regions from {} ops", report.matched, report.changed));
        Ok(report)
    }
}
