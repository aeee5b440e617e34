//! Building graphs: layers and labels, errors that name the node at fault, legal shapes,
//! unique outputs and weights; and evaluating what was built: every result stored rounded,
//! symbols bound from the inputs, weights checked.

use std::collections::HashMap;

use super::*;
use crate::eval::{eval, EvalError};
use crate::shape;
use crate::shape::Sym;
use crate::tensor::Tensor;

const T: Sym = Sym::NewTokens;
const P: Sym = Sym::CachedTokens;

/// The error of a failed build step: (node, message).
#[track_caller]
fn node_err(r: Result<NodeId, IrError>) -> (String, String) {
    match r {
        Err(IrError::Node { node, message }) => (node, message),
        other => panic!("expected a node error, got {other:?}"),
    }
}

/// Runs `f` in scope `l00` on a builder with inputs `a: f32[T, 4]`, `ids: i32[T]`,
/// `h: bf16[T, 6]`, and returns the error it must produce.
#[track_caller]
fn scoped_err(f: impl FnOnce(&mut Builder, [NodeId; 3]) -> Result<NodeId, IrError>) -> (String, String) {
    let mut b = Builder::new();
    let a = b.input("a", DType::F32, shape![T, 4]);
    let ids = b.input("ids", DType::I32, shape![T]);
    let h = b.input("h", DType::BF16, shape![T, 6]);
    node_err(b.scoped("l00", |b| f(b, [a, ids, h])))
}

#[test]
fn layers_and_labels_mark_the_nodes_they_cover() {
    let mut b = Builder::new();
    let x = b.input("x", DType::F32, shape![T, 4]);
    let (inner, outer) = b.in_layer(2, |b| {
        let inner = b.in_layer(5, |b| b.unary("inner", UnaryOp::Neg, x).unwrap());
        (inner, b.unary("outer", UnaryOp::Exp, inner).unwrap())
    });
    let after = b.unary("after", UnaryOp::Neg, outer).unwrap();
    b.label(outer, "act");
    b.label(after, "");
    b.output("y", after).unwrap();
    let g = b.finish().unwrap();
    let meta = |id: NodeId| (g.node(id).meta.layer, g.node(id).meta.label.clone());
    assert_eq!(meta(x), (None, None));
    assert_eq!(meta(inner), (Some(5), None), "the innermost layer wins");
    assert_eq!(meta(outer), (Some(2), Some("act".to_string())), "the outer layer is restored");
    assert_eq!(meta(after), (None, Some(String::new())), "no layer once outside");
}

/// A failed build step: the node its error must name, a word the message must contain, and
/// the (node, message) it gave.
type ErrorCase = (&'static str, &'static str, (String, String));

/// Shapes an op cannot take: contractions, broadcasts, reshapes, slices, concatenations and
/// reductions that do not fit.
fn shape_error_cases() -> Vec<ErrorCase> {
    vec![
        (
            "l00.proj",
            "contraction",
            scoped_err(|b, [a, ..]| {
                let w = b.weight("w", DType::F32, shape![8, 5])?;
                b.matmul("proj", a, w)
            }),
        ),
        (
            "l00.sum",
            "broadcast",
            scoped_err(|b, [a, ..]| {
                let c = b.constant("c", DType::F32, shape![3], vec![1.0; 3])?;
                b.add("sum", a, c)
            }),
        ),
        (
            "l00.mixed",
            "broadcast",
            scoped_err(|b, [a, ..]| {
                let c = b.input("c", DType::F32, shape![P, 4]);
                b.add("mixed", a, c)
            }),
        ),
        ("l00.heads", "reshape", scoped_err(|b, [a, ..]| b.reshape("heads", a, shape![T, 3, 2]))),
        ("l00.sym", "reshape", scoped_err(|b, [a, ..]| b.reshape("sym", a, shape![P, 4]))),
        (
            "l00.x2",
            "out of range",
            scoped_err(|b, [a, ..]| b.slice("x2", a, 1, Bound::FromStart(2), Bound::FromStart(5))),
        ),
        ("l00.empty", "empty", scoped_err(|b, [a, ..]| b.slice("empty", a, 1, Bound::FromStart(3), Bound::FromEnd(2)))),
        ("l00.all", "symbolic", scoped_err(|b, [a, ..]| b.slice("all", a, 0, Bound::FromStart(0), Bound::FromEnd(0)))),
        ("l00.axis", "axis 2", scoped_err(|b, [a, ..]| b.slice("axis", a, 2, Bound::FromStart(0), Bound::FromEnd(0)))),
        (
            "l00.cat",
            "does not fit",
            scoped_err(|b, _| {
                let c23 = b.constant("c23", DType::F32, shape![2, 3], vec![0.0; 6])?;
                let c24 = b.constant("c24", DType::F32, shape![2, 4], vec![0.0; 8])?;
                b.concat("cat", &[c23, c24], 0)
            }),
        ),
        ("l00.cat_t", "symbolic", scoped_err(|b, [a, ..]| b.concat("cat_t", &[a, a], 0))),
        ("l00.mean", "symbolic", scoped_err(|b, [a, ..]| b.reduce("mean", ReduceOp::Mean, a, 0))),
    ]
}

