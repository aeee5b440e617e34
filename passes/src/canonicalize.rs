//! Canonicalization: local rewrites that delete ops which do nothing, so that the pattern
//! matchers of later passes (fusion, planning) see one spelling of each computation.
//!
//! Rules, applied to live nodes until none fires:
//! - `cast_noop`: a `Cast` to its operand's own dtype is the operand;
//! - `reshape_noop`: a `Reshape` to its operand's own shape is the operand;
//! - `reshape_chain`: a `Reshape` of a `Reshape` is one `Reshape` of the inner operand (or the
//!   inner operand itself when the chain ends at its shape);
//! - `slice_whole`: a `Slice` whose bounds cover a whole fixed axis (as the decode graph's
//!   `last_position` slice `end-1:end` does on its fixed `1` token axis) is the operand;
//! - `concat_single`: a `Concat` of one operand is the operand.
//!
//! A rewritten node is rewired to its replacement (outputs included) and removed, and so are
//! the operands that thereby lost their last user (never `Input`s or outputs). Code that was
//! dead before the pass is neither rewritten nor removed: that is `Dce`'s job.

use std::collections::BTreeMap;

use smelt_ir::verify::live_nodes;
use smelt_ir::{Dim, Graph, IrError, Node, NodeId, Op, Shape};

use crate::pass::{Pass, Report};

pub struct Canonicalize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rule {
    CastNoop,
    ReshapeNoop,
    ReshapeChain,
    SliceWhole,
    ConcatSingle,
}

impl Rule {
    fn name(self) -> &'static str {
        match self {
            Rule::CastNoop => "cast_noop",
            Rule::ReshapeNoop => "reshape_noop",
            Rule::ReshapeChain => "reshape_chain",
            Rule::SliceWhole => "slice_whole",
            Rule::ConcatSingle => "concat_single",
        }
    }
}

/// What a matched node becomes.
enum Rewrite {
    /// An existing node of the very same dtype and shape.
    Existing(NodeId),
    /// A new `Reshape { to }` of this operand.
    Reshape(NodeId, Shape),
}

/// The rule that applies to `id`, if any. Every `Existing` replacement records the same dtype
/// and shape as `id`, so users still verify.
fn rewrite(graph: &Graph, id: NodeId) -> Option<(Rule, Rewrite)> {
    let node = graph.node(id);
    let operands = graph.operands(id);
    let x = *operands.first()?;
    let xn = graph.node(x);
    let same_type = |n: &Node| n.dtype == node.dtype && n.shape == node.shape;
    let rule = match &node.op {
        Op::Cast { to } if *to == xn.dtype => Rule::CastNoop,
        Op::Reshape { to } if *to == xn.shape => Rule::ReshapeNoop,
        Op::Reshape { to } if matches!(xn.op, Op::Reshape { .. }) => {
            let inner = *graph.operands(x).first()?;
            return Some(match same_type(graph.node(inner)) {
                true => (Rule::ReshapeChain, Rewrite::Existing(inner)),
                false => (Rule::ReshapeChain, Rewrite::Reshape(inner, to.clone())),
            });
        }
        Op::Slice { axis, start, end } => match xn.shape.dims().get(*axis) {
            Some(&Dim::Fixed(n)) if start.resolve(n) == Some(0) && end.resolve(n) == Some(n) => Rule::SliceWhole,
            _ => return None,
        },
        Op::Concat { .. } if operands.len() == 1 => Rule::ConcatSingle,
        _ => return None,
    };
    same_type(xn).then_some((rule, Rewrite::Existing(x)))
}

/// Removes the nodes of `candidates` (and then their operands, transitively) that have no
/// users left, unless they are graph outputs or `Input`s. Returns how many were removed.
fn prune(graph: &mut Graph, mut candidates: Vec<NodeId>) -> usize {
    let mut removed = 0;
    while let Some(id) = candidates.pop() {
        let keep = !graph.contains(id)
            || !graph.users(id).is_empty()
            || matches!(graph.node(id).op, Op::Input { .. })
            || graph.outputs().iter().any(|(_, o)| *o == id);
        if keep {
            continue;
        }
        candidates.extend(graph.operands(id));
        graph.remove_node(id);
        removed += 1;
    }
    removed
}

