//! Fused ops: made by passes from chains of primitive ops, never declared by a model. Each
//! means exactly the chain it replaced. Everything the IR knows of one (its name, operands,
//! attributes, type and meaning) is answered here, one exhaustive match per question, so that a
//! new fused op is a variant and its arms in this file.

use crate::dtype::DType;
use crate::eval::fused as meaning;
use crate::eval::movement;
use crate::expr::Expr;
use crate::infer::{matmul_type, Ty};
use crate::shape::{Dim, Shape, Sym};
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq)]
pub enum FusedOp {
    /// HF's Qwen3RMSNorm over the last axis: `(x, w)`.
    RmsNorm { eps: f32 },
    /// `epilogue(rmsnorm?(x) @ w^T)`. Operands: `x, w`, then the norm weight when `norm_eps` is
    /// set, then the epilogue's inputs (`Input(i)` is the i-th of those).
    Linear { norm_eps: Option<f32>, epilogue: Option<Expr> },
    /// RMSNorm over the head dim then rotary embedding (NeoX split-half) at `positions`, with
    /// cos/sin computed in f32 from `inv_freq`. Operands: `x[T, heads, D], norm_w[D],
    /// positions i32[T], inv_freq f32[D/2]`, then, when `append`, a cache `[P, heads, D]` that
    /// the result is appended to (the op then yields the cache `[P+T, heads, D]`).
    NormRope { eps: f32, append: bool },
    /// Attention whose queries get `NormRope` first. Operands: `q_raw[T, H, D], norm_w[D],
    /// positions, inv_freq, k[S, KVH, D], v[S, KVH, D]`.
    NormRopeAttention { eps: f32, scale: f32 },
    /// A fused elementwise region: `body` over the operands, broadcast as NumPy does.
    Elementwise { body: Expr },
}

impl FusedOp {
    /// The op's kind as printed and counted.
    pub fn kind(&self) -> &'static str {
        match self {
            FusedOp::RmsNorm { .. } => "rmsnorm",
            FusedOp::Linear { norm_eps: None, epilogue: None } => "linear",
            FusedOp::Linear { norm_eps: Some(_), epilogue: None } => "linear_rmsnorm",
            FusedOp::Linear { norm_eps: None, epilogue: Some(_) } => "linear_epilogue",
            FusedOp::Linear { norm_eps: Some(_), epilogue: Some(_) } => "linear_rmsnorm_epilogue",
            FusedOp::NormRope { append: false, .. } => "norm_rope",
            FusedOp::NormRope { append: true, .. } => "norm_rope_kv_append",
            FusedOp::NormRopeAttention { .. } => "norm_rope_attention",
            FusedOp::Elementwise { .. } => "elementwise",
        }
    }

    /// The number of operands, or `None` when it varies (with the epilogue's inputs).
    pub fn arity(&self) -> Option<usize> {
        match self {
            FusedOp::RmsNorm { .. } => Some(2),
            FusedOp::NormRope { append, .. } => Some(if *append { 5 } else { 4 }),
            FusedOp::NormRopeAttention { .. } => Some(6),
            FusedOp::Linear { .. } | FusedOp::Elementwise { .. } => None,
        }
    }

    /// Attributes as printed after the kind.
    pub fn attrs(&self) -> String {
        match self {
            FusedOp::RmsNorm { eps } | FusedOp::NormRope { eps, .. } => format!("eps={eps:?}"),
            FusedOp::Linear { norm_eps, epilogue } => {
                let norm = norm_eps.map(|eps| format!("norm_eps={eps:?}"));
                let epilogue = epilogue.as_ref().map(|e| format!("epilogue={e}"));
                norm.into_iter().chain(epilogue).collect::<Vec<_>>().join(", ")
            }
            FusedOp::NormRopeAttention { eps, scale } => format!("eps={eps:?}, scale={scale:?}, causal"),
            FusedOp::Elementwise { body } => format!("{body}"),
        }
    }

    /// For an op that appends this step's rows to a KV cache (and yields the grown cache): the
    /// operand holding the cache.
    pub fn kv_cache_operand(&self) -> Option<usize> {
        match self {
            FusedOp::NormRope { append: true, .. } => Some(4),
            FusedOp::NormRope { append: false, .. }
            | FusedOp::RmsNorm { .. }
            | FusedOp::Linear { .. }
            | FusedOp::NormRopeAttention { .. }
            | FusedOp::Elementwise { .. } => None,
        }
    }

    /// The eps of the RMSNorm an op applies to its first operand, if it normalizes it.
    pub fn norm_eps(&self) -> Option<f32> {
        match self {
            FusedOp::RmsNorm { eps } | FusedOp::NormRope { eps, .. } | FusedOp::NormRopeAttention { eps, .. } => {
                Some(*eps)
            }
            FusedOp::Linear { norm_eps, .. } => *norm_eps,
            FusedOp::Elementwise { .. } => None,
        }
    }

    /// The result type, which must be exactly the type of the chain the op replaced.
    pub(crate) fn infer(&self, ins: &[Ty]) -> Result<(DType, Shape), String> {
        match self {
            FusedOp::RmsNorm { .. } => {
                let (x, w) = (ins[0], ins[1]);
                norm_weight(x, w)?;
                Ok((x.0, x.1.clone()))
            }
            FusedOp::Linear { norm_eps, epilogue } => linear_type(ins, norm_eps.is_some(), epilogue.as_ref()),
            FusedOp::NormRope { append, .. } => {
                let x = rope_operands(ins)?;
                if !append {
                    return Ok((x.0, x.1.clone()));
                }
                let cache = ins[4];
                let ok = cache.0 == x.0
                    && cache.1.rank() == 3
                    && cache.1 .0[0] == Dim::Sym(Sym::CachedTokens)
                    && cache.1 .0[1..] == x.1 .0[1..];
                if !ok {
                    return Err(format!("cache {}{} does not fit keys {}{}", cache.0, cache.1, x.0, x.1));
                }
                Ok((x.0, Shape(vec![Dim::Sym(Sym::TotalTokens), x.1 .0[1], x.1 .0[2]])))
            }
            FusedOp::NormRopeAttention { .. } => {
                let q = rope_operands(ins)?;
                let attention = crate::op::Op::Attention { scale: 1.0 };
                crate::infer::infer(&attention, &[q, ins[4], ins[5]])?.ok_or_else(|| "attention has no type".into())
            }
            FusedOp::Elementwise { body } => Ok((body.dtype, body.infer(ins, None)?)),
        }
    }

    /// The op's value, composed from the primitive ops it replaced (`eval::fused`).
    pub(crate) fn eval(&self, args: &[&Tensor], dtype: DType) -> Result<Tensor, String> {
        match self {
            FusedOp::RmsNorm { eps } => meaning::rms_norm(args[0], args[1], *eps),
            FusedOp::Linear { norm_eps, epilogue } => meaning::linear(args, *norm_eps, epilogue.as_ref()),
            FusedOp::NormRope { eps, append: false } => meaning::norm_rope(args, *eps),
            FusedOp::NormRope { eps, append: true } => {
                Ok(movement::append_rows(args[4].clone(), &meaning::norm_rope(&args[..4], *eps)?))
            }
            FusedOp::NormRopeAttention { eps, scale } => meaning::norm_rope_attention(args, *eps, *scale, dtype),
            FusedOp::Elementwise { body } => Ok(meaning::expr(body, args, None)?.into_owned()),
        }
    }

    /// For an op that appends to a KV cache: the rows it appends (the cache operand is not read,
    /// so an evaluator may move the cache out and append in place).
    pub(crate) fn appended_rows(&self, args: &[&Tensor]) -> Option<Result<Tensor, String>> {
        match self {
            FusedOp::NormRope { eps, append: true } => Some(meaning::norm_rope(&args[..4], *eps)),
            FusedOp::NormRope { append: false, .. }
            | FusedOp::RmsNorm { .. }
            | FusedOp::Linear { .. }
            | FusedOp::NormRopeAttention { .. }
            | FusedOp::Elementwise { .. } => None,
        }
    }
}