/// Operands an op cannot take: mixed or wrong dtypes, heads that do not group, the wrong
/// number of operands, a leaf op, constant values that do not fill the shape.
fn operand_error_cases() -> Vec<ErrorCase> {
    vec![
        ("l00.dtypes", "mixes dtypes", scoped_err(|b, [a, _, h]| b.add("dtypes", a, h))),
        (
            "l00.embed",
            "i32",
            scoped_err(|b, [a, ..]| {
                let table = b.weight("embed", DType::F32, shape![10, 4])?;
                b.gather("embed", table, a)
            }),
        ),
        (
            "l00.cat_dt",
            "mixes dtypes",
            scoped_err(|b, [a, _, h]| {
                let h = b.slice("h4", h, 1, Bound::FromStart(0), Bound::FromStart(4))?;
                b.concat("cat_dt", &[a, h], 1)
            }),
        ),
        (
            "l00.attn",
            "group",
            scoped_err(|b, [a, ..]| {
                let q = b.reshape("q", a, shape![T, 1, 4])?;
                let kv = b.input("kv", DType::F32, shape![T, 2, 4]);
                b.op("attn", Op::Attention { scale: 0.5 }, &[q, kv, kv])
            }),
        ),
        ("l00.mm", "takes 2 operands", scoped_err(|b, [a, ..]| b.op("mm", Op::MatMul, &[a]))),
        ("l00.leaf", "leaf", scoped_err(|b, _| b.op("leaf", Op::Input { name: "z".into() }, &[]))),
        ("l00.exp", "float", scoped_err(|b, [_, ids, _]| b.unary("exp", UnaryOp::Exp, ids))),
        ("l00.c", "values", scoped_err(|b, _| b.constant("c", DType::F32, shape![2, 2], vec![1.0; 3]))),
    ]
}

#[test]
fn infer_errors_name_the_node() {
    for (node, needle, (got_node, message)) in shape_error_cases().into_iter().chain(operand_error_cases()) {
        assert_eq!(got_node, node, "{message}");
        assert!(message.contains(needle), "{node}: {message:?} lacks {needle:?}");
    }
}

#[test]
fn legal_shapes_infer() {
    let mut b = Builder::new();
    let a = b.input("a", DType::F32, shape![T, 6]);
    let r = b.reshape("r", a, shape![T, 2, 3]).unwrap();
    assert_eq!(b.shape(r), &shape![T, 2, 3]);
    let r2 = b.reshape("r2", a, shape![6, T]).unwrap();
    assert_eq!(b.shape(r2), &shape![6, T]);
    let last = b.slice("last", a, 0, Bound::FromEnd(1), Bound::FromEnd(0)).unwrap();
    assert_eq!(b.shape(last), &shape![1, 6]);
    let col = b.constant("col", DType::F32, shape![6], vec![0.5; 6]).unwrap();
    let m = b.mul("m", a, col).unwrap();
    assert_eq!(b.shape(m), &shape![T, 6]);
    assert_eq!(b.cast("same", a, DType::F32).unwrap(), a, "a no-op cast is the value itself");
    let named = b.scoped("l07", |b| b.scoped("mlp", |b| b.unary("act", UnaryOp::Silu, a))).unwrap();
    assert_eq!(b.finish().unwrap().node(named).name.as_deref(), Some("l07.mlp.act"));
}

