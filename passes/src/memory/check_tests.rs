//! The plan checker against broken plans, and plans of random graphs and random intervals,
//! which it and the schedule simulator must pass.

use proptest::prelude::*;
use smelt_ir::{shape, Bound, Builder, DType, Graph, ReduceOp, Shape, UnaryOp};

use super::tests::{bind, planned, simulate, start, T};
use super::*;

#[test]
fn check_plan_catches_overlaps_and_bad_hand_overs() {
    let (mut b, x) = start();
    let a = b.unary("a", UnaryOp::Exp, x).unwrap();
    let n = b.unary("b", UnaryOp::Neg, x).unwrap();
    let c = b.add("c", a, n).unwrap();
    b.output("c", c).unwrap();
    let plan = planned(&b.finish().unwrap(), 3);
    let idx = |name: &str| plan.buffers.iter().position(|b| b.label == name).unwrap();

    let mut bad = plan.clone();
    bad.buffers[idx("b")].offset = bad.buffers[idx("a")].offset;
    let err = check_plan(&bad).unwrap_err();
    assert!(err.contains("overlaps") && err.contains('a') && err.contains('b'), "{err}");

    let mut bad = plan.clone();
    bad.buffers[idx("b")].offset += 256;
    let err = check_plan(&bad).unwrap_err();
    assert!(err.contains("overlaps") || err.contains("past the arena"), "{err}");

    let mut bad = plan.clone();
    bad.buffers[idx("c")].reuses = Some(plan.buffers[idx("b")].node);
    assert!(check_plan(&bad).unwrap_err().contains("reuses"));

    let mut bad = plan.clone();
    bad.buffers[idx("a")].offset += 8;
    bad.arena_bytes += 8;
    assert!(check_plan(&bad).unwrap_err().contains("aligned"));
}

/// Live intervals are inclusive: a buffer still read at position 2 conflicts with one written
/// at position 2 (unless that one takes it over in place), while 0..=1 and 2..=3 do not.
#[test]
fn check_plan_treats_touching_live_intervals_as_overlapping() {
    let buffer = |node, offset, start, end, reuses| Buffer {
        node,
        label: format!("n{node}"),
        offset,
        bytes: 512,
        start,
        end,
        reuses,
    };
    let plan = |a: Buffer, b: Buffer| MemoryPlan { buffers: vec![a, b], arena_bytes: 1024, naive_bytes: 1024 };
    // Touching at position 2, same bytes: a conflict.
    let err = check_plan(&plan(buffer(0, 0, 0, 2, None), buffer(1, 0, 2, 4, None))).unwrap_err();
    assert!(err.contains("overlaps"), "{err}");
    // Touching, the bytes overlapping by one 256-byte block: a conflict too.
    assert!(check_plan(&plan(buffer(0, 0, 0, 2, None), buffer(1, 256, 2, 4, None))).is_err());
    // The same, as an in-place hand-over (the later one reuses the earlier, at its offset).
    check_plan(&plan(buffer(0, 0, 0, 2, None), buffer(1, 0, 2, 4, Some(0)))).unwrap();
    // One position apart: disjoint, so the bytes may be shared.
    check_plan(&plan(buffer(0, 0, 0, 1, None), buffer(1, 0, 2, 4, None))).unwrap();
    // Side by side in the arena: no conflict at any time.
    check_plan(&plan(buffer(0, 0, 0, 4, None), buffer(1, 512, 0, 4, None))).unwrap();
    // An empty buffer (a dim bound to 0) holds no bytes, so it conflicts with nothing, even
    // placed inside another live one: whichever of the two comes first.
    let empty = Buffer { bytes: 0, ..buffer(1, 256, 0, 4, None) };
    check_plan(&plan(buffer(0, 0, 0, 4, None), empty.clone())).unwrap();
    check_plan(&plan(empty, buffer(0, 0, 0, 4, None))).unwrap();
}

