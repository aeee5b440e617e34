//! Elementwise ops, reductions, casts and argmax.

use crate::dtype::DType;
use crate::op::{BinaryOp, ReduceOp, UnaryOp};
use crate::tensor::Tensor;

fn floats(t: &Tensor) -> Vec<f32> {
    t.to_f32_vec()
}

pub fn unary(op: UnaryOp, x: &Tensor, dtype: DType) -> Tensor {
    let f: fn(f32) -> f32 = match op {
        UnaryOp::Neg => |x| -x,
        UnaryOp::Exp => f32::exp,
        UnaryOp::Square => |x| x * x,
        UnaryOp::Sqrt => f32::sqrt,
        UnaryOp::Rsqrt => |x| 1.0 / x.sqrt(),
        UnaryOp::Recip => |x| 1.0 / x,
        UnaryOp::Sigmoid => |x| 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Silu => |x| x / (1.0 + (-x).exp()),
        UnaryOp::Cos => f32::cos,
        UnaryOp::Sin => f32::sin,
    };
    let v =
        x.f32s().map(|s| s.iter().map(|&a| f(a)).collect()).unwrap_or_else(|| floats(x).into_iter().map(f).collect());
    Tensor::from_f32(dtype, x.shape().to_vec(), v)
}

fn binary_fn(op: BinaryOp) -> fn(f32, f32) -> f32 {
    match op {
        BinaryOp::Add => |a, b| a + b,
        BinaryOp::Sub => |a, b| a - b,
        BinaryOp::Mul => |a, b| a * b,
        BinaryOp::Div => |a, b| a / b,
        BinaryOp::Max => f32::max,
    }
}

/// Strides of `shape` as seen from a broadcast result of rank `rank` (0 on broadcast dims).
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let off = out.len() - shape.len();
    let mut strides = vec![0; out.len()];
    let mut acc = 1;
    for i in (0..shape.len()).rev() {
        strides[off + i] = if shape[i] == 1 && out[off + i] != 1 { 0 } else { acc };
        acc *= shape[i];
    }
    strides
}

pub fn binary(op: BinaryOp, a: &Tensor, b: &Tensor, dtype: DType, out_shape: &[usize]) -> Tensor {
    let f = binary_fn(op);
    let (av, bv) = (a.to_f32_vec(), b.to_f32_vec());
    let n: usize = out_shape.iter().product();
    let v: Vec<f32> = if a.shape() == out_shape && b.shape() == out_shape {
        av.iter().zip(&bv).map(|(&x, &y)| f(x, y)).collect()
    } else if b.len() == 1 {
        av.iter().map(|&x| f(x, bv[0])).collect()
    } else {
        let (sa, sb) = (broadcast_strides(a.shape(), out_shape), broadcast_strides(b.shape(), out_shape));
        let mut idx = vec![0usize; out_shape.len()];
        let (mut ia, mut ib) = (0usize, 0usize);
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(f(av[ia], bv[ib]));
            // Odometer increment, keeping the flat offsets of both operands in step.
            for d in (0..out_shape.len()).rev() {
                idx[d] += 1;
                ia += sa[d];
                ib += sb[d];
                if idx[d] < out_shape[d] {
                    break;
                }
                ia -= sa[d] * out_shape[d];
                ib -= sb[d] * out_shape[d];
                idx[d] = 0;
            }
        }
        v
    };
    Tensor::from_f32(dtype, out_shape.to_vec(), v)
}

/// Splits a shape around `axis` into (outer, len, inner) element counts.
pub(super) fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

pub fn reduce(op: ReduceOp, x: &Tensor, axis: usize, dtype: DType) -> Tensor {
    let v = x.to_f32_vec();
    let (outer, len, inner) = around(x.shape(), axis);
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let it = (0..len).map(|k| v[(o * len + k) * inner + i]);
            out.push(match op {
                ReduceOp::Sum => it.sum(),
                ReduceOp::Mean => it.sum::<f32>() / len as f32,
                ReduceOp::Max => it.fold(f32::NEG_INFINITY, f32::max),
            });
        }
    }
    let mut shape = x.shape().to_vec();
    shape[axis] = 1;
    Tensor::from_f32(dtype, shape, out)
}

pub fn cast(x: &Tensor, to: DType) -> Tensor {
    match to {
        DType::I32 => {
            let v = x.to_f32_vec().into_iter().map(|f| f as i32).collect();
            Tensor::from_i32(x.shape().to_vec(), v)
        }
        _ => Tensor::from_f32(to, x.shape().to_vec(), x.to_f32_vec()),
    }
}

pub fn argmax(x: &Tensor, axis: usize) -> Tensor {
    let v = x.to_f32_vec();
    let (outer, len, inner) = around(x.shape(), axis);
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| v[(o * len + k) * inner + i];
            let mut best = 0;
            for k in 1..len {
                if at(k) > at(best) {
                    best = k;
                }
            }
            let finite = (0..len).all(|k| at(k).is_finite());
            out.push(if finite { best as i32 } else { -1 });
        }
    }
    let mut shape = x.shape().to_vec();
    shape.remove(axis);
    Tensor::from_i32(shape, out)
}
