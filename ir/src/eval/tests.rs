//! The evaluator against hand-computed values: elementwise ops, reductions, gathers, views,
//! casts, argmax, overflow checks and epilogue parts (matmul and attention: `linalg_tests`);
//! the helpers the evaluator's tests share.

use std::collections::HashMap;

use super::{eval, eval_with, EvalError, EvalOptions};
use crate::{
    shape, BinaryOp, Bound, Builder, DType, Dim, FusedOp, Graph, NodeId, Op, ReduceOp, Shape, Sym, Tensor, UnaryOp,
};

pub(super) type Map = HashMap<String, Tensor>;

pub(super) fn f32t(shape: &[usize], v: &[f32]) -> Tensor {
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
pub(super) fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Evaluates `graph` with inputs named `x0, x1, …` and returns output `y`.
pub(super) fn eval_y(graph: &Graph, ins: &[Tensor], weights: &Map) -> Result<Tensor, EvalError> {
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

pub(super) fn run(op: Op, ins: &[Tensor]) -> Tensor {
    run_op(op, ins).unwrap()
}

/// Every element within `tol` of `want`, relative to its own magnitude (`tol = 0`: equal).
/// The evaluator's tests use 0 (exact values) or `TWO_ULPS` (libm's exp, sigmoid, cos and the
/// attention sums against closed forms: measured at most 6.8e-8).
pub(super) const TWO_ULPS: f32 = 2.0 * f32::EPSILON;

#[track_caller]
pub(super) fn assert_close(got: &Tensor, shape: &[usize], want: &[f32], tol: f32) {
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
    let y = b.op("norm", Op::Fused(FusedOp::RmsNorm { eps: 1e-6 }), &[x, w]).unwrap();
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

/// `eval_observed` reports each node once, after it is computed, and computes what `eval`
/// computes.
#[test]
fn eval_observed_counts_every_node_once() {
    let g = gather_graph(shape![Sym::NewTokens]);
    let inputs = || HashMap::from([("x0".to_string(), i32t(&[3], &[3, 0, 2]))]);
    let mut seen = 0;
    let observed = super::eval_observed(&g, inputs(), &table(), EvalOptions::default(), &mut || seen += 1).unwrap();
    assert_eq!(seen, g.node_count());
    assert_eq!(observed, eval(&g, inputs(), &table()).unwrap());
}
