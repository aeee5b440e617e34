//! Each fusion matcher on its pattern and on near misses: chains one step away from it (a
//! wrong axis, another tensor squared, a scale that is not a weight, halves swapped, a value
//! read outside the pattern). The pattern must fuse and the near misses must not; either way
//! the graph must evaluate as before (exactly: a fused op evaluates as the chain it replaces).
//! The norm+RoPE matcher has its own file, `rope_tests.rs`.

use smelt_ir::{shape, Builder, DType, FusedOp, Graph, NodeId, Op, Sym, UnaryOp};

use super::*;
use crate::dce::Dce;
use crate::pass::Pass;
use crate::testing::chains::{self, Norm, NORM_MISSES};
use crate::testing::{assert_same_eval, run_verified};

pub(super) const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

/// Runs `passes` in order (each followed by DCE), checking eval is unchanged; returns how
/// many matches the last pass reported.
pub(super) fn fused_count(g: &Graph, passes: &[&dyn Pass]) -> usize {
    let mut after = g.clone();
    let mut matched = 0;
    for pass in passes {
        let (fused, report) = run_verified(*pass, &after);
        after = run_verified(&Dce, &fused).0;
        matched = report.matched;
    }
    for t in [1, 3] {
        assert_same_eval(g, &after, t, 11, 0.0);
    }
    matched
}

/// `x [T, 2, 8]` in `dt` and the RMSNorm chain `how` over it, as the output.
fn norm_graph(dt: DType, how: Norm) -> Graph {
    let mut b = Builder::new();
    let x = b.input("x", dt, shape![Sym::NewTokens, 2, 8]);
    let other = b.unary("other", UnaryOp::Exp, x).unwrap();
    let y = chains::rms_norm(&mut b, "norm", x, other, how);
    b.output("y", y).unwrap();
    b.finish().unwrap()
}

#[test]
fn rmsnorm_fuses_hf_chain_and_no_near_miss() {
    for dt in DTYPES {
        assert_eq!(fused_count(&norm_graph(dt, Norm::Exact), &[&FuseRmsNorm]), 1, "{dt}");
        for how in NORM_MISSES {
            assert_eq!(fused_count(&norm_graph(dt, how), &[&FuseRmsNorm]), 0, "{dt} {how:?}");
        }
    }
}

/// A decode graph (T pinned to 1): `x [1, 8]` normed, then read by matmuls and by `extra`.
fn prologue_graph(extra_reader: bool, decode: bool) -> Graph {
    let mut b = Builder::new();
    if decode {
        b.pin(Sym::NewTokens, 1);
    }
    let x = b.input("x", DType::F32, shape![Sym::NewTokens, 8]);
    let normed = chains::rms_norm(&mut b, "norm", x, x, Norm::Exact);
    for (i, n) in [3, 5].into_iter().enumerate() {
        let w = b.weight(&format!("w{i}"), DType::F32, shape![n, 8]).unwrap();
        let y = b.matmul(&format!("mm{i}"), normed, w).unwrap();
        b.output(&format!("y{i}"), y).unwrap();
    }
    if extra_reader {
        let e = b.unary("exp", UnaryOp::Exp, normed).unwrap();
        b.output("e", e).unwrap();
    }
    b.finish().unwrap()
}

#[test]
fn norm_prologue_folds_only_a_norm_read_by_matmuls_alone_in_decode() {
    let passes: [&dyn Pass; 2] = [&FuseRmsNorm, &FuseNormPrologue];
    assert_eq!(fused_count(&prologue_graph(false, true), &passes), 1);
    assert_eq!(fused_count(&prologue_graph(true, true), &passes), 0, "a reader outside the matmuls");
    assert_eq!(fused_count(&prologue_graph(false, false), &passes), 0, "not a decode graph");
}

/// `y = exp(x)`, `z = y * 2 + 1`; with `shared`, `y` is also an output.
fn elementwise_graph(shared: bool) -> (Graph, NodeId) {
    let mut b = Builder::new();
    let x = b.input("x", DType::F32, shape![Sym::NewTokens, 4]);
    let y = b.unary("y", UnaryOp::Exp, x).unwrap();
    let two = b.scalar("two", DType::F32, 2.0).unwrap();
    let one = b.scalar("one", DType::F32, 1.0).unwrap();
    let z = b.mul("z", y, two).unwrap();
    let z = b.add("z1", z, one).unwrap();
    b.output("z", z).unwrap();
    if shared {
        b.output("y", y).unwrap();
    }
    (b.finish().unwrap(), y)
}

