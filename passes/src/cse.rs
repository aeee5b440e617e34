//! Common-subexpression elimination: merges nodes that compute the same value, so that e.g.
//! Qwen3's one RMSNorm `eps` scalar per norm (113 in a 28-layer model) becomes one constant
//! and later passes see one shared operand rather than many look-alikes.
//!
//! Two nodes are the same when their ops are equal (constants and f32 attributes compared by
//! bit pattern, so `0.0` and `-0.0` stay apart), their operands are the same nodes in the same
//! order, and their recorded dtype and shape agree. `Input`s never merge: each is a distinct
//! argument of the graph. `Weight`s merge by name, as the builder already does for tied ones.

use std::collections::{BTreeMap, HashMap};

use smelt_ir::{DType, Graph, IrError, NodeId, Op, Shape};

use crate::pass::{Pass, Report};

pub struct Cse;

/// An op as a hashable value; `None` for ops that never merge. Constants compare by the bits
/// of their values. Every other op compares by its `Debug` text: that spells each attribute,
/// and Rust prints an f32 exactly (shortest round-trip digits, `-0.0` apart from `0.0`), so the
/// key is as precise as comparing `to_bits` and needs no update when an op is added (fused
/// ops carry `Expr` trees and optional floats).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum OpKey {
    Constant(Vec<u32>),
    Other(String),
}

impl OpKey {
    fn of(op: &Op) -> Option<OpKey> {
        match op {
            Op::Input { .. } => None,
            Op::Constant { values } => Some(OpKey::Constant(values.iter().map(|v| v.to_bits()).collect())),
            op => Some(OpKey::Other(format!("{op:?}"))),
        }
    }
}

/// Everything that decides whether two nodes compute the same value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    op: OpKey,
    operands: Vec<NodeId>,
    dtype: DType,
    shape: Shape,
}

