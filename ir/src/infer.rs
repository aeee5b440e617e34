//! Type inference: the dtype and shape each op produces from its operands. The builder uses
//! it to construct nodes; the verifier re-runs it over a whole graph.

use crate::dtype::DType;
use crate::op::{Bound, Op, ReduceOp};
use crate::shape::{Dim, Shape, Sym};

/// The type of an operand as inference sees it.
pub type Ty<'a> = (DType, &'a Shape);

/// Infers the output type of `op` applied to `ins`. Leaves have no inferable type: `Ok(None)`.
pub fn infer(op: &Op, ins: &[Ty]) -> Result<Option<(DType, Shape)>, String> {
    if let Some(n) = op.arity() {
        if ins.len() != n {
            return Err(format!("{} takes {n} operands, got {}", op.kind(), ins.len()));
        }
    }
    let out = match op {
        Op::Input { .. } | Op::Weight { .. } | Op::Constant { .. } => return Ok(None),
        Op::Unary(_) => {
            float(op, ins[0])?;
            (ins[0].0, ins[0].1.clone())
        }
        Op::Binary(_) => {
            same_dtype(op, ins)?;
            (ins[0].0, broadcast(ins[0].1, ins[1].1)?)
        }
        Op::Reduce { op: r, axis } => {
            float(op, ins[0])?;
            let mut dims = ins[0].1 .0.clone();
            check_axis(*axis, dims.len())?;
            if *r == ReduceOp::Mean && dims[*axis].fixed().is_none() {
                return Err("mean over a symbolic axis is not supported".into());
            }
            dims[*axis] = Dim::Fixed(1);
            (ins[0].0, Shape(dims))
        }
        Op::MatMul => matmul(op, ins)?,
        Op::Gather => {
            let (table, ids) = (ins[0], ins[1]);
            if ids.0 != DType::I32 {
                return Err(format!("gather ids must be i32, found {}", ids.0));
            }
            if table.1.rank() != 2 {
                return Err(format!("gather table must be rank 2, found {}", table.1));
            }
            let mut dims = ids.1 .0.clone();
            dims.push(table.1 .0[1]);
            (table.0, Shape(dims))
        }
        Op::Reshape { to } => {
            if ins[0].1.volume() != to.volume() {
                return Err(format!("cannot reshape {} to {to}", ins[0].1));
            }
            (ins[0].0, to.clone())
        }
        Op::Slice { axis, start, end } => {
            let mut dims = ins[0].1 .0.clone();
            check_axis(*axis, dims.len())?;
            dims[*axis] = slice_dim(dims[*axis], *start, *end)?;
            (ins[0].0, Shape(dims))
        }
        Op::Concat { axis } => concat(ins, *axis)?,
        Op::Cast { to } => (*to, ins[0].1.clone()),
        Op::KvAppend => kv_append(op, ins)?,
        Op::Attention { .. } => attention(op, ins)?,
        Op::ArgMax { axis } => {
            float(op, ins[0])?;
            let mut dims = ins[0].1 .0.clone();
            check_axis(*axis, dims.len())?;
            dims.remove(*axis);
            (DType::I32, Shape(dims))
        }
    };
    Ok(Some(out))
}

fn float(op: &Op, t: Ty) -> Result<(), String> {
    if t.0.is_float() {
        Ok(())
    } else {
        Err(format!("{} needs a float operand, found {}", op.kind(), t.0))
    }
}

fn same_dtype(op: &Op, ins: &[Ty]) -> Result<(), String> {
    match ins.iter().find(|t| t.0 != ins[0].0) {
        Some(t) => Err(format!("{} mixes dtypes {} and {}", op.kind(), ins[0].0, t.0)),
        None => Ok(()),
    }
}

fn check_axis(axis: usize, rank: usize) -> Result<(), String> {
    if axis < rank {
        Ok(())
    } else {
        Err(format!("axis {axis} out of range for rank {rank}"))
    }
}

/// NumPy broadcasting: dims align from the right; equal dims or a fixed 1 broadcast.
pub fn broadcast(a: &Shape, b: &Shape) -> Result<Shape, String> {
    let rank = a.rank().max(b.rank());
    let pad = |s: &Shape, i: usize| -> Dim {
        let off = rank - s.rank();
        if i < off {
            Dim::Fixed(1)
        } else {
            s.0[i - off]
        }
    };
    let mut dims = Vec::with_capacity(rank);
    for i in 0..rank {
        let (x, y) = (pad(a, i), pad(b, i));
        dims.push(match (x, y) {
            _ if x == y => x,
            (Dim::Fixed(1), _) => y,
            (_, Dim::Fixed(1)) => x,
            _ => return Err(format!("cannot broadcast {a} with {b}")),
        });
    }
    Ok(Shape(dims))
}

