//! The meaning of fused ops, composed from the primitive kernels they replaced, so that a
//! fused graph evaluates to exactly what the primitive graph did.

use std::borrow::Cow;

use super::{elementwise as ew, linalg, movement};
use crate::dtype::DType;
use crate::expr::{Expr, ExprKind};
use crate::op::{BinaryOp, Bound, ReduceOp, UnaryOp};
use crate::tensor::Tensor;

fn scalar(v: f32) -> Tensor {
    Tensor::from_f32(DType::F32, Vec::new(), vec![v])
}

/// NumPy broadcasting of concrete shapes.
fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let rank = a.len().max(b.len());
    let at = |s: &[usize], i: usize| if i < rank - s.len() { 1 } else { s[i - (rank - s.len())] };
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(format!("cannot broadcast {a:?} with {b:?}")),
        })
        .collect()
}

fn binary(op: BinaryOp, a: &Tensor, b: &Tensor, dtype: DType) -> Result<Tensor, String> {
    let shape = broadcast(a.shape(), b.shape())?;
    Ok(ew::binary(op, a, b, dtype, &shape))
}

/// HF's Qwen3RMSNorm, op for op as `models::qwen3` declares it: in f32, then cast back, then
/// times the weight.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor, String> {
    let dtype = x.dtype();
    let last = x.shape().len().checked_sub(1).ok_or("rmsnorm of a scalar")?;
    let (x32, var) = mean_square(x, eps, last)?;
    let inv = ew::unary(UnaryOp::Rsqrt, &var, DType::F32);
    let y = binary(BinaryOp::Mul, &x32, &inv, DType::F32)?;
    binary(BinaryOp::Mul, w, &ew::cast(&y, dtype), dtype)
}

/// `x` in f32 and `mean(x², last axis) + eps`, as RMSNorm computes them.
fn mean_square(x: &Tensor, eps: f32, last: usize) -> Result<(Tensor, Tensor), String> {
    let x32 = ew::cast(x, DType::F32);
    let sq = ew::unary(UnaryOp::Square, &x32, DType::F32);
    let mean = ew::reduce(ReduceOp::Mean, &sq, last, DType::F32);
    let var = binary(BinaryOp::Add, &mean, &scalar(eps), DType::F32)?;
    Ok((x32, var))
}

/// Rows of `x` whose mean square (plus `eps`) is not finite in f32. RMSNorm multiplies them by
/// rsqrt(inf) = 0: a model's overflowed activation would silently zero the row. (As an op, that
/// is what RMSNorm means; a model evaluation refuses it.)
pub fn norm_overflows(x: &Tensor, eps: f32) -> Result<usize, String> {
    let last = x.shape().len().checked_sub(1).ok_or("rmsnorm of a scalar")?;
    let (_, var) = mean_square(x, eps, last)?;
    Ok(var.f32s().map_or(0, |v| v.iter().filter(|v| !v.is_finite()).count()))
}

/// Rotary embedding of `x[T, heads, D]` at `positions`, as `models::qwen3` declares it.
pub fn rope(x: &Tensor, positions: &Tensor, inv_freq: &Tensor) -> Result<Tensor, String> {
    let dtype = x.dtype();
    let (t, d) = (x.shape()[0], x.shape()[2]);
    let pos = ew::cast(positions, DType::F32).reshaped(vec![t, 1]);
    let freqs = binary(BinaryOp::Mul, &pos, inv_freq, DType::F32)?;
    let emb = movement::concat(&[&freqs, &freqs], 1);
    let table = |u| ew::cast(&ew::unary(u, &emb, DType::F32), dtype).reshaped(vec![t, 1, d]);
    let (cos, sin) = (table(UnaryOp::Cos), table(UnaryOp::Sin));
    let half = d / 2;
    let x1 = movement::slice(x, 2, Bound::FromStart(0), Bound::FromStart(half))?;
    let x2 = movement::slice(x, 2, Bound::FromStart(half), Bound::FromStart(d))?;
    let rotated = movement::concat(&[&ew::unary(UnaryOp::Neg, &x2, dtype), &x1], 2);
    let a = binary(BinaryOp::Mul, x, &cos, dtype)?;
    let c = binary(BinaryOp::Mul, &rotated, &sin, dtype)?;
    binary(BinaryOp::Add, &a, &c, dtype)
}

/// `NormRope` without the append: operands `x, norm_w, positions, inv_freq`.
pub fn norm_rope(args: &[&Tensor], eps: f32) -> Result<Tensor, String> {
    rope(&rms_norm(args[0], args[1], eps)?, args[2], args[3])
}

/// `NormRopeAttention`: operands `q_raw, norm_w, positions, inv_freq, k, v`.
pub fn norm_rope_attention(args: &[&Tensor], eps: f32, scale: f32, dtype: DType) -> Result<Tensor, String> {
    let q = norm_rope(&args[..4], eps)?;
    linalg::attention(&q, args[4], args[5], scale, dtype)
}

/// `Linear`: operands `x, w, [norm_w], extra...`.
pub fn linear(args: &[&Tensor], norm_eps: Option<f32>, epilogue: Option<&Expr>) -> Result<Tensor, String> {
    let (x, w) = (args[0], args[1]);
    let mut extra = &args[2..];
    let normed;
    let x = match norm_eps {
        Some(eps) => {
            normed = rms_norm(x, extra.first().ok_or("missing norm weight")?, eps)?;
            extra = &extra[1..];
            &normed
        }
        None => x,
    };
    let acc = linalg::matmul(x, w, x.dtype());
    match epilogue {
        None => Ok(acc),
        Some(e) => Ok(expr(e, extra, Some(&acc))?.into_owned()),
    }
}

/// Evaluates an expression tree, rounding every node to its dtype as the primitive op did.
pub fn expr<'a>(e: &Expr, inputs: &[&'a Tensor], acc: Option<&'a Tensor>) -> Result<Cow<'a, Tensor>, String> {
    Ok(match &e.kind {
        ExprKind::Input(i) => Cow::Borrowed(*inputs.get(*i).ok_or_else(|| format!("no input {i}"))?),
        ExprKind::Acc { part, parts } => {
            let acc = acc.ok_or("no accumulator")?;
            if *parts == 1 {
                Cow::Borrowed(acc)
            } else {
                let axis = acc.shape().len() - 1;
                let n = acc.shape()[axis] / parts;
                let (s, t) = (Bound::FromStart(part * n), Bound::FromStart((part + 1) * n));
                Cow::Owned(movement::slice(acc, axis, s, t)?)
            }
        }
        ExprKind::Const(c) => Cow::Owned(Tensor::from_f32(e.dtype, Vec::new(), vec![*c])),
        ExprKind::Unary(u, x) => Cow::Owned(ew::unary(*u, &*expr(x, inputs, acc)?, e.dtype)),
        ExprKind::Binary(b, x, y) => Cow::Owned(binary(*b, &*expr(x, inputs, acc)?, &*expr(y, inputs, acc)?, e.dtype)?),
        ExprKind::Cast(x) => Cow::Owned(ew::cast(&*expr(x, inputs, acc)?, e.dtype)),
    })
}