#[test]
fn outputs_and_weights_are_unique() {
    let mut b = Builder::new();
    let x = b.input("x", DType::F32, shape![2]);
    b.output("y", x).unwrap();
    assert_eq!(b.output("y", x), Err(IrError::Duplicate { what: "output", name: "y".into() }));
    let w = b.weight("embed", DType::BF16, shape![10, 4]).unwrap();
    let tied = b.scoped("head", |b| b.weight("embed", DType::BF16, shape![10, 4])).unwrap();
    assert_eq!(w, tied, "tied weights are one node");
    let (node, message) = node_err(b.weight("embed", DType::BF16, shape![4, 10]));
    assert_eq!(node, "embed");
    assert!(message.contains("[10,4]") && message.contains("[4,10]"), "{message}");
    let (_, message) = node_err(b.weight("embed", DType::F32, shape![10, 4]));
    assert!(message.contains("f32"), "{message}");
    assert_eq!(b.finish().unwrap().weights().len(), 1);
}

/// i32 arithmetic (e.g. `positions + P`) must either be refused when building or evaluate
/// exactly; a graph that verifies must not panic in the evaluator.
#[test]
fn i32_arithmetic_builds_only_if_it_evaluates() {
    for op in [Op::Binary(BinaryOp::Add), Op::MatMul] {
        let mut b = Builder::new();
        let x = b.input("x", DType::I32, shape![2, 2]);
        let Ok(y) = b.op("y", op.clone(), &[x, x]) else { continue };
        b.output("y", y).unwrap();
        let g = b.finish().unwrap();
        let inputs = HashMap::from([("x".to_string(), Tensor::from_i32(vec![2, 2], vec![1, 2, 3, 4]))]);
        let out = eval(&g, inputs, &HashMap::new()).unwrap();
        let want: &[i32] = if op == Op::MatMul { &[5, 11, 11, 25] } else { &[2, 4, 6, 8] };
        assert_eq!(out["y"].i32s(), Some(want), "{op:?}");
    }
}

/// Every intermediate of a `dt` graph is an output so its storage can be checked.
fn storage_graph(dt: DType) -> Graph {
    let mut b = Builder::new();
    let x = b.input("x", dt, shape![T, 8]);
    let w = b.weight("w", dt, shape![6, 8]).unwrap();
    let third = b.scalar("third", dt, 1.0 / 3.0).unwrap();
    let v = [
        b.mul("scaled", x, third).unwrap(),
        b.unary("exp", UnaryOp::Exp, x).unwrap(),
        b.reduce("mean", ReduceOp::Mean, x, 1).unwrap(),
        b.matmul("mm", x, w).unwrap(),
    ];
    let act = b.unary("silu", UnaryOp::Silu, v[3]).unwrap();
    let div = b.binary("div", BinaryOp::Div, act, v[2]).unwrap();
    let q = b.reshape("q", v[0], shape![T, 2, 4]).unwrap();
    let attn = b.op("attn", Op::Attention { scale: 0.3 }, &[q, q, q]).unwrap();
    let cast = b.cast("cast", x, DType::F32).unwrap();
    let sum = b.reduce("sum", ReduceOp::Sum, cast, 1).unwrap();
    let back = b.cast("back", sum, dt).unwrap();
    for (i, id) in v.into_iter().chain([act, div, attn, back]).enumerate() {
        b.output(&format!("v{i}"), id).unwrap();
    }
    b.finish().unwrap()
}