/// `Linear`'s type: operands `x, w`, the norm weight when normalized, the epilogue's inputs.
fn linear_type(ins: &[Ty], normalized: bool, epilogue: Option<&Expr>) -> Result<(DType, Shape), String> {
    if ins.len() < 2 {
        return Err("linear needs x and w".into());
    }
    let mut extra = &ins[2..];
    if normalized {
        let w = extra.first().ok_or("linear with a norm prologue needs the norm weight")?;
        norm_weight(ins[0], *w)?;
        extra = &extra[1..];
    }
    let acc = matmul_type(ins[0], ins[1])?;
    match epilogue {
        None if extra.is_empty() => Ok(acc),
        None => Err(format!("linear without an epilogue takes no extra inputs, got {}", extra.len())),
        Some(e) => {
            let shape = e.infer(extra, Some((acc.0, &acc.1)))?;
            Ok((e.dtype, shape))
        }
    }
}

fn norm_weight(x: Ty, w: Ty) -> Result<(), String> {
    if !x.0.is_float() || w.0 != x.0 || w.1.rank() != 1 || w.1.last() != x.1.last() {
        return Err(format!("norm weight {}{} does not fit {}{}", w.0, w.1, x.0, x.1));
    }
    Ok(())
}

/// Checks `x[T, heads, D], norm_w[D], positions i32[T], inv_freq f32[D/2]`; returns x's type.
fn rope_operands<'a>(ins: &[Ty<'a>]) -> Result<Ty<'a>, String> {
    let (x, w, pos, inv) = (ins[0], ins[1], ins[2], ins[3]);
    norm_weight(x, w)?;
    let d = x.1.last().and_then(|d| d.fixed()).ok_or("rope needs a fixed head dim")?;
    let ok = x.1.rank() == 3
        && d % 2 == 0
        && pos.0 == DType::I32
        && pos.1 .0 == [x.1 .0[0]]
        && inv.0 == DType::F32
        && inv.1 .0 == [Dim::Fixed(d / 2)];
    if !ok {
        return Err(format!(
            "rope operands do not fit: x {}, positions {}{}, inv_freq {}{}",
            x.1, pos.0, pos.1, inv.0, inv.1
        ));
    }
    Ok(x)
}