#[test]
fn elementwise_regions_absorb_only_values_private_to_them() {
    // Private: one region of three ops, its scalar constants inlined: x is its one input.
    let (g, _) = elementwise_graph(false);
    let (after, report) = run_verified(&FuseElementwise, &g);
    assert_eq!((report.matched, report.changed), (1, 3));
    let after = run_verified(&Dce, &after).0;
    let region = after.outputs().iter().find(|(n, _)| n == "z").map(|(_, id)| *id).unwrap();
    assert_eq!(after.operands(region).len(), 1, "the scalars 2 and 1 are inlined, x is the input");
    assert_same_eval(&g, &after, 2, 1, 0.0);
    // `y` is also an output: it is its own region, read by the other as an input.
    let (g, _) = elementwise_graph(true);
    let (after, report) = run_verified(&FuseElementwise, &g);
    assert_eq!((report.matched, report.changed), (2, 3));
    let after = run_verified(&Dce, &after).0;
    let exps = after
        .node_ids()
        .filter(|&id| matches!(op(&after, id), Op::Fused(FusedOp::Elementwise { body }) if body.to_string().contains("exp")))
        .count();
    assert_eq!(exps, 1, "exp is computed once, not inlined into z's region as well");
    assert_same_eval(&g, &after, 2, 1, 0.0);
}

/// A one-element constant of shape [1, 1] is not a scalar: it broadcasts `x [4]` to [1, 4], so
/// a region must read it as an input, not inline it.
#[test]
fn a_one_element_constant_that_broadcasts_stays_an_input() {
    let mut b = Builder::new();
    let x = b.input("x", DType::F32, shape![4]);
    let c = b.constant("c", DType::F32, shape![1, 1], vec![2.0]).unwrap();
    let y = b.mul("y", x, c).unwrap();
    let y = b.unary("e", UnaryOp::Exp, y).unwrap();
    b.output("y", y).unwrap();
    let g = b.finish().unwrap();
    let (after, report) = run_verified(&FuseElementwise, &g);
    assert_eq!(report.matched, 1);
    let after = run_verified(&Dce, &after).0;
    let region = after.outputs()[0].1;
    assert_eq!(after.operands(region).len(), 2, "x and the [1, 1] constant");
    assert_same_eval(&g, &after, 1, 1, 0.0);
}

/// `m = x @ w`, `e = silu(m) + 1`; with `reader`, `m` is also an output.
fn epilogue_graph(reader: bool) -> Graph {
    let mut b = Builder::new();
    let x = b.input("x", DType::F32, shape![Sym::NewTokens, 8]);
    let w = b.weight("w", DType::F32, shape![4, 8]).unwrap();
    let m = b.matmul("m", x, w).unwrap();
    let s = b.unary("s", UnaryOp::Silu, m).unwrap();
    let one = b.scalar("one", DType::F32, 1.0).unwrap();
    let e = b.add("e", s, one).unwrap();
    b.output("e", e).unwrap();
    if reader {
        b.output("m", m).unwrap();
    }
    b.finish().unwrap()
}

#[test]
fn epilogues_take_only_matmuls_nothing_else_reads() {
    let passes: [&dyn Pass; 2] = [&FuseElementwise, &FuseEpilogue];
    assert_eq!(fused_count(&epilogue_graph(false), &passes), 1);
    assert_eq!(fused_count(&epilogue_graph(true), &passes), 0, "the matmul is also an output");
}

/// How an elementwise op reads a matmul `m = x @ w` (`[T, 12]`, as horizontal fusion leaves
/// three 4-column parts): `silu(g) * u` over two slices of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slices {
    /// Columns 0..4 and 8..12: parts 0 and 2 of 3.
    Parts,
    /// Columns 0..4 and 6..10: the second does not start on a part boundary.
    Offset,
    /// Parts, but `u` is also a graph output.
    Shared,
    /// Parts, and a residual `r` added: `silu(g) * u + r`.
    Residual,
}

fn swiglu_graph(how: Slices) -> Graph {
    use smelt_ir::Bound::FromStart;
    let mut b = Builder::new();
    let x = b.input("x", DType::F32, shape![Sym::NewTokens, 8]);
    let w = b.weight("gate+up+other", DType::F32, shape![12, 8]).unwrap();
    let m = b.matmul("m", x, w).unwrap();
    let g = b.slice("g", m, 1, FromStart(0), FromStart(4)).unwrap();
    let (us, ue) = if how == Slices::Offset { (6, 10) } else { (8, 12) };
    let u = b.slice("u", m, 1, FromStart(us), FromStart(ue)).unwrap();
    let s = b.unary("silu", UnaryOp::Silu, g).unwrap();
    let mut e = b.mul("swiglu", s, u).unwrap();
    if how == Slices::Residual {
        let r = b.input("r", DType::F32, shape![Sym::NewTokens, 4]);
        e = b.add("residual", e, r).unwrap();
    }
    b.output("e", e).unwrap();
    if how == Slices::Shared {
        b.output("u", u).unwrap();
    }
    b.finish().unwrap()
}

