//! The evaluator against hand-computed values, storage rounding, symbolic bindings and
//! property tests against naive references.

use std::collections::HashMap;

use proptest::prelude::*;

use super::{eval, eval_with, EvalError, EvalOptions};
use crate::{shape, BinaryOp, Bound, Builder, DType, Dim, Graph, NodeId, Op, ReduceOp, Shape, Sym, Tensor, UnaryOp};

type Map = HashMap<String, Tensor>;

fn f32t(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_f32(DType::F32, shape.to_vec(), v.to_vec())
}

fn i32t(shape: &[usize], v: &[i32]) -> Tensor {
    Tensor::from_i32(shape.to_vec(), v.to_vec())
}

fn fixed(dims: &[usize]) -> Shape {
    Shape::new(dims.iter().map(|&d| Dim::Fixed(d)))
}

fn seq(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32).collect()
}

/// Values in [-1, 1) from a seed (a small LCG), so proptest only has to shrink a seed.
fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Evaluates `graph` with inputs named `x0, x1, …` and returns output `y`.
fn eval_y(graph: &Graph, ins: &[Tensor], weights: &Map) -> Result<Tensor, EvalError> {
    let inputs = ins.iter().enumerate().map(|(i, t)| (format!("x{i}"), t.clone())).collect();
    eval(graph, inputs, weights).map(|mut out| out.remove("y").expect("output y"))
}

/// One `op` applied to fixed-shape inputs `x0, x1, …` typed like `ins`.
fn run_op(op: Op, ins: &[Tensor]) -> Result<Tensor, EvalError> {
    let mut b = Builder::new();
    let xs: Vec<NodeId> =
        ins.iter().enumerate().map(|(i, t)| b.input(&format!("x{i}"), t.dtype(), fixed(t.shape()))).collect();
    let y = b.op("y", op, &xs).unwrap();
    b.output("y", y).unwrap();
    eval_y(&b.finish().unwrap(), ins, &Map::new())
}

fn run(op: Op, ins: &[Tensor]) -> Tensor {
    run_op(op, ins).unwrap()
}

/// Every element within `tol` of `want`, relative to its own magnitude (`tol = 0`: equal).
/// The tests below use 0 (exact values) or `TWO_ULPS` (libm's exp, sigmoid, cos and the
/// attention sums against closed forms: measured at most 6.8e-8).
const TWO_ULPS: f32 = 2.0 * f32::EPSILON;

#[track_caller]
fn assert_close(got: &Tensor, shape: &[usize], want: &[f32], tol: f32) {
    assert_eq!(got.shape(), shape);
    let got = got.to_f32_vec();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * w.abs(), "element {i}: got {g}, want {w}\n{got:?}");
    }
}

#[test]
fn unary_ops() {
    use std::f32::consts::PI;
    let pos = f32t(&[3], &[0.25, 1.0, 4.0]);
    let mixed = f32t(&[3], &[-1.0, 0.0, 2.0]);
    let cases: [(UnaryOp, &Tensor, [f32; 3]); 10] = [
        (UnaryOp::Neg, &mixed, [1.0, 0.0, -2.0]),
        (UnaryOp::Exp, &mixed, [0.367_879_44, 1.0, 7.389_056]),
        (UnaryOp::Square, &mixed, [1.0, 0.0, 4.0]),
        (UnaryOp::Sqrt, &pos, [0.5, 1.0, 2.0]),
        (UnaryOp::Rsqrt, &pos, [2.0, 1.0, 0.5]),
        (UnaryOp::Recip, &pos, [4.0, 1.0, 0.25]),
        (UnaryOp::Sigmoid, &mixed, [0.268_941_42, 0.5, 0.880_797_1]),
        (UnaryOp::Silu, &mixed, [-0.268_941_42, 0.0, 1.761_594_2]),
        (UnaryOp::Cos, &f32t(&[3], &[0.0, PI / 3.0, PI]), [1.0, 0.5, -1.0]),
        (UnaryOp::Sin, &f32t(&[3], &[0.0, PI / 6.0, PI / 2.0]), [0.0, 0.5, 1.0]),
    ];
    for (op, x, want) in cases {
        let got = run(Op::Unary(op), std::slice::from_ref(x));
        assert_eq!(got.dtype(), DType::F32, "{op:?}");
        assert_close(&got, &[3], &want, TWO_ULPS);
    }
}