fn matmul(op: &Op, ins: &[Ty]) -> Result<(DType, Shape), String> {
    same_dtype(op, ins)?;
    let (a, b) = (ins[0].1, ins[1].1);
    if a.rank() < 2 || b.rank() != 2 {
        return Err(format!("matmul needs a[.., M, K] and b[N, K], found {a} and {b}"));
    }
    if a.last() != b.last() {
        return Err(format!("matmul contraction mismatch: {a} @ {b}^T"));
    }
    let mut dims = a.0.clone();
    *dims.last_mut().expect("rank >= 2") = b.0[0];
    Ok((ins[0].0, Shape(dims)))
}

fn slice_dim(d: Dim, start: Bound, end: Bound) -> Result<Dim, String> {
    let bad = || format!("slice {start}:{end} is empty or out of range for a dim of {d}");
    match (d, start, end) {
        (Dim::Fixed(n), s, e) => {
            let (s, e) = (s.resolve(n).ok_or_else(bad)?, e.resolve(n).ok_or_else(bad)?);
            if s < e {
                Ok(Dim::Fixed(e - s))
            } else {
                Err(bad())
            }
        }
        (Dim::Sym(_), Bound::FromEnd(s), Bound::FromEnd(e))
        | (Dim::Sym(_), Bound::FromStart(e), Bound::FromStart(s))
            if s > e =>
        {
            Ok(Dim::Fixed(s - e))
        }
        _ => Err(format!("slice {start}:{end} of symbolic dim {d} has no fixed size")),
    }
}

fn concat(ins: &[Ty], axis: usize) -> Result<(DType, Shape), String> {
    let first = ins.first().ok_or("concat of nothing")?;
    check_axis(axis, first.1.rank())?;
    let mut total = 0;
    for t in ins {
        if t.0 != first.0 {
            return Err(format!("concat mixes dtypes {} and {}", first.0, t.0));
        }
        let same_rest =
            t.1.rank() == first.1.rank() && (0..t.1.rank()).all(|i| i == axis || t.1 .0[i] == first.1 .0[i]);
        if !same_rest {
            return Err(format!("concat on axis {axis}: {} does not fit {}", t.1, first.1));
        }
        total += t.1 .0[axis].fixed().ok_or("concat along a symbolic axis")?;
    }
    let mut dims = first.1 .0.clone();
    dims[axis] = Dim::Fixed(total);
    Ok((first.0, Shape(dims)))
}

fn kv_append(op: &Op, ins: &[Ty]) -> Result<(DType, Shape), String> {
    same_dtype(op, ins)?;
    let (cache, new) = (ins[0].1, ins[1].1);
    let ok = cache.rank() == 3
        && new.rank() == 3
        && cache.0[0] == Dim::Sym(Sym::CachedTokens)
        && matches!(new.0[0], Dim::Sym(Sym::NewTokens) | Dim::Fixed(_))
        && cache.0[1..] == new.0[1..];
    if !ok {
        let m = format!("kv_append needs cache[P, KVH, D] and new[T or n, KVH, D], found {cache} and {new}");
        return Err(m);
    }
    Ok((ins[0].0, Shape(vec![Dim::Sym(Sym::TotalTokens), new.0[1], new.0[2]])))
}

fn attention(op: &Op, ins: &[Ty]) -> Result<(DType, Shape), String> {
    same_dtype(op, ins)?;
    let (q, k, v) = (ins[0].1, ins[1].1, ins[2].1);
    if q.rank() != 3 || k.rank() != 3 || k != v {
        return Err(format!("attention needs q[T, H, D], k and v [S, KVH, D], found {q}, {k}, {v}"));
    }
    let (h, kvh) = (q.0[1].fixed(), k.0[1].fixed());
    let grouped = matches!((h, kvh), (Some(h), Some(kvh)) if kvh > 0 && h % kvh == 0);
    if !grouped || q.0[2] != k.0[2] {
        return Err(format!("attention heads do not group: q {q}, k {k}"));
    }
    Ok((ins[0].0, q.clone()))
}
