//! The norm+RoPE matcher on Qwen3's chain and its near misses, and where the fused op goes
//! next: into the KV append or attention that alone reads it, and nowhere else.

use smelt_ir::{shape, Builder, DType, FusedOp, Graph, NodeId, Op, Sym};

use super::near_miss::{fused_count, DTYPES};
use super::*;
use crate::dce::Dce;
use crate::testing::chains::{self, Rope, ROPE_MISSES};
use crate::testing::{assert_same_eval, run_verified};

/// `x [T, 2, 8]` (or the head dim `how` needs) in `dt`, the norm + RoPE chain `how` over it,
/// as the output.
fn rope_graph(dt: DType, how: Rope) -> Graph {
    let mut b = Builder::new();
    let x = b.input("x", dt, shape![Sym::NewTokens, 2, how.head_dim(8)]);
    let positions = b.input("positions", DType::I32, shape![Sym::NewTokens]);
    let other = b.input("other_positions", DType::I32, shape![Sym::NewTokens]);
    let (y, shared) = chains::norm_rope(&mut b, "q", x, positions, other, how);
    b.output("y", y).unwrap();
    if let Some(half) = shared {
        b.output("half", half).unwrap();
    }
    b.finish().unwrap()
}

#[test]
fn norm_rope_fuses_qwen3_chain_and_no_near_miss() {
    for dt in DTYPES {
        assert_eq!(fused_count(&rope_graph(dt, Rope::Exact), &[&FuseRmsNorm, &FuseNormRope::default()]), 1, "{dt}");
        for how in ROPE_MISSES {
            assert_eq!(fused_count(&rope_graph(dt, how), &[&FuseRmsNorm, &FuseNormRope::default()]), 0, "{dt} {how:?}");
        }
    }
}

/// Norm+RoPE of `q [T, 4, 8]` and of `k [T, 2, 8]`, `k` and `v` appended to their caches,
/// attention over the cached and new rows; with `rope_outputs`, both RoPE results are graph
/// outputs as well.
fn attention_graph(rope_outputs: bool) -> Graph {
    let mut b = Builder::new();
    let positions = b.input("positions", DType::I32, shape![Sym::NewTokens]);
    let rows = |b: &mut Builder, name: &str, heads: usize| b.input(name, DType::F32, shape![Sym::NewTokens, heads, 8]);
    let (q, k, v) = (rows(&mut b, "q", 4), rows(&mut b, "k", 2), rows(&mut b, "v", 2));
    let q = chains::norm_rope(&mut b, "q", q, positions, positions, Rope::Exact).0;
    let k = chains::norm_rope(&mut b, "k", k, positions, positions, Rope::Exact).0;
    let append = |b: &mut Builder, name: &str, new: NodeId| {
        let cache = b.input(&format!("{name}_cache"), DType::F32, shape![Sym::CachedTokens, 2, 8]);
        b.op(&format!("{name}_append"), Op::KvAppend, &[cache, new]).unwrap()
    };
    let (k_all, v_all) = (append(&mut b, "k", k), append(&mut b, "v", v));
    let o = b.op("attention", Op::Attention { scale: 0.35 }, &[q, k_all, v_all]).unwrap();
    b.output("o", o).unwrap();
    if rope_outputs {
        b.output("q_rope", q).unwrap();
        b.output("k_rope", k).unwrap();
    }
    b.finish().unwrap()
}

/// The KV append takes in k's norm+RoPE and attention (when asked to) takes in q's, but only
/// where nothing else reads the RoPE result.
#[test]
fn norm_rope_goes_into_its_append_and_attention_only_when_private() {
    let into_attention = FuseNormRope { queries_into_attention: true };
    for (rope_outputs, absorbed) in [(false, 2), (true, 0)] {
        let g = attention_graph(rope_outputs);
        let (after, report) = run_verified(&into_attention, &run_verified(&FuseRmsNorm, &g).0);
        let after = run_verified(&Dce, &after).0;
        assert_eq!((report.matched, report.changed), (2, 2 + absorbed), "rope outputs: {rope_outputs}");
        let count = |want: fn(&Op) -> bool| after.node_ids().filter(|&id| want(op(&after, id))).count();
        let appends = count(|o| matches!(o, Op::Fused(FusedOp::NormRope { append: true, .. })));
        let attentions = count(|o| matches!(o, Op::Fused(FusedOp::NormRopeAttention { .. })));
        assert_eq!((appends, attentions), (absorbed / 2, absorbed / 2), "rope outputs: {rope_outputs}");
        for t in [1, 3] {
            assert_same_eval(&g, &after, t, 5, 0.0);
        }
    }
}

/// By default the queries' norm+RoPE stays a NormRope of its own (codegen runs it in the
/// kernel of the k and v appends), still fused, and the graph computes the same.
#[test]
fn by_default_the_queries_norm_rope_stays_out_of_attention() {
    let g = attention_graph(false);
    let (after, report) = run_verified(&FuseNormRope::default(), &run_verified(&FuseRmsNorm, &g).0);
    let after = run_verified(&Dce, &after).0;
    assert_eq!((report.matched, report.changed), (2, 3));
    let count = |want: fn(&Op) -> bool| after.node_ids().filter(|&id| want(op(&after, id))).count();
    let alone = count(|o| matches!(o, Op::Fused(FusedOp::NormRope { append: false, .. })));
    let appends = count(|o| matches!(o, Op::Fused(FusedOp::NormRope { append: true, .. })));
    let attentions = count(|o| matches!(o, Op::Fused(FusedOp::NormRopeAttention { .. })));
    assert_eq!((alone, appends, attentions), (1, 1, 0));
    for t in [1, 3] {
        assert_same_eval(&g, &after, t, 5, 0.0);
    }
}

/// The norm+RoPE of `x [rows, 2, 8]` read by one op in the operand slot where absorbing it
/// would be wrong: a KV append's cache (over cached rows), or attention's keys.
fn misplaced_rope_graph(as_cache: bool) -> Graph {
    let mut b = Builder::new();
    let rows = if as_cache { Sym::CachedTokens } else { Sym::NewTokens };
    let positions = b.input("positions", DType::I32, shape![rows]);
    let x = b.input("x", DType::F32, shape![rows, 2, 8]);
    let rope = chains::norm_rope(&mut b, "x", x, positions, positions, Rope::Exact).0;
    let other = b.input("other", DType::F32, shape![Sym::NewTokens, 2, 8]);
    let y = if as_cache {
        b.op("append", Op::KvAppend, &[rope, other]).unwrap()
    } else {
        b.op("attention", Op::Attention { scale: 0.35 }, &[other, rope, other]).unwrap()
    };
    b.output("y", y).unwrap();
    b.finish().unwrap()
}

#[test]
fn norm_rope_stays_out_of_an_append_it_is_the_cache_of_or_attention_it_is_the_keys_of() {
    for as_cache in [true, false] {
        let g = misplaced_rope_graph(as_cache);
        let into_attention = FuseNormRope { queries_into_attention: true };
        let (after, report) = run_verified(&into_attention, &run_verified(&FuseRmsNorm, &g).0);
        assert_eq!((report.matched, report.changed), (1, 1), "as cache: {as_cache}");
        for t in [1, 3] {
            assert_same_eval(&g, &run_verified(&Dce, &after).0, t, 5, 0.0);
        }
    }
}