#[test]
fn binary_ops_broadcast_like_numpy() {
    let a23 = f32t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let b3 = f32t(&[3], &[10.0, 20.0, 30.0]);
    let add = run(Op::Binary(BinaryOp::Add), &[a23.clone(), b3.clone()]);
    assert_close(&add, &[2, 3], &[11.0, 22.0, 33.0, 14.0, 25.0, 36.0], 0.0);
    let sub = run(Op::Binary(BinaryOp::Sub), &[b3, a23.clone()]);
    assert_close(&sub, &[2, 3], &[9.0, 18.0, 27.0, 6.0, 15.0, 24.0], 0.0);
    let col = f32t(&[2, 1], &[1.0, 2.0]);
    let row = f32t(&[1, 3], &[3.0, 4.0, 5.0]);
    let outer = run(Op::Binary(BinaryOp::Mul), &[col, row]);
    assert_close(&outer, &[2, 3], &[3.0, 4.0, 5.0, 6.0, 8.0, 10.0], 0.0);
    let s = f32t(&[], &[2.0]);
    let minus = run(Op::Binary(BinaryOp::Sub), &[a23.clone(), s.clone()]);
    assert_close(&minus, &[2, 3], &[-1.0, 0.0, 1.0, 2.0, 3.0, 4.0], 0.0);
    let div = run(Op::Binary(BinaryOp::Div), &[s, f32t(&[3], &[1.0, 4.0, 8.0])]);
    assert_close(&div, &[3], &[2.0, 0.5, 0.25], 0.0);
    let max = run(Op::Binary(BinaryOp::Max), &[f32t(&[2], &[1.0, 5.0]), f32t(&[2, 1], &[3.0, -7.0])]);
    assert_close(&max, &[2, 2], &[3.0, 5.0, 1.0, 5.0], 0.0);
}

#[test]
fn reduce_each_axis_of_rank_3() {
    // x[i][j][k] = 12i + 4j + k, shape [2, 3, 4].
    let x = f32t(&[2, 3, 4], &seq(24));
    let cases: [(ReduceOp, usize, &[usize], &[f32]); 9] = [
        (ReduceOp::Sum, 0, &[1, 3, 4], &[12., 14., 16., 18., 20., 22., 24., 26., 28., 30., 32., 34.]),
        (ReduceOp::Sum, 1, &[2, 1, 4], &[12., 15., 18., 21., 48., 51., 54., 57.]),
        (ReduceOp::Sum, 2, &[2, 3, 1], &[6., 22., 38., 54., 70., 86.]),
        (ReduceOp::Mean, 0, &[1, 3, 4], &[6., 7., 8., 9., 10., 11., 12., 13., 14., 15., 16., 17.]),
        (ReduceOp::Mean, 1, &[2, 1, 4], &[4., 5., 6., 7., 16., 17., 18., 19.]),
        (ReduceOp::Mean, 2, &[2, 3, 1], &[1.5, 5.5, 9.5, 13.5, 17.5, 21.5]),
        (ReduceOp::Max, 0, &[1, 3, 4], &[12., 13., 14., 15., 16., 17., 18., 19., 20., 21., 22., 23.]),
        (ReduceOp::Max, 1, &[2, 1, 4], &[8., 9., 10., 11., 20., 21., 22., 23.]),
        (ReduceOp::Max, 2, &[2, 3, 1], &[3., 7., 11., 15., 19., 23.]),
    ];
    for (op, axis, shape, want) in cases {
        assert_close(&run(Op::Reduce { op, axis }, std::slice::from_ref(&x)), shape, want, 0.0);
    }
    // Max of all-negative values must not be clamped at 0.
    let neg = f32t(&[2, 2], &[-5.0, -2.0, -3.0, -4.0]);
    assert_close(&run(Op::Reduce { op: ReduceOp::Max, axis: 1 }, &[neg]), &[2, 1], &[-2.0, -3.0], 0.0);
}