/// Builds a graph from random steps, each applying an op to an earlier value (wrapped).
fn random_graph(steps: &[(u8, usize, usize)], outs: &[usize]) -> Graph {
    let mut b = Builder::new();
    let mut vals = vec![b.input("x", DType::F32, shape![T, 16]), b.input("y", DType::BF16, shape![T, 8])];
    for (k, &(op, i, j)) in steps.iter().enumerate() {
        let (a, c) = (vals[i % vals.len()], vals[j % vals.len()]);
        let name = format!("v{k}");
        let dt = b.dtype(a);
        let dims: Vec<usize> = b.shape(a).dims()[1..].iter().filter_map(|d| d.fixed()).collect();
        let width: usize = dims.iter().product();
        let tried = match op % 8 {
            0 => b.unary(&name, UnaryOp::Neg, a),
            1 => b.add(&name, a, c),
            2 if dims.len() == 1 && width % 2 == 0 && j % 2 == 0 => b.reshape(&name, a, shape![T, 2, width / 2]),
            2 if width > 1 => b.slice(&name, a, b.shape(a).rank() - 1, Bound::FromStart(j % 2), Bound::FromEnd(0)),
            2 => b.reshape(&name, a, shape![T, width]),
            3 => b.cast(&name, a, [DType::BF16, DType::F16, DType::F32][(j + 1) % 3]),
            4 => b.reduce(&name, ReduceOp::Sum, a, b.shape(a).rank() - 1),
            5 => {
                let w = b.weight(&format!("w{k}"), dt, Shape::new([12.into(), *b.shape(a).dims().last().unwrap()]));
                w.and_then(|w| b.matmul(&name, a, w))
            }
            6 if width <= 64 => b.concat(&name, &[a, c], b.shape(a).rank() - 1),
            _ => b.scalar(&format!("s{k}"), dt, 2.0).and_then(|s| b.mul(&name, a, s)),
        };
        vals.push(match tried {
            Ok(v) => v,
            Err(_) => b.unary(&name, UnaryOp::Sigmoid, a).unwrap(),
        });
    }
    let last = *vals.last().unwrap();
    b.output("last", last).unwrap();
    for (k, &o) in outs.iter().enumerate() {
        b.output(&format!("o{k}"), vals[o % vals.len()]).unwrap();
    }
    b.finish().unwrap()
}

proptest! {
    #[test]
    fn random_graphs_get_valid_plans(
        steps in prop::collection::vec((any::<u8>(), any::<usize>(), any::<usize>()), 1..40),
        outs in prop::collection::vec(any::<usize>(), 0..3),
        t in 0usize..6,
    ) {
        let g = random_graph(&steps, &outs);
        let plan = plan_memory(&g, &bind(t));
        prop_assert_eq!(check_plan(&plan), Ok(()));
        prop_assert_eq!(simulate(&g, &plan), Ok(()));
        prop_assert!(plan.arena_bytes <= plan.naive_bytes);
        let computed = g.node_ids().filter(|&id| {
            let op = &g.node(id).op;
            !op.is_leaf() && !op.is_view()
        });
        prop_assert_eq!(computed.count() + 2, plan.buffers.len(), "one buffer per computed value and input");
    }

    #[test]
    fn random_intervals_get_valid_offsets(
        raw in prop::collection::vec((0usize..50, 0usize..20, 0usize..9), 0..60),
    ) {
        let spans: Vec<Span> =
            raw.iter().map(|&(s, len, units)| Span { start: s, end: s + len, bytes: units * ARENA_ALIGN }).collect();
        let offsets = assign_offsets(&spans);
        let buffers: Vec<Buffer> = spans
            .iter()
            .zip(&offsets)
            .enumerate()
            .map(|(i, (s, &offset))| {
                let (start, end, bytes) = (s.start, s.end, s.bytes);
                Buffer { node: i, label: format!("%{i}"), offset, bytes, start, end, reuses: None }
            })
            .collect();
        let arena_bytes = buffers.iter().map(|b| b.offset + b.bytes).max().unwrap_or(0);
        let naive_bytes = buffers.iter().map(|b| b.bytes).sum();
        let peak = (0..70).map(|p| spans.iter().filter(|s| s.start <= p && p <= s.end).map(|s| s.bytes).sum::<usize>()).max();
        let plan = MemoryPlan { buffers, arena_bytes, naive_bytes };
        prop_assert_eq!(check_plan(&plan), Ok(()));
        prop_assert!(arena_bytes <= naive_bytes);
        prop_assert!(arena_bytes >= peak.unwrap_or(0), "no plan beats the peak of live bytes");
    }
}
