//! Type inference for fused ops: each must produce exactly the type of the chain it replaced.

use crate::dtype::DType;
use crate::infer::{matmul_type, Ty};
use crate::op::Op;
use crate::shape::{Dim, Shape, Sym};

pub(crate) fn infer_fused(op: &Op, ins: &[Ty]) -> Result<(DType, Shape), String> {
    match op {
        Op::RmsNorm { .. } => {
            let (x, w) = (ins[0], ins[1]);
            norm_weight(x, w)?;
            Ok((x.0, x.1.clone()))
        }
        Op::Linear { norm_eps, epilogue } => {
            if ins.len() < 2 {
                return Err("linear needs x and w".into());
            }
            let mut extra = &ins[2..];
            if norm_eps.is_some() {
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
        Op::NormRope { append, .. } => {
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
        Op::NormRopeAttention { .. } => {
            let q = rope_operands(ins)?;
            let attention = Op::Attention { scale: 1.0 };
            match crate::infer::infer(&attention, &[q, ins[4], ins[5]])? {
                Some(t) => Ok(t),
                None => Err("attention has no type".into()),
            }
        }
        Op::Elementwise { body } => Ok((body.dtype, body.infer(ins, None)?)),
        other => Err(format!("{} is not a fused op", other.kind())),
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