#[test]
fn matmul_transposes_b_and_keeps_leading_dims() {
    let mut b = Builder::new();
    let a = b.input("x0", DType::F32, shape![2, 2, 3]);
    let w = b.weight("w", DType::F32, shape![2, 3]).unwrap();
    let y = b.matmul("y", a, w).unwrap();
    b.output("y", y).unwrap();
    let g = b.finish().unwrap();
    let weights = Map::from([("w".to_string(), f32t(&[2, 3], &[1.0, 0.0, -1.0, 2.0, 1.0, 0.0]))]);
    let a = f32t(&[2, 2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0]);
    let got = eval_y(&g, &[a], &weights).unwrap();
    assert_close(&got, &[2, 2, 2], &[-2.0, 4.0, -2.0, 13.0, 0.0, 1.0, 0.0, 3.0], 0.0);
    // One row (the decode GEMV path) and five rows (past it, the GEMM path).
    let w = f32t(&[2, 3], &[1.0, 0.0, -1.0, 2.0, 1.0, 0.0]);
    let a1 = f32t(&[1, 3], &[1.0, 2.0, 3.0]);
    assert_close(&run(Op::MatMul, &[a1, w.clone()]), &[1, 2], &[-2.0, 4.0], 0.0);
    let a5 = f32t(&[5, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 2.0, 0.0, 1.0]);
    let want = [-2.0, 4.0, -2.0, 13.0, 0.0, 1.0, 0.0, 3.0, 1.0, 4.0];
    assert_close(&run(Op::MatMul, &[a5, w]), &[5, 2], &want, 0.0);
}

fn gather_graph(ids_shape: Shape) -> Graph {
    let mut b = Builder::new();
    let ids = b.input("x0", DType::I32, ids_shape);
    let table = b.weight("table", DType::F32, shape![4, 2]).unwrap();
    let y = b.gather("embed", table, ids).unwrap();
    b.output("y", y).unwrap();
    b.finish().unwrap()
}

fn table() -> Map {
    Map::from([("table".to_string(), f32t(&[4, 2], &[0.0, 1.0, 10.0, 11.0, 20.0, 21.0, 30.0, 31.0]))])
}

#[test]
fn gather_rows_and_out_of_range_ids() {
    let g = gather_graph(shape![Sym::NewTokens]);
    let got = eval_y(&g, &[i32t(&[3], &[3, 0, 3])], &table()).unwrap();
    assert_close(&got, &[3, 2], &[30.0, 31.0, 0.0, 1.0, 30.0, 31.0], 0.0);
    for bad in [4, -1] {
        match eval_y(&g, &[i32t(&[2], &[1, bad])], &table()) {
            Err(EvalError::Node { node, message }) => {
                assert_eq!(node, "%2 embed");
                assert!(message.contains(&bad.to_string()), "{message}");
            }
            other => panic!("expected a node error, got {other:?}"),
        }
    }
}

#[test]
fn gather_keeps_the_ids_shape() {
    let g = gather_graph(shape![2, 2]);
    let got = eval_y(&g, &[i32t(&[2, 2], &[1, 2, 3, 0])], &table()).unwrap();
    assert_close(&got, &[2, 2, 2], &[10.0, 11.0, 20.0, 21.0, 30.0, 31.0, 0.0, 1.0], 0.0);
}

#[test]
fn reshape_and_slices() {
    let x = f32t(&[4, 2], &seq(8));
    let r = run(Op::Reshape { to: shape![2, 2, 2] }, std::slice::from_ref(&x));
    assert_close(&r, &[2, 2, 2], &seq(8), 0.0);
    let slice = |axis, start, end| run(Op::Slice { axis, start, end }, std::slice::from_ref(&x));
    // x[-1:]
    assert_close(&slice(0, Bound::FromEnd(1), Bound::FromEnd(0)), &[1, 2], &[6.0, 7.0], 0.0);
    // x[1:3], x[-3:-1], x[:, 1:]
    assert_close(&slice(0, Bound::FromStart(1), Bound::FromStart(3)), &[2, 2], &[2.0, 3.0, 4.0, 5.0], 0.0);
    assert_close(&slice(0, Bound::FromEnd(3), Bound::FromEnd(1)), &[2, 2], &[2.0, 3.0, 4.0, 5.0], 0.0);
    assert_close(&slice(1, Bound::FromStart(1), Bound::FromEnd(0)), &[4, 1], &[1.0, 3.0, 5.0, 7.0], 0.0);
    // The last row of a symbolic [T, 2], as generation's `last_position` takes it.
    let mut b = Builder::new();
    let h = b.input("x0", DType::F32, shape![Sym::NewTokens, 2]);
    let y = b.slice("last", h, 0, Bound::FromEnd(1), Bound::FromEnd(0)).unwrap();
    b.output("y", y).unwrap();
    let got = eval_y(&b.finish().unwrap(), &[x], &Map::new()).unwrap();
    assert_close(&got, &[1, 2], &[6.0, 7.0], 0.0);
}