impl Pass for Cse {
    fn name(&self) -> &'static str {
        "cse"
    }

    /// One sweep in topological order suffices: by the time a node is keyed, each of its
    /// operands has already been replaced by its class's first member, so equal
    /// subexpressions of any depth meet under one key. The earliest node of a class survives
    /// (with its name); later ones are rewired to it and removed.
    fn run(&self, graph: &mut Graph) -> Result<Report, IrError> {
        let order = graph.topo_order().ok_or(IrError::Cycle)?;
        let mut seen: HashMap<Key, NodeId> = HashMap::new();
        let mut merged: BTreeMap<&'static str, usize> = BTreeMap::new();
        for id in order {
            let node = graph.node(id);
            let Some(op) = OpKey::of(&node.op) else { continue };
            let key = Key { op, operands: graph.operands(id), dtype: node.dtype, shape: node.shape.clone() };
            match seen.get(&key) {
                Some(&first) => {
                    *merged.entry(node.op.kind()).or_default() += 1;
                    graph.replace_all_uses(id, first);
                    graph.remove_node(id);
                }
                None => {
                    seen.insert(key, id);
                }
            }
        }
        let total = merged.values().sum();
        let mut report = Report { matched: total, changed: total, notes: Vec::new() };
        let kinds: Vec<String> = merged.iter().map(|(k, n)| format!("{n} {k}")).collect();
        report.note(match total {
            0 => "no duplicate nodes".to_string(),
            _ => format!("merged {total} duplicate nodes ({})", kinds.join(", ")),
        });
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use smelt_ir::{shape, BinaryOp, Builder, Sym, UnaryOp};

    use super::*;
    use crate::testing::{assert_same_eval, graph_strategy, run_verified};

    const T: Sym = Sym::NewTokens;

    /// A hand-made leaf, for what the builder will not make (two nodes for one weight
    /// name, constants whose values differ only in the sign of zero).
    fn leaf(g: &mut Graph, op: Op, dtype: DType, shape: Shape) -> NodeId {
        g.add_node(smelt_ir::Node::new(op, dtype, shape), &[])
    }

    fn konst(values: &[f32]) -> Op {
        Op::Constant { values: std::sync::Arc::new(values.to_vec()) }
    }

    #[test]
    fn merges_duplicate_constants_and_subexpressions() {
        let mut b = Builder::new();
        let x = b.input("x", DType::F32, shape![T, 4]);
        // Three RMSNorm-style eps scalars, as every Qwen3 norm declares its own.
        let eps: Vec<NodeId> = (0..3).map(|i| b.scalar(&format!("eps{i}"), DType::F32, 1e-6).unwrap()).collect();
        let a0 = b.add("a0", x, eps[0]).unwrap();
        let a1 = b.add("a1", x, eps[1]).unwrap();
        let a2 = b.add("a2", x, eps[2]).unwrap();
        // Equal only once a0..a2 have merged: CSE must see through depth.
        let e0 = b.unary("e0", UnaryOp::Exp, a0).unwrap();
        let e1 = b.unary("e1", UnaryOp::Exp, a1).unwrap();
        let s = b.add("s", e0, e1).unwrap();
        b.output("s", s).unwrap();
        b.output("a2", a2).unwrap();
        let g = b.finish().unwrap();
        let (after, report) = run_verified(&Cse, &g);
        assert_eq!((report.matched, report.changed), (5, 5));
        assert_eq!(report.notes, vec!["merged 5 duplicate nodes (2 add, 2 constant, 1 exp)"]);
        assert_eq!(after.node_count(), 5, "x, eps, add, exp, s");
        assert_eq!(after.operands(s), vec![e0, e0]);
        assert_eq!(after.outputs()[1], ("a2".to_string(), a0), "outputs follow the survivor");
        assert_eq!(after.node(eps[0]).name.as_deref(), Some("eps0"), "the first keeps its name");
        assert_same_eval(&g, &after, 3, 0, 0.0);
        assert_eq!(run_verified(&Cse, &after).1.matched, 0);
    }

    #[test]
    fn keeps_inputs_and_anything_that_differs() {
        let mut b = Builder::new();
        // Two inputs of identical type: different arguments, never merged.
        let x = b.input("x", DType::F32, shape![T, 4]);
        let y = b.input("y", DType::F32, shape![T, 4]);
        let nx = b.unary("nx", UnaryOp::Neg, x).unwrap();
        let ny = b.unary("ny", UnaryOp::Neg, y).unwrap();
        // Operand order matters; so do values, dtype and shape of constants.
        let d0 = b.binary("d0", BinaryOp::Sub, nx, ny).unwrap();
        let d1 = b.binary("d1", BinaryOp::Sub, ny, nx).unwrap();
        let c = [
            b.scalar("c", DType::F32, 1.0).unwrap(),
            b.scalar("c", DType::F32, 2.0).unwrap(),
            b.scalar("c", DType::BF16, 1.0).unwrap(),
            b.constant("c", DType::F32, shape![1], vec![1.0]).unwrap(),
        ];
        let mut outs = vec![d0, d1];
        outs.extend(c);
        for (i, id) in outs.into_iter().enumerate() {
            b.output(&format!("o{i}"), id).unwrap();
        }
        let mut g = b.finish().unwrap();
        // +0.0 and -0.0 compare equal as f32 but are different constants (1/x tells).
        let pz = leaf(&mut g, konst(&[0.0]), DType::F32, shape![]);
        let nz = leaf(&mut g, konst(&[-0.0]), DType::F32, shape![]);
        g.set_output("pz", pz);
        g.set_output("nz", nz);
        let (after, report) = run_verified(&Cse, &g);
        assert_eq!(report.matched, 0);
        assert_eq!(report.notes, vec!["no duplicate nodes"]);
        assert_eq!(after.node_count(), g.node_count());
    }

    #[test]
    fn merges_weights_by_name() {
        let mut g = Graph::new();
        let x = leaf(&mut g, Op::Input { name: "x".into() }, DType::F32, shape![T, 4]);
        let w0 = leaf(&mut g, Op::Weight { name: "w".into() }, DType::F32, shape![2, 4]);
        let w1 = leaf(&mut g, Op::Weight { name: "w".into() }, DType::F32, shape![2, 4]);
        let other = leaf(&mut g, Op::Weight { name: "v".into() }, DType::F32, shape![2, 4]);
        let node = |a: NodeId| smelt_ir::Node {
            name: Some(format!("mm{}", a.index())),
            ..smelt_ir::Node::new(Op::MatMul, DType::F32, shape![T, 2])
        };
        let m0 = g.add_node(node(w0), &[x, w0]);
        let m1 = g.add_node(node(w1), &[x, w1]);
        let m2 = g.add_node(node(other), &[x, other]);
        for (i, m) in [m0, m1, m2].into_iter().enumerate() {
            g.set_output(&format!("y{i}"), m);
        }
        let (after, report) = run_verified(&Cse, &g);
        assert_eq!(report.notes, vec!["merged 2 duplicate nodes (1 matmul, 1 weight)"]);
        assert!(!after.contains(w1) && !after.contains(m1) && after.contains(other));
        assert_eq!(after.outputs()[1], ("y1".to_string(), m0));
        assert_same_eval(&g, &after, 2, 0, 0.0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// CSE only points users at a node computing the same op on the same operand values;
        /// the evaluator is deterministic, so outputs are bit-identical (tolerance 0.0). The
        /// result verifies, keeps every input, and a second run finds nothing left to merge.
        #[test]
        fn cse_preserves_eval(case in graph_strategy(), eval_seed: u64) {
            let (after, report) = run_verified(&Cse, &case.graph);
            prop_assert_eq!(after.node_count() + report.changed, case.graph.node_count());
            prop_assert_eq!(after.inputs(), case.graph.inputs());
            for t in [1, 3] {
                assert_same_eval(&case.graph, &after, t, eval_seed, 0.0);
            }
            prop_assert_eq!(run_verified(&Cse, &after).1.matched, 0);
        }
    }

    /// Over many random graphs CSE has real work: constants, weights and repeated ops.
    #[test]
    fn random_graphs_give_cse_work() {
        let mut kinds = BTreeMap::new();
        for seed in 0..100 {
            let g = crate::testing::random_graph(seed);
            let (_, report) = run_verified(&Cse, &g);
            for note in report.notes {
                for kind in ["constant", "weight", "reshape", "cast"] {
                    if note.contains(&format!(" {kind}")) {
                        *kinds.entry(kind).or_insert(0) += 1;
                    }
                }
            }
        }
        assert_eq!(kinds.len(), 4, "{kinds:?}");
    }
}