#[test]
fn epilogues_read_a_matmul_through_its_parts_only() {
    let passes: [&dyn Pass; 2] = [&FuseElementwise, &FuseEpilogue];
    for (how, fused) in [(Slices::Parts, 1), (Slices::Residual, 1), (Slices::Offset, 0), (Slices::Shared, 0)] {
        assert_eq!(fused_count(&swiglu_graph(how), &passes), fused, "{how:?}");
    }
    // The parts and the residual as the epilogue reads them.
    let mut g = swiglu_graph(Slices::Residual);
    for (pass, counts) in passes.into_iter().zip([(1, 3), (1, 1)]) {
        let (fused, report) = run_verified(pass, &g);
        assert_eq!((report.matched, report.changed), counts, "{}", pass.name());
        g = run_verified(&Dce, &fused).0;
    }
    let e = g.outputs()[0].1;
    let Op::Fused(FusedOp::Linear { norm_eps: None, epilogue: Some(body) }) = op(&g, e) else {
        panic!("{:?}", op(&g, e))
    };
    let text = body.to_string();
    assert!(text.contains("acc[0/3]") && text.contains("acc[2/3]"), "{text}");
    assert_eq!(g.operands(e).len(), 3, "x, the weight and the residual");
}

/// A norm folded into a matmul as its prologue still takes an epilogue (a decode step's
/// down projection: norm, matmul, residual add).
#[test]
fn a_matmul_with_a_norm_prologue_takes_an_epilogue() {
    let mut b = Builder::new();
    b.pin(Sym::NewTokens, 1);
    let x = b.input("x", DType::F32, shape![Sym::NewTokens, 8]);
    let normed = chains::rms_norm(&mut b, "norm", x, x, Norm::Exact);
    let w = b.weight("w", DType::F32, shape![8, 8]).unwrap();
    let m = b.matmul("m", normed, w).unwrap();
    let e = b.add("residual", m, x).unwrap();
    b.output("e", e).unwrap();
    let g = b.finish().unwrap();
    let passes: [&dyn Pass; 4] = [&FuseRmsNorm, &FuseNormPrologue, &FuseElementwise, &FuseEpilogue];
    assert_eq!(fused_count(&g, &passes), 1);
}

/// Two matmuls against weights of 3 and 5 rows; `same_x` reads one activation, else two.
fn horizontal_graph(same_x: bool, weight_leaves: bool) -> Graph {
    let mut b = Builder::new();
    let x = b.input("x", DType::F32, shape![Sym::NewTokens, 8]);
    let x2 = if same_x { x } else { b.input("x2", DType::F32, shape![Sym::NewTokens, 8]) };
    for (i, (n, xi)) in [(3, x), (5, x2)].into_iter().enumerate() {
        let w = if weight_leaves {
            b.weight(&format!("w{i}"), DType::F32, shape![n, 8]).unwrap()
        } else {
            b.input(&format!("w{i}"), DType::F32, shape![n, 8])
        };
        let y = b.matmul(&format!("blk.mm{i}"), xi, w).unwrap();
        b.output(&format!("y{i}"), y).unwrap();
    }
    b.finish().unwrap()
}

#[test]
fn horizontal_fusion_groups_only_weight_matmuls_of_one_activation() {
    assert_eq!(fused_count(&horizontal_graph(true, true), &[&FuseHorizontal]), 1);
    // One matmul of both, named for both (kernel names and the runtime's weights follow it).
    let (after, report) = run_verified(&FuseHorizontal, &horizontal_graph(true, true));
    assert_eq!((report.matched, report.changed), (1, 2));
    let names: Vec<String> = after
        .node_ids()
        .filter(|&id| *op(&after, id) == Op::MatMul && !after.users(id).is_empty())
        .filter_map(|id| after.node(id).name.clone())
        .collect();
    assert_eq!(names, ["blk.mm0+mm1"]);
    assert_eq!(fused_count(&horizontal_graph(false, true), &[&FuseHorizontal]), 0, "two activations");
    assert_eq!(fused_count(&horizontal_graph(true, false), &[&FuseHorizontal]), 0, "weights that are inputs");
}