#[test]
#[allow(clippy::type_complexity)]
fn concat_on_each_axis() {
    let a = f32t(&[2, 2, 2], &seq(8));
    let tail = [10.0, 11.0, 12.0, 13.0];
    let cases: [(usize, &[usize], &[usize], [f32; 12]); 3] = [
        (0, &[1, 2, 2], &[3, 2, 2], [0., 1., 2., 3., 4., 5., 6., 7., 10., 11., 12., 13.]),
        (1, &[2, 1, 2], &[2, 3, 2], [0., 1., 2., 3., 10., 11., 4., 5., 6., 7., 12., 13.]),
        (2, &[2, 2, 1], &[2, 2, 3], [0., 1., 10., 2., 3., 11., 4., 5., 12., 6., 7., 13.]),
    ];
    for (axis, b_shape, out, want) in cases {
        assert_close(&run(Op::Concat { axis }, &[a.clone(), f32t(b_shape, &tail)]), out, &want, 0.0);
    }
    let three = run(Op::Concat { axis: 0 }, &[f32t(&[1], &[1.0]), f32t(&[2], &[2.0, 3.0]), f32t(&[1], &[4.0])]);
    assert_close(&three, &[4], &[1.0, 2.0, 3.0, 4.0], 0.0);
}

#[test]
fn concat_i32_is_exact() {
    let big = (1 << 24) + 1;
    let got = run(Op::Concat { axis: 0 }, &[i32t(&[1], &[big]), i32t(&[1], &[-big])]);
    assert_eq!(got.i32s(), Some(&[big, -big][..]));
}

#[test]
fn cast_rounds_to_bf16_and_truncates_to_i32() {
    let x = f32t(&[4], &[1.0 + 2f32.powi(-9), 1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8), -3.0]);
    let bf = run(Op::Cast { to: DType::BF16 }, &[x]);
    assert_eq!(bf.dtype(), DType::BF16);
    // Below half an ulp rounds down; ties go to the even mantissa.
    assert_eq!(bf.f32s().unwrap(), &[1.0, 1.0, 1.0 + 2f32.powi(-6), -3.0]);
    let ints = run(Op::Cast { to: DType::I32 }, &[f32t(&[4], &[2.7, -2.7, 0.5, 3.0])]);
    assert_eq!(ints.i32s(), Some(&[2, -2, 0, 3][..]), "like torch's .to(int32)");
    let back = run(Op::Cast { to: DType::F32 }, &[i32t(&[2], &[-3, 7])]);
    assert_eq!(back.f32s(), Some(&[-3.0, 7.0][..]));
}

/// Graph `y = kv_append(x0: [P, KVH, D], x1: [T, KVH, D])`, optionally also returning the cache.
fn kv_graph(kvh: usize, d: usize, keep_cache: bool) -> Graph {
    let mut b = Builder::new();
    let cache = b.input("x0", DType::F32, shape![Sym::CachedTokens, kvh, d]);
    let new = b.input("x1", DType::F32, shape![Sym::NewTokens, kvh, d]);
    let y = b.op("append", Op::KvAppend, &[cache, new]).unwrap();
    b.output("y", y).unwrap();
    if keep_cache {
        b.output("old", cache).unwrap();
    }
    b.finish().unwrap()
}

#[test]
fn kv_append_rows() {
    let cache = f32t(&[2, 2, 1], &[1.0, 2.0, 3.0, 4.0]);
    let new = f32t(&[1, 2, 1], &[5.0, 6.0]);
    for keep in [false, true] {
        let g = kv_graph(2, 1, keep);
        let got = eval_y(&g, &[cache.clone(), new.clone()], &Map::new()).unwrap();
        assert_close(&got, &[3, 2, 1], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 0.0);
    }
    let mut out =
        eval(&kv_graph(2, 1, true), Map::from([("x0".into(), cache.clone()), ("x1".into(), new)]), &Map::new())
            .unwrap();
    assert_eq!(out.remove("old").unwrap(), cache, "the in-place append must not touch a cache used again");
    let empty = eval_y(&kv_graph(1, 2, false), &[f32t(&[0, 1, 2], &[]), f32t(&[1, 1, 2], &[7.0, 8.0])], &Map::new());
    assert_close(&empty.unwrap(), &[1, 1, 2], &[7.0, 8.0], 0.0);
}