impl Pass for Canonicalize {
    fn name(&self) -> &'static str {
        "canonicalize"
    }

    /// Sweeps the live nodes in topological order, rewriting each until no rule applies (a
    /// collapsed reshape chain may itself be a no-op), and repeats sweeps to a fixed point.
    /// Every rewrite removes a node or shortens a reshape chain, so this terminates.
    fn run(&self, graph: &mut Graph) -> Result<Report, IrError> {
        let mut fired: BTreeMap<Rule, usize> = BTreeMap::new();
        let (mut added, mut removed) = (0, 0);
        loop {
            let order = graph.topo_order().ok_or(IrError::Cycle)?;
            let live = live_nodes(graph);
            let before = fired.values().sum::<usize>();
            for id in order.into_iter().filter(|id| live.contains(id)) {
                let mut cur = id;
                while graph.contains(cur) {
                    let Some((rule, rw)) = rewrite(graph, cur) else { break };
                    *fired.entry(rule).or_default() += 1;
                    let operands = graph.operands(cur);
                    let next = match rw {
                        Rewrite::Existing(x) => x,
                        Rewrite::Reshape(x, to) => {
                            added += 1;
                            let node = Node { op: Op::Reshape { to }, ..graph.node(cur).clone() };
                            graph.add_node(node, &[x])
                        }
                    };
                    graph.replace_all_uses(cur, next);
                    graph.remove_node(cur);
                    removed += 1 + prune(graph, operands);
                    cur = next;
                }
            }
            if fired.values().sum::<usize>() == before {
                break;
            }
        }
        let matched = fired.values().sum();
        let mut report = Report { matched, changed: added + removed, notes: Vec::new() };
        for (rule, n) in &fired {
            report.note(format!("{}: {n}", rule.name()));
        }
        if matched == 0 {
            report.note("nothing to simplify");
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use smelt_ir::{shape, Bound, Builder, DType, Sym, UnaryOp};

    use super::*;
    use crate::testing::{assert_same_eval, graph_strategy, random_graph, run_verified};
    use crate::{Cse, Dce, PassManager};

    const T: Sym = Sym::NewTokens;

    /// Builds `x: f32[T, 6]`, lets `f` add ops, outputs `exp(f(x))` as `y`, and returns the
    /// graph, the pass's result and its report, having checked that eval is bit-identical.
    fn check(f: impl FnOnce(&mut Builder, NodeId) -> NodeId) -> (Graph, Graph, Report) {
        let mut b = Builder::new();
        let x = b.input("x", DType::F32, shape![T, 6]);
        let v = f(&mut b, x);
        let y = b.unary("y", UnaryOp::Exp, v).unwrap();
        b.output("y", y).unwrap();
        let g = b.finish().unwrap();
        let (after, report) = run_verified(&Canonicalize, &g);
        assert_same_eval(&g, &after, 3, 0, 0.0);
        (g, after, report)
    }

    /// The operand the output's `exp` reads after the pass.
    fn exp_operand(g: &Graph) -> NodeId {
        g.operands(g.outputs()[0].1)[0]
    }

    #[test]
    fn each_rule_fires_and_is_counted() {
        let op = |b: &mut Builder, op: Op, x: NodeId| b.op("op", op, &[x]).unwrap();
        type Make = Box<dyn Fn(&mut Builder, NodeId) -> NodeId>;
        let cases: Vec<(&str, Make)> = vec![
            ("cast_noop", Box::new(move |b, x| op(b, Op::Cast { to: DType::F32 }, x))),
            ("reshape_noop", Box::new(move |b, x| op(b, Op::Reshape { to: shape![T, 6] }, x))),
            ("concat_single", Box::new(move |b, x| b.concat("cat", &[x], 1).unwrap())),
            ("slice_whole", Box::new(move |b, x| b.slice("s", x, 1, Bound::FromEnd(6), Bound::FromStart(6)).unwrap())),
        ];
        for (rule, f) in cases {
            let (g, after, report) = check(f);
            assert_eq!(report.notes, vec![format!("{rule}: 1")]);
            assert_eq!((report.matched, report.changed), (1, 1), "{rule}");
            assert_eq!(after.node_count(), g.node_count() - 1, "{rule}");
            assert_eq!(exp_operand(&after), after.inputs()[0].1, "{rule}");
        }
    }

    #[test]
    fn reshape_chains_collapse() {
        // Three reshapes to a new shape: one reshape of x; the middle ones are pruned.
        let (_, after, report) = check(|b, x| {
            let r = b.reshape("r1", x, shape![T, 2, 3]).unwrap();
            let r = b.reshape("r2", r, shape![6, T]).unwrap();
            b.reshape("r3", r, shape![T, 3, 2]).unwrap()
        });
        assert_eq!(report.notes, vec!["reshape_chain: 2"]);
        assert_eq!(after.node_count(), 3, "x, reshape, exp");
        let r = exp_operand(&after);
        assert_eq!(after.node(r).op, Op::Reshape { to: shape![T, 3, 2] });
        assert_eq!(after.node(r).name.as_deref(), Some("r3"), "the chain keeps the outer name");
        // A chain back to x's own shape is x.
        let (_, after, report) = check(|b, x| {
            let r = b.reshape("r1", x, shape![T, 3, 2]).unwrap();
            b.reshape("r2", r, shape![T, 6]).unwrap()
        });
        assert_eq!((report.notes, report.changed), (vec!["reshape_chain: 1".to_string()], 2));
        assert_eq!(exp_operand(&after), after.inputs()[0].1);
    }

    #[test]
    fn shared_inner_reshape_is_kept() {
        let mut keep = None;
        let (_, after, report) = check(|b, x| {
            let r1 = b.reshape("r1", x, shape![T, 2, 3]).unwrap();
            keep = Some(r1);
            let r2 = b.reshape("r2", r1, shape![T, 3, 2]).unwrap();
            let r2 = b.reshape("r2b", r2, shape![T, 6]).unwrap();
            let other = b.reshape("other", r1, shape![T, 6]).unwrap();
            b.add("sum", r2, other).unwrap()
        });
        assert_eq!(report.notes, vec!["reshape_chain: 3"]);
        let sum = exp_operand(&after);
        let x = after.inputs()[0].1;
        assert_eq!(after.operands(sum), vec![x, x]);
        assert!(!after.contains(keep.unwrap()), "r1 lost its last user");
    }

    #[test]
    fn decode_last_position_slice_vanishes_but_real_slices_stay() {
        let mut b = Builder::new();
        b.pin(T, 1);
        let h = b.input("h", DType::BF16, shape![1, 8]);
        let t = b.input("t", DType::BF16, shape![T, 8]);
        let last = b.slice("last_position", h, 0, Bound::FromEnd(1), Bound::FromEnd(0)).unwrap();
        // `end-1:end` of a symbolic axis, a partial slice, a real cast and reshape: all kept.
        let t_last = b.slice("t_last", t, 0, Bound::FromEnd(1), Bound::FromEnd(0)).unwrap();
        let part = b.slice("part", t_last, 1, Bound::FromStart(1), Bound::FromEnd(0)).unwrap();
        let wide = b.cast("wide", part, DType::F32).unwrap();
        let flat = b.reshape("flat", wide, shape![7]).unwrap();
        b.output("last", last).unwrap();
        b.output("flat", flat).unwrap();
        let g = b.finish().unwrap();
        let (after, report) = run_verified(&Canonicalize, &g);
        assert_eq!(report.notes, vec!["slice_whole: 1"]);
        assert_eq!(after.outputs()[0], ("last".to_string(), h), "the output is redirected to the input");
        assert!(after.contains(t_last) && after.contains(part) && after.contains(wide) && after.contains(flat));
        assert_same_eval(&g, &after, 1, 0, 0.0);
    }

    #[test]
    fn dead_patterns_are_left_for_dce() {
        let mut b = Builder::new();
        let x = b.input("x", DType::F32, shape![T, 6]);
        let c = b.op("noop", Op::Cast { to: DType::F32 }, &[x]).unwrap();
        let _dead = b.unary("dead", UnaryOp::Neg, c).unwrap();
        b.output("x", x).unwrap();
        let g = b.finish().unwrap();
        let (after, report) = run_verified(&Canonicalize, &g);
        assert_eq!((report.matched, report.notes), (0, vec!["nothing to simplify".to_string()]));
        assert_eq!(after.node_count(), 3);
    }

    #[test]
    fn random_graphs_exercise_every_rule() {
        let mut all: BTreeMap<String, usize> = BTreeMap::new();
        for seed in 0..200 {
            for note in run_verified(&Canonicalize, &random_graph(seed)).1.notes {
                *all.entry(note.split(':').next().unwrap().to_string()).or_default() += 1;
            }
        }
        for rule in ["cast_noop", "reshape_noop", "reshape_chain", "slice_whole", "concat_single"] {
            assert!(all.get(rule).copied().unwrap_or(0) >= 3, "{rule} rarely fires: {all:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Each rule replaces a node by one holding the very same elements (or a reshape of
        /// the same elements), so outputs are bit-identical (tolerance 0.0). The result
        /// verifies, keeps every input, and is a fixed point.
        #[test]
        fn canonicalize_preserves_eval(case in graph_strategy(), eval_seed: u64) {
            let (after, _) = run_verified(&Canonicalize, &case.graph);
            prop_assert_eq!(after.inputs(), case.graph.inputs());
            for t in [1, 3] {
                assert_same_eval(&case.graph, &after, t, eval_seed, 0.0);
            }
            prop_assert_eq!(run_verified(&Canonicalize, &after).1.matched, 0);
        }

        /// The cleanup pipeline as the compiler runs it, verified after every pass by the
        /// `PassManager`; still bit-identical (tolerance 0.0), and DCE leaves nothing dead.
        #[test]
        fn cleanup_pipeline_preserves_eval(case in graph_strategy(), eval_seed: u64) {
            let pm = PassManager::new(vec![Box::new(Canonicalize), Box::new(Cse), Box::new(Canonicalize), Box::new(Dce)]);
            let mut after = case.graph.clone();
            pm.run(&mut after, "cleanup").unwrap();
            let live = live_nodes(&after);
            let dead = after.node_ids().filter(|id| !live.contains(id) && !matches!(after.node(*id).op, Op::Input { .. }));
            prop_assert_eq!(dead.count(), 0);
            for t in [1, 2] {
                assert_same_eval(&case.graph, &after, t, eval_seed, 0.0);
            }
        }
    }
}