/// The model's metadata survives fusion: a fused node keeps its root's layer and label, and a
/// horizontally fused matmul joins its parts' labels (`q`, `k`, `v` name the `qkv` kernel),
/// keeping a layer only when all parts share it and a label only when all have one.
#[test]
fn fused_nodes_carry_the_models_layer_and_label() {
    let horizontal = |layers: [u32; 3], labels: [Option<&str>; 3]| {
        let mut b = Builder::new();
        let x = b.input("x", DType::F32, shape![Sym::NewTokens, 8]);
        for (i, (layer, label)) in layers.into_iter().zip(labels).enumerate() {
            let w = b.weight(&format!("w{i}"), DType::F32, shape![4, 8]).unwrap();
            let y = b.in_layer(layer, |b| b.matmul(&format!("mm{i}"), x, w).unwrap());
            if let Some(label) = label {
                b.label(y, label);
            }
            b.output(&format!("y{i}"), y).unwrap();
        }
        let (after, _) = run_verified(&FuseHorizontal, &b.finish().unwrap());
        let fused = after.node_ids().find(|&id| *op(&after, id) == Op::MatMul && !after.users(id).is_empty());
        after.node(fused.expect("one fused matmul")).meta.clone()
    };
    let meta =
        |layer: Option<u32>, label: Option<&str>| smelt_ir::Meta { layer, label: label.map(String::from), split: None };
    assert_eq!(horizontal([3, 3, 3], [Some("q"), Some("k"), Some("v")]), meta(Some(3), Some("qkv")));
    assert_eq!(horizontal([3, 3, 4], [Some("q"), Some("k"), Some("v")]), meta(None, Some("qkv")));
    assert_eq!(horizontal([0, 0, 0], [Some("q"), None, Some("v")]), meta(Some(0), None));

    // An elementwise region takes its root's metadata, not an operand's.
    let mut b = Builder::new();
    let x = b.input("x", DType::F32, shape![Sym::NewTokens, 8]);
    let y = b.in_layer(1, |b| {
        let a = b.unary("act", UnaryOp::Exp, x).unwrap();
        b.label(a, "inner");
        b.unary("out", UnaryOp::Neg, a).unwrap()
    });
    b.label(y, "outer");
    b.output("y", y).unwrap();
    let (after, _) = run_verified(&FuseElementwise, &b.finish().unwrap());
    let region = after.outputs()[0].1;
    assert!(matches!(op(&after, region), Op::Fused(FusedOp::Elementwise { .. })));
    assert_eq!(after.node(region).meta, meta(Some(1), Some("outer")));
}

/// `e = m + y` with `m = x @ w` (`[T, n]`) and `y` `[T, 4]`, or `[2, T, 4]` with `lead`: with
/// `n = 1` or `lead`, `m` is broadcast (along its last dim, or over a new leading dim).
fn broadcast_epilogue_graph(n: usize, lead: bool) -> Graph {
    let mut b = Builder::new();
    let x = b.input("x", DType::F32, shape![Sym::NewTokens, 8]);
    let w = b.weight("w", DType::F32, shape![n, 8]).unwrap();
    let m = b.matmul("m", x, w).unwrap();
    let y = match lead {
        true => b.input("y", DType::F32, shape![2, Sym::NewTokens, 4]),
        false => b.input("y", DType::F32, shape![Sym::NewTokens, 4]),
    };
    let e = b.add("e", m, y).unwrap();
    b.output("e", e).unwrap();
    b.finish().unwrap()
}

/// An epilogue computes one element for each element of the matmul's output, so an op that
/// broadcasts the matmul's result stays outside it.
#[test]
fn an_epilogue_never_broadcasts_the_matmul() {
    let passes: [&dyn Pass; 2] = [&FuseElementwise, &FuseEpilogue];
    assert_eq!(fused_count(&broadcast_epilogue_graph(4, false), &passes), 1, "the pattern");
    assert_eq!(fused_count(&broadcast_epilogue_graph(1, false), &passes), 0, "m broadcast along its last dim");
    assert_eq!(fused_count(&broadcast_epilogue_graph(4, true), &passes), 0, "m broadcast over a leading dim");
}

/// A norm that is also a graph output stays a norm of its own: its matmuls do not take it
/// as a prologue (the output would need the norm computed anyway).
#[test]
fn norm_prologue_leaves_a_norm_that_is_an_output() {
    let mut g = prologue_graph(false, true);
    g = run_verified(&FuseRmsNorm, &g).0;
    let norm = g.node_ids().find(|&n| matches!(op(&g, n), Op::Fused(FusedOp::RmsNorm { .. }))).expect("fused norm");
    g.set_output("normed", norm);
    let (after, report) = run_verified(&FuseNormPrologue, &g);
    assert_eq!((report.matched, report.changed), (0, 0));
    assert!(after.node_ids().any(|n| matches!(op(&after, n), Op::Fused(FusedOp::RmsNorm { .. }))), "the norm stays");
}

/// Reports count what changed: one RMSNorm chain fused; one norm folded into its 2 matmuls.
#[test]
fn reports_count_the_nodes_changed() {
    let g = prologue_graph(false, true);
    let (g, report) = run_verified(&FuseRmsNorm, &g);
    assert_eq!((report.matched, report.changed), (1, 1));
    let (_, report) = run_verified(&FuseNormPrologue, &g);
    assert_eq!((report.matched, report.changed), (1, 2));
}