/// Naive causal GQA: explicit dot products, max-subtracted softmax and weighted sum.
#[allow(clippy::too_many_arguments)]
fn naive_attention(q: &[f32], k: &[f32], v: &[f32], t: usize, s: usize, h: usize, kvh: usize, d: usize) -> Vec<f32> {
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0.0; t * h * d];
    for ti in 0..t {
        for hi in 0..h {
            let kh = hi / (h / kvh);
            let seen = s - t + ti + 1;
            let scores: Vec<f32> = (0..seen)
                .map(|si| (0..d).map(|x| q[(ti * h + hi) * d + x] * k[(si * kvh + kh) * d + x]).sum::<f32>() * scale)
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = scores.iter().map(|sc| (sc - max).exp()).collect();
            let denom: f32 = exps.iter().sum();
            for (si, e) in exps.iter().enumerate() {
                for x in 0..d {
                    out[(ti * h + hi) * d + x] += e / denom * v[(si * kvh + kh) * d + x];
                }
            }
        }
    }
    out
}

/// `attention(q[T, H, D], kv_append(k[P, KVH, D], k_new[T, ...]), kv_append(v, v_new))`.
fn attention_graph(h: usize, kvh: usize, d: usize) -> Graph {
    let mut b = Builder::new();
    let q = b.input("x0", DType::F32, shape![Sym::NewTokens, h, d]);
    let mut kv = Vec::new();
    for (i, name) in ["k", "v"].iter().enumerate() {
        let cache = b.input(&format!("x{}", 1 + 2 * i), DType::F32, shape![Sym::CachedTokens, kvh, d]);
        let new = b.input(&format!("x{}", 2 + 2 * i), DType::F32, shape![Sym::NewTokens, kvh, d]);
        kv.push(b.op(name, Op::KvAppend, &[cache, new]).unwrap());
    }
    let y = b.op("attn", Op::Attention { scale: 1.0 / (d as f32).sqrt() }, &[q, kv[0], kv[1]]).unwrap();
    b.output("y", y).unwrap();
    b.finish().unwrap()
}

/// Runs `attention_graph` with the first `p` rows of `k`/`v` cached and the rest new.
fn run_attention(q: &[f32], k: &[f32], v: &[f32], p: usize, h: usize, kvh: usize, d: usize) -> Tensor {
    let (t, row) = (q.len() / (h * d), kvh * d);
    let ins = [
        f32t(&[t, h, d], q),
        f32t(&[p, kvh, d], &k[..p * row]),
        f32t(&[t, kvh, d], &k[p * row..]),
        f32t(&[p, kvh, d], &v[..p * row]),
        f32t(&[t, kvh, d], &v[p * row..]),
    ];
    eval_y(&attention_graph(h, kvh, d), &ins, &Map::new()).unwrap()
}

#[test]
fn attention_by_hand() {
    // D = 1 so scale = 1. Query 0 sees key 0 only; query 1 sees scores (0, ln 3): weights 1/4, 3/4.
    let got = run_attention(&[1.0, 1.0], &[0.0, 3f32.ln()], &[4.0, 8.0], 0, 1, 1, 1);
    assert_close(&got, &[2, 1, 1], &[4.0, 7.0], TWO_ULPS);
    // One key: every head returns its KV head's value row; heads 0, 1 read KV head 0, heads 2, 3 KV head 1.
    let q = noise(1, 4 * 2);
    let got = run_attention(&q, &[0.3, -0.2, 0.9, 0.1], &[1.0, 2.0, 3.0, 4.0], 0, 4, 2, 2);
    assert_close(&got, &[1, 4, 2], &[1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 4.0], TWO_ULPS);
}