#[test]
fn half_graphs_store_rounded_values() {
    for dt in [DType::BF16, DType::F16] {
        let g = storage_graph(dt);
        let xs: Vec<f32> = (0..24).map(|i| (i as f32 * 0.731).sin() * 1.7 + 0.01).collect();
        let ws: Vec<f32> = (0..48).map(|i| (i as f32 * 0.377).cos() * 0.9).collect();
        let weights = HashMap::from([("w".to_string(), Tensor::from_f32(dt, vec![6, 8], ws))]);
        let inputs = HashMap::from([("x".to_string(), Tensor::from_f32(dt, vec![3, 8], xs))]);
        let out = eval(&g, inputs, &weights).unwrap();
        assert_eq!(out.len(), 8);
        for (name, t) in &out {
            assert_eq!(t.dtype(), dt, "{name}");
            for &v in t.f32s().unwrap() {
                assert_eq!(dt.round(v).to_bits(), v.to_bits(), "{dt} {name}: {v} is not stored as {dt}");
            }
        }
    }
}

#[test]
fn every_op_rounds_not_just_the_last() {
    for (dt, tiny) in [(DType::BF16, 2f32.powi(-9)), (DType::F16, 2f32.powi(-12)), (DType::F32, 2f32.powi(-9))] {
        let mut b = Builder::new();
        let x = b.input("x", dt, shape![1]);
        let eps = b.scalar("eps", dt, tiny).unwrap();
        let y = b.add("y", x, eps).unwrap();
        let z = b.binary("z", BinaryOp::Sub, y, x).unwrap();
        b.output("z", z).unwrap();
        let inputs = HashMap::from([("x".to_string(), Tensor::from_f32(dt, vec![1], vec![1.0]))]);
        let out = eval(&b.finish().unwrap(), inputs, &HashMap::new()).unwrap();
        let want = if dt == DType::F32 { tiny } else { 0.0 };
        assert_eq!(out["z"].f32s().unwrap(), &[want], "{dt}: 1 + tiny is stored as 1");
    }
}

/// `cache f32[P,1,2]`, `new f32[T,1,2]`, `mask f32[P+T,1,1]`, `pos i32[T]`.
fn kv_graph() -> Graph {
    let mut b = Builder::new();
    let cache = b.input("cache", DType::F32, shape![P, 1, 2]);
    let new = b.input("new", DType::F32, shape![T, 1, 2]);
    let mask = b.input("mask", DType::F32, shape![Sym::TotalTokens, 1, 1]);
    let pos = b.input("pos", DType::I32, shape![T]);
    let kv = b.op("append", Op::KvAppend, &[cache, new]).unwrap();
    let y = b.add("masked", kv, mask).unwrap();
    b.output("y", y).unwrap();
    b.output("pos", pos).unwrap();
    b.finish().unwrap()
}

fn kv_inputs(p: usize, t: usize, total: usize, pos: usize) -> HashMap<String, Tensor> {
    let f = |shape: Vec<usize>| Tensor::from_f32(DType::F32, shape.clone(), vec![1.0; shape.iter().product()]);
    HashMap::from([
        ("cache".to_string(), f(vec![p, 1, 2])),
        ("new".to_string(), f(vec![t, 1, 2])),
        ("mask".to_string(), f(vec![total, 1, 1])),
        ("pos".to_string(), Tensor::from_i32(vec![pos], vec![0; pos])),
    ])
}

