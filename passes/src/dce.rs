//! Dead-code elimination: removes every node the graph outputs do not depend on.
//!
//! Graph `Input`s are the calling convention (a runtime supplies each one by name on every
//! run, and `eval` insists on them), so they stay even when nothing reads them.

use smelt_ir::verify::live_nodes;
use smelt_ir::{Graph, IrError, NodeId, Op};

use crate::pass::{Pass, Report};

pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn run(&self, graph: &mut Graph) -> Result<Report, IrError> {
        let live = live_nodes(graph);
        let (mut dead, mut unused_inputs) = (Vec::<NodeId>::new(), 0);
        for id in graph.node_ids() {
            if live.contains(&id) {
                continue;
            }
            match graph.node(id).op {
                Op::Input { .. } => unused_inputs += 1,
                _ => dead.push(id),
            }
        }
        for &id in &dead {
            graph.remove_node(id);
        }
        let mut report = Report { matched: dead.len(), changed: dead.len(), notes: Vec::new() };
        report.note(format!("removed {} dead nodes", dead.len()));
        if unused_inputs > 0 {
            report.note(format!("kept {unused_inputs} unused graph inputs"));
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use smelt_ir::{shape, Builder, DType, Sym, UnaryOp};

    use super::*;
    use crate::testing::{assert_same_eval, graph_strategy, run_verified};

    const T: Sym = Sym::NewTokens;

    #[test]
    fn removes_dead_nodes_but_keeps_inputs() {
        let mut b = Builder::new();
        let x = b.input("x", DType::F32, shape![T, 4]);
        let unused = b.input("unused", DType::BF16, shape![3]);
        let w = b.weight("w", DType::F32, shape![2, 4]).unwrap();
        let c = b.scalar("c", DType::F32, 2.0).unwrap();
        let live = b.mul("live", x, c).unwrap();
        // Dead: a chain off a live node, plus its own weight.
        let mm = b.matmul("mm", live, w).unwrap();
        let dead = b.unary("dead", UnaryOp::Exp, mm).unwrap();
        // Dead: a user of the unused input.
        let neg = b.unary("neg", UnaryOp::Neg, unused).unwrap();
        b.output("y", live).unwrap();
        let g = b.finish().unwrap();
        let (after, report) = run_verified(&Dce, &g);
        assert_eq!((report.matched, report.changed), (4, 4));
        assert_eq!(report.notes, vec!["removed 4 dead nodes", "kept 1 unused graph inputs"]);
        for id in [w, mm, dead, neg] {
            assert!(!after.contains(id));
        }
        for id in [x, unused, c, live] {
            assert!(after.contains(id));
        }
        assert_eq!(after.inputs(), g.inputs());
        assert_same_eval(&g, &after, 3, 0, 0.0);
    }

    #[test]
    fn nothing_dead_matches_nothing() {
        let mut b = Builder::new();
        let x = b.input("x", DType::F32, shape![2]);
        b.output("x", x).unwrap();
        let g = b.finish().unwrap();
        let (after, report) = run_verified(&Dce, &g);
        assert_eq!((report.matched, report.changed), (0, 0));
        assert_eq!(after.node_count(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// DCE only drops nodes no output reads, so every output is bit-identical (tolerance
        /// 0.0); every input survives, nothing dead remains, and a second run finds nothing.
        #[test]
        fn dce_preserves_eval(case in graph_strategy(), eval_seed: u64) {
            let (after, _) = run_verified(&Dce, &case.graph);
            prop_assert_eq!(after.inputs(), case.graph.inputs());
            let live = live_nodes(&after);
            let dead = after.node_ids().filter(|id| !live.contains(id) && !matches!(after.node(*id).op, Op::Input { .. }));
            prop_assert_eq!(dead.count(), 0);
            for t in [1, 3] {
                assert_same_eval(&case.graph, &after, t, eval_seed, 0.0);
            }
            prop_assert_eq!(run_verified(&Dce, &after).1.matched, 0);
        }
    }
}