#[test]
fn attention_gqa_with_cache_offset() {
    let (h, kvh, d, p, t) = (4, 2, 3, 2, 3);
    let (q, k, v) = (noise(2, t * h * d), noise(3, (p + t) * kvh * d), noise(4, (p + t) * kvh * d));
    let got = run_attention(&q, &k, &v, p, h, kvh, d);
    assert_close(&got, &[t, h, d], &naive_attention(&q, &k, &v, t, p + t, h, kvh, d), TWO_ULPS);
    // Query 0 at position P sees keys 0..=P: changing key P+1 leaves it alone but moves query 1.
    let mut k2 = k.clone();
    k2[(p + 1) * kvh * d] += 5.0;
    let moved = run_attention(&q, &k2, &v, p, h, kvh, d).to_f32_vec();
    let before = got.to_f32_vec();
    assert_eq!(moved[..h * d], before[..h * d]);
    assert_ne!(moved[h * d..2 * h * d], before[h * d..2 * h * d]);
}

#[test]
fn decode_query_sees_every_key() {
    let (h, kvh, d) = (2, 1, 4);
    let (q, k, v) = (noise(5, h * d), noise(6, 4 * kvh * d), noise(7, 4 * kvh * d));
    let decode = run_attention(&q, &k, &v, 3, h, kvh, d);
    // Unmasked softmax over all 4 keys.
    let full = naive_attention(&q, &k, &v, 1, 4, h, kvh, d);
    assert_close(&decode, &[1, h, d], &full, TWO_ULPS);
    // ... which is also the last row of a 4-token prefill ending with this query.
    let mut q4 = noise(8, 3 * h * d);
    q4.extend(&q);
    let prefill = run_attention(&q4, &k, &v, 0, h, kvh, d).to_f32_vec();
    assert_close(&decode, &[1, h, d], &prefill[3 * h * d..], TWO_ULPS);
}

#[test]
fn argmax_takes_the_first_of_ties() {
    let x = f32t(&[2, 3], &[1.0, 3.0, 3.0, 5.0, 5.0, 0.0]);
    let rows = run(Op::ArgMax { axis: 1 }, std::slice::from_ref(&x));
    assert_eq!((rows.dtype(), rows.shape()), (DType::I32, &[2][..]));
    assert_eq!(rows.i32s(), Some(&[1, 0][..]));
    let cols = run(Op::ArgMax { axis: 0 }, &[x]);
    assert_eq!(cols.i32s(), Some(&[1, 1, 0][..]));
    let neg = run(Op::ArgMax { axis: 0 }, &[f32t(&[3], &[-4.0, -1.0, -1.0])]);
    assert_eq!(neg.i32s(), Some(&[1][..]));
}