#[test]
fn eval_binds_symbols_from_inputs() {
    let g = kv_graph();
    let out = eval(&g, kv_inputs(3, 2, 5, 2), &HashMap::new()).unwrap();
    assert_eq!(out["y"].shape(), &[5, 1, 2]);
    assert_eq!(out["y"].f32s().unwrap(), &[2.0; 10]);
    let err = eval(&g, kv_inputs(3, 2, 5, 3), &HashMap::new()).unwrap_err();
    assert!(matches!(err, EvalError::Binding { sym: "T", a: 2, b: 3 }), "{err:?}");
    let err = eval(&g, kv_inputs(3, 2, 6, 2), &HashMap::new()).unwrap_err();
    assert!(matches!(err, EvalError::Binding { sym: "P+T", a: 5, b: 6 }), "{err:?}");
    let mut wrong = kv_inputs(3, 2, 5, 2);
    wrong.insert("new".into(), Tensor::from_f32(DType::F32, vec![2, 1, 3], vec![0.0; 6]));
    let err = eval(&g, wrong, &HashMap::new()).unwrap_err();
    assert!(matches!(&err, EvalError::InputType { name, .. } if name == "new"), "{err:?}");
    let mut wrong = kv_inputs(3, 2, 5, 2);
    wrong.insert("cache".into(), Tensor::from_f32(DType::BF16, vec![3, 1, 2], vec![0.0; 6]));
    let err = eval(&g, wrong, &HashMap::new()).unwrap_err();
    assert!(matches!(&err, EvalError::InputType { name, .. } if name == "cache"), "{err:?}");
    let mut missing = kv_inputs(3, 2, 5, 2);
    missing.remove("pos");
    let err = eval(&g, missing, &HashMap::new()).unwrap_err();
    assert!(matches!(&err, EvalError::MissingInput(name) if name == "pos"), "{err:?}");
}

#[test]
fn eval_checks_weights() {
    let mut b = Builder::new();
    let x = b.input("x", DType::F32, shape![T, 2]);
    let w = b.weight("w", DType::F32, shape![3, 2]).unwrap();
    let y = b.matmul("y", x, w).unwrap();
    b.output("y", y).unwrap();
    let g = b.finish().unwrap();
    let inputs = || HashMap::from([("x".to_string(), Tensor::from_f32(DType::F32, vec![1, 2], vec![1.0, 2.0]))]);
    let err = eval(&g, inputs(), &HashMap::new()).unwrap_err();
    assert!(matches!(&err, EvalError::MissingWeight(name) if name == "w"), "{err:?}");
    for bad in [Tensor::zeros(DType::F32, vec![2, 3]), Tensor::zeros(DType::BF16, vec![3, 2])] {
        let err = eval(&g, inputs(), &HashMap::from([("w".to_string(), bad)])).unwrap_err();
        assert!(matches!(&err, EvalError::WeightType { name, .. } if name == "w"), "{err:?}");
    }
    let good = HashMap::from([("w".to_string(), Tensor::from_f32(DType::F32, vec![3, 2], vec![1.0; 6]))]);
    assert_eq!(eval(&g, inputs(), &good).unwrap()["y"].f32s().unwrap(), &[3.0; 3]);
}

#[test]
fn pinned_decode_graph_resolves_total_tokens() {
    let mut b = Builder::new();
    b.pin(T, 1);
    let ids = b.input("ids", DType::I32, shape![1]);
    let cache = b.input("cache", DType::F32, shape![P, 1, 2]);
    let new = b.input("new", DType::F32, shape![1, 1, 2]);
    let kv = b.op("append", Op::KvAppend, &[cache, new]).unwrap();
    assert_eq!(b.shape(kv), &shape![Sym::TotalTokens, 1, 2]);
    b.output("kv", kv).unwrap();
    b.output("ids", ids).unwrap();
    let g = b.finish().unwrap();
    let f = |shape: Vec<usize>, v: f32| Tensor::from_f32(DType::F32, shape.clone(), vec![v; shape.iter().product()]);
    let inputs = HashMap::from([
        ("ids".to_string(), Tensor::from_i32(vec![1], vec![7])),
        ("cache".to_string(), f(vec![3, 1, 2], 1.0)),
        ("new".to_string(), f(vec![1, 1, 2], 2.0)),
    ]);
    let out = eval(&g, inputs, &HashMap::new()).unwrap();
    assert_eq!(out["kv"].shape(), &[4, 1, 2]);
    assert_eq!(out["kv"].f32s().unwrap(), &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0]);
}
