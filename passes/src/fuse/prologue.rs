//! RMSNorm folded into the matmuls that consume it, as their prologue. Only in decode graphs
//! (`T` pinned to 1): there the norm of one row is nearly free inside a GEMV and saves a
//! kernel and a round trip; a prefill GEMM would redo the norm for every tile of columns.

use smelt_ir::{FusedOp, Graph, IrError, NodeId, Op, Sym};

use super::{op, replace_with, topo};
use crate::pass::{Pass, Report};

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