#[test]
fn argmax_of_a_row_with_nan_or_inf_is_minus_one() {
    let (nan, inf) = (f32::NAN, f32::INFINITY);
    let x = f32t(&[4, 3], &[1.0, nan, 3.0, inf, 0.0, 1.0, 2.0, 5.0, -inf, 0.0, 2.0, 1.0]);
    let rows = run(Op::ArgMax { axis: 1 }, std::slice::from_ref(&x));
    assert_eq!(rows.i32s(), Some(&[-1, -1, -1, 1][..]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn matmul_matches_triple_loop(batch in 1usize..=3, m in 1usize..=17, k in 1usize..=17, n in 1usize..=17, seed: u64) {
        let (a, w) = (noise(seed, batch * m * k), noise(seed ^ 0x5eed, n * k));
        let got = run(Op::MatMul, &[f32t(&[batch, m, k], &a), f32t(&[n, k], &w)]);
        prop_assert_eq!(got.shape(), &[batch, m, n][..]);
        let got = got.to_f32_vec();
        for (row, out) in got.chunks(n).enumerate() {
            for (j, &g) in out.iter().enumerate() {
                let terms = (0..k).map(|x| a[row * k + x] as f64 * w[j * k + x] as f64);
                let (want, mag) = terms.fold((0.0, 0.0), |(s, m), p| (s + p, m + p.abs()));
                // Recursive f32 summation of k terms is within (k - 1) units of 2^-24 of the sum
                // of the magnitudes; measured at most 1.7e-7 of it (k up to 17).
                let bound = k as f64 * 2f64.powi(-24) * mag;
                prop_assert!((g as f64 - want).abs() <= bound, "[{row}, {j}]: {g} vs {want}");
            }
        }
    }

    /// A row's result does not depend on the rows computed with it (the engine's exactness
    /// under chunked prefill, preemption and prefix caching rests on this).
    #[test]
    fn matmul_rows_are_bit_identical_however_the_rows_are_split(
        m in 1usize..=9, k in 1usize..=40, n in 1usize..=150, split in 1usize..=8, seed: u64,
    ) {
        let (a, w) = (noise(seed, m * k), noise(seed ^ 0x5eed, n * k));
        let whole = run(Op::MatMul, &[f32t(&[m, k], &a), f32t(&[n, k], &w)]).to_f32_vec();
        let split = split.min(m);
        let head = run(Op::MatMul, &[f32t(&[split, k], &a[..split * k]), f32t(&[n, k], &w)]).to_f32_vec();
        let mut parts = head;
        for i in split..m {
            parts.extend(run(Op::MatMul, &[f32t(&[1, k], &a[i * k..(i + 1) * k]), f32t(&[n, k], &w)]).to_f32_vec());
        }
        let same = whole.iter().zip(&parts).all(|(x, y)| x.to_bits() == y.to_bits());
        prop_assert!(same, "rows differ once split at {split}");
    }

    /// GQA (1 to 3 query heads per KV head) after 0 to 5 cached tokens, against the naive
    /// loop. The two sum in the same order: every value was bit-identical over 5,000 cases
    /// once (512 a run), so any difference fails.
    #[test]
    #[allow(clippy::too_many_arguments)]
    fn attention_matches_naive_with_gqa_and_cached_tokens(
        t in 1usize..=6, kvh in 1usize..=3, group in 1usize..=3, d in 1usize..=8, p in 0usize..=5, seed: u64,
    ) {
        let h = kvh * group;
        let s = p + t;
        let (q, k, v) = (noise(seed, t * h * d), noise(seed + 1, s * kvh * d), noise(seed + 2, s * kvh * d));
        let got = run_attention(&q, &k, &v, p, h, kvh, d);
        prop_assert_eq!(got.shape(), &[t, h, d][..]);
        for (g, w) in got.to_f32_vec().iter().zip(naive_attention(&q, &k, &v, t, s, h, kvh, d)) {
            prop_assert_eq!(g.to_bits(), w.to_bits(), "{} vs {}", g, w);
        }
    }
}

#[test]
fn a_bf16_or_f32_overflow_inside_the_graph_is_an_error_naming_the_node() {
    for dtype in [DType::BF16, DType::F32] {
        // 1e30 squared is inf in both; the square feeds a node, the sum is the output.
        let mut b = Builder::new();
        let x = b.input("x", dtype, fixed(&[2]));
        let sq = b.op("sq", Op::Unary(UnaryOp::Square), &[x]).unwrap();
        let y = b.op("y", Op::Binary(BinaryOp::Mul), &[sq, x]).unwrap();
        b.output("y", y).unwrap();
        let graph = b.finish().unwrap();
        let inputs = || HashMap::from([("x".to_string(), Tensor::from_f32(dtype, vec![2], vec![1e30, 1.0]))]);
        assert!(eval(&graph, inputs(), &Map::new()).is_ok(), "plain evaluation allows it");
        let err = eval_with(&graph, inputs(), &Map::new(), EvalOptions { overflow_is_error: true }).unwrap_err();
        let EvalError::Overflow { node, count, .. } = &err else { panic!("{err}") };
        assert_eq!((node.as_str(), *count), ("%1 sq", 1), "{err}");
        // An output is left to the caller (a model names the logits' position).
        let mut b = Builder::new();
        let x = b.input("x", dtype, fixed(&[2]));
        let sq = b.op("sq", Op::Unary(UnaryOp::Square), &[x]).unwrap();
        b.output("sq", sq).unwrap();
        let graph = b.finish().unwrap();
        let out = eval_with(&graph, inputs(), &Map::new(), EvalOptions { overflow_is_error: true }).unwrap();
        assert_eq!(out["sq"].to_f32_vec()[0], f32::INFINITY);
    }
    // A fused RMSNorm whose mean square overflows zeroes the row (rsqrt(inf) = 0): what the op
    // means, and an error in a model evaluation.
    let mut b = Builder::new();
    let x = b.input("x", DType::F32, fixed(&[1, 2]));
    let w = b.input("w", DType::F32, fixed(&[2]));
    let y = b.op("norm", Op::RmsNorm { eps: 1e-6 }, &[x, w]).unwrap();
    let z = b.op("z", Op::Unary(UnaryOp::Neg), &[y]).unwrap();
    b.output("z", z).unwrap();
    let graph = b.finish().unwrap();
    let inputs = |x0: f32| {
        HashMap::from([
            ("x".to_string(), Tensor::from_f32(DType::F32, vec![1, 2], vec![x0, 1.0])),
            ("w".to_string(), Tensor::from_f32(DType::F32, vec![2], vec![1.0, 1.0])),
        ])
    };
    assert_eq!(eval(&graph, inputs(1e30), &Map::new()).unwrap()["z"].to_f32_vec(), [0.0, 0.0]);
    let err = eval_with(&graph, inputs(1e30), &Map::new(), EvalOptions { overflow_is_error: true }).unwrap_err();
    assert!(err.to_string().contains("%2 norm: the mean square of 1 rows is not finite"), "{err}");
    assert!(eval_with(&graph, inputs(1e18), &Map::new(), EvalOptions { overflow_is_error: true }).is_ok());
}

#[test]
fn an_f16_result_beyond_its_range_is_an_error_naming_the_node() {
    // 300 * 300 = 90,000 > 65,504: fine in bf16 and f32, an overflow in f16.
    let x = |dtype| Tensor::from_f32(dtype, vec![2], vec![300.0, 1.0]);
    let mut b = Builder::new();
    let xs: Vec<NodeId> = (0..2).map(|i| b.input(&format!("x{i}"), DType::F16, fixed(&[2]))).collect();
    let y = b.op("y", Op::Binary(BinaryOp::Mul), &xs).unwrap();
    b.output("y", y).unwrap();
    let graph = b.finish().unwrap();
    let inputs = || (0..2).map(|i| (format!("x{i}"), x(DType::F16))).collect::<HashMap<_, _>>();
    // Plain evaluation allows it (inf is what f16 arithmetic gives); the model check does not.
    assert_eq!(eval(&graph, inputs(), &Map::new()).unwrap()["y"].to_f32_vec()[0], f32::INFINITY);
    let checked = EvalOptions { overflow_is_error: true };
    let err = eval_with(&graph, inputs(), &Map::new(), checked).unwrap_err();
    let EvalError::F16Overflow { node, count } = &err else { panic!("{err}") };
    assert_eq!((node.as_str(), *count), ("%2 y", 1), "{err}");
    assert!(err.to_string().contains("bf16 or f32"), "{err}");
    for dtype in [DType::BF16, DType::F32] {
        let y = run(Op::Binary(BinaryOp::Mul), &[x(dtype), x(dtype)]);
        assert!(y.to_f32_vec()[0] > 65504.0);
    }
    // The matmul accumulates in f32: a sum whose partial sums leave f16's range but whose
    // result is in range is fine.
    let a = Tensor::from_f32(DType::F16, vec![1, 2], vec![60000.0, 60000.0]);
    let w = Tensor::from_f32(DType::F16, vec![1, 2], vec![1.0, -0.5]);
    assert_close(&run(Op::MatMul, &[a, w]), &[1, 1], &[30000.0], 1e-3);
}

/// An epilogue reads its part of the accumulator: part `p` of `n` is columns
/// `[p * width / n, (p + 1) * width / n)` of every row; one part is the whole.
#[test]
fn an_epilogue_reads_its_part_of_the_accumulator() {
    use crate::{Expr, ExprKind};
    // 2 rows of 6 columns: value = 10 * row + column.
    let acc = Tensor::from_f32(DType::F32, vec![2, 6], (0..12).map(|i| (10 * (i / 6) + i % 6) as f32).collect());
    let part = |part: usize, parts: usize| {
        let e = Expr::new(ExprKind::Acc { part, parts }, DType::F32);
        super::fused::expr(&e, &[], Some(&acc)).unwrap().into_owned()
    };
    assert_eq!(part(0, 1).to_f32_vec(), acc.to_f32_vec());
    assert_eq!((part(0, 3).shape().to_vec(), part(0, 3).to_f32_vec()), (vec![2, 2], vec![0.0, 1.0, 10.0, 11.0]));
    assert_eq!(part(1, 3).to_f32_vec(), [2.0, 3.0, 12.0, 13.0]);
    assert_eq!(part(2, 3).to_f32_vec(), [4.0, 5.0, 14.0, 15.0]);
    assert_eq!(part(1, 2).to_f32_vec(), [3.0, 4.0, 5.0, 13.0, 14.0, 15.0]);
}
