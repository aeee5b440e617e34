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
            float(op, ins[0])?;
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
        Op::Gather | Op::PartialGather { .. } => {
            let (table, ids) = (ins[0], ins[1]);
            if let (Op::PartialGather { start, total }, Some(rows)) =
                (op, table.1.dims().first().and_then(|d| d.fixed()))
            {
                if start + rows > *total {
                    return Err(format!("rows {start}..{} of a table of {total}", start + rows));
                }
            }
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
        Op::Fused(f) => f.infer(ins)?,
        Op::AllReduce { .. } => {
            float(op, ins[0])?;
            (ins[0].0, ins[0].1.clone())
        }
        Op::AllGather { axis, world } => {
            let mut dims = ins[0].1 .0.clone();
            check_axis(*axis, dims.len())?;
            dims[*axis] = match dims[*axis] {
                Dim::Fixed(n) => Dim::Fixed(n * *world as usize),
                d if *world == 1 => d,
                d => return Err(format!("all_gather along a symbolic axis ({d})")),
            };
            (ins[0].0, Shape(dims))
        }
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
    float(op, ins[0])?;
    matmul_type(ins[0], ins[1])
}

/// The type of `a[.., M, K] @ b[N, K]^T`.
pub(crate) fn matmul_type(a: Ty, b: Ty) -> Result<(DType, Shape), String> {
    if a.0 != b.0 || !a.0.is_float() {
        return Err(format!("matmul of {} and {}", a.0, b.0));
    }
    let dtype = a.0;
    let (a, b) = (a.1, b.1);
    if a.rank() < 2 || b.rank() != 2 {
        return Err(format!("matmul needs a[.., M, K] and b[N, K], found {a} and {b}"));
    }
    if a.last() != b.last() {
        return Err(format!("matmul contraction mismatch: {a} @ {b}^T"));
    }
    let mut dims = a.0.clone();
    *dims.last_mut().expect("rank >= 2") = b.0[0];
    Ok((dtype, Shape(dims)))
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
    float(op, ins[0])?;
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::op::{BinaryOp, UnaryOp};
    use crate::shape;
    use crate::{eval, Builder, Tensor};

    const T: Sym = Sym::NewTokens;
    const P: Sym = Sym::CachedTokens;

    fn ty(op: Op, ins: &[(DType, Shape)]) -> Result<Option<(DType, Shape)>, String> {
        let tys: Vec<Ty> = ins.iter().map(|(d, s)| (*d, s)).collect();
        infer(&op, &tys)
    }

    #[track_caller]
    fn ok(op: Op, ins: &[(DType, Shape)]) -> (DType, Shape) {
        ty(op, ins).unwrap().expect("not a leaf")
    }

    #[test]
    fn broadcast_rules() {
        assert_eq!(broadcast(&shape![T, 1], &shape![1, 4]), Ok(shape![T, 4]));
        assert_eq!(broadcast(&shape![3], &shape![T, 1]), Ok(shape![T, 3]));
        assert_eq!(broadcast(&shape![], &shape![2, 3]), Ok(shape![2, 3]));
        assert_eq!(broadcast(&shape![T, 1, 8], &shape![T, 4, 8]), Ok(shape![T, 4, 8]));
        assert!(broadcast(&shape![T, 4], &shape![P, 4]).is_err());
        assert!(broadcast(&shape![2, 3], &shape![3, 3]).is_err());
        assert!(broadcast(&shape![T], &shape![4]).is_err(), "T is not known to be 1 or 4");
    }

    #[test]
    fn shapes_of_each_op() {
        let f = |s: Shape| (DType::F32, s);
        assert_eq!(ty(Op::Weight { name: "w".into() }, &[]), Ok(None));
        assert_eq!(ok(Op::Unary(UnaryOp::Silu), &[(DType::BF16, shape![T, 8])]), (DType::BF16, shape![T, 8]));
        let reduce = Op::Reduce { op: ReduceOp::Sum, axis: 0 };
        assert_eq!(ok(reduce, &[f(shape![T, 8])]), f(shape![1, 8]), "sum over T is fine, keepdim");
        let mean = Op::Reduce { op: ReduceOp::Mean, axis: 1 };
        assert_eq!(ok(mean, &[f(shape![T, 8])]), f(shape![T, 1]));
        assert_eq!(ok(Op::MatMul, &[f(shape![2, T, 8]), f(shape![5, 8])]), f(shape![2, T, 5]));
        assert!(ty(Op::MatMul, &[f(shape![8]), f(shape![5, 8])]).is_err(), "a needs rank 2");
        assert!(ty(Op::MatMul, &[f(shape![T, 8]), f(shape![2, 5, 8])]).is_err(), "b is rank 2");
        let gather = ok(Op::Gather, &[f(shape![100, 8]), (DType::I32, shape![2, T])]);
        assert_eq!(gather, f(shape![2, T, 8]));
        assert!(ty(Op::Gather, &[f(shape![100]), (DType::I32, shape![T])]).unwrap_err().contains("rank 2"));
        let slice = |start, end| Op::Slice { axis: 0, start, end };
        assert_eq!(ok(slice(Bound::FromEnd(1), Bound::FromEnd(0)), &[f(shape![T, 8])]), f(shape![1, 8]));
        assert_eq!(ok(slice(Bound::FromStart(1), Bound::FromStart(3)), &[f(shape![T, 8])]), f(shape![2, 8]));
        assert_eq!(ok(slice(Bound::FromStart(1), Bound::FromEnd(1)), &[f(shape![4, 8])]), f(shape![2, 8]));
        assert!(ty(slice(Bound::FromEnd(0), Bound::FromEnd(1)), &[f(shape![T, 8])]).is_err());
        assert!(ty(slice(Bound::FromEnd(5), Bound::FromEnd(0)), &[f(shape![4, 8])]).is_err());
        let cat = ok(Op::Concat { axis: 1 }, &[f(shape![T, 2]), f(shape![T, 3]), f(shape![T, 1])]);
        assert_eq!(cat, f(shape![T, 6]));
        assert!(ty(Op::Concat { axis: 0 }, &[]).is_err());
        assert_eq!(ok(Op::Cast { to: DType::I32 }, &[f(shape![T])]), (DType::I32, shape![T]));
        let kv = ok(Op::KvAppend, &[f(shape![P, 2, 4]), f(shape![T, 2, 4])]);
        assert_eq!(kv, f(shape![Sym::TotalTokens, 2, 4]));
        assert!(ty(Op::KvAppend, &[f(shape![T, 2, 4]), f(shape![T, 2, 4])]).is_err(), "cache must be [P, ..]");
        assert!(ty(Op::KvAppend, &[f(shape![P, 2, 4]), f(shape![T, 1, 4])]).is_err());
        let attn = Op::Attention { scale: 0.125 };
        let s = shape![Sym::TotalTokens, 2, 4];
        assert_eq!(ok(attn.clone(), &[f(shape![T, 6, 4]), f(s.clone()), f(s.clone())]), f(shape![T, 6, 4]));
        assert!(ty(attn.clone(), &[f(shape![T, 6, 8]), f(s.clone()), f(s.clone())]).is_err(), "head dims differ");
        assert!(ty(attn, &[f(shape![T, 6, 4]), f(s), f(shape![P, 2, 4])]).is_err(), "k and v differ");
        assert_eq!(ok(Op::ArgMax { axis: 1 }, &[f(shape![T, 50])]), (DType::I32, shape![T]));
        assert!(ty(Op::ArgMax { axis: 0 }, &[(DType::I32, shape![T])]).is_err());
        assert!(ty(Op::Binary(BinaryOp::Add), &[f(shape![2])]).unwrap_err().contains("2 operands"));
    }

    fn values(dt: DType, n: usize, seed: u64) -> Tensor {
        let v: Vec<f32> = (0..n).map(|i| ((i as u64 * 2654435761 + seed) % 1009) as f32 / 37.0 - 13.0).collect();
        match dt {
            DType::I32 => Tensor::from_i32(vec![n], v.iter().map(|&x| (x * 37.0) as i32).collect()),
            _ => Tensor::from_f32(dt, vec![n], v),
        }
    }

    fn dims(s: &[usize]) -> Shape {
        Shape::new(s.iter().map(|&d| Dim::Fixed(d)))
    }

    /// A broadcast-compatible pair: each side keeps a suffix of `out`'s dims, some set to 1.
    fn compatible_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
        prop::collection::vec(1usize..=4, 0..=4).prop_flat_map(|out| {
            let r = out.len();
            let side = move |out: Vec<usize>| {
                (0..=r, prop::collection::vec(any::<bool>(), r)).prop_map(move |(keep, ones)| {
                    (r - keep..r).map(|i| if ones[i] { 1 } else { out[i] }).collect::<Vec<usize>>()
                })
            };
            (side(out.clone()), side(out))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn broadcast_eval_matches_naive((sa, sb) in compatible_pair(), op in 0usize..4, seed: u64) {
            let op = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Max][op];
            let mut b = Builder::new();
            let (xa, xb) = (b.input("a", DType::F32, dims(&sa)), b.input("b", DType::F32, dims(&sb)));
            let y = b.binary("y", op, xa, xb).unwrap();
            b.output("y", y).unwrap();
            let g = b.finish().unwrap();
            let ta = values(DType::F32, sa.iter().product(), seed).reshaped(sa.clone());
            let tb = values(DType::F32, sb.iter().product(), seed / 3 + 1).reshaped(sb.clone());
            let inputs = HashMap::from([("a".to_string(), ta.clone()), ("b".to_string(), tb.clone())]);
            let got = eval(&g, inputs, &HashMap::<String, Tensor>::new()).unwrap().remove("y").unwrap();
            // Reference: pad both shapes on the left with 1s, the out dim is the larger.
            let rank = sa.len().max(sb.len());
            let pad = |s: &[usize]| [vec![1; rank - s.len()], s.to_vec()].concat();
            let (pa, pb) = (pad(&sa), pad(&sb));
            let out: Vec<usize> = (0..rank).map(|i| pa[i].max(pb[i])).collect();
            prop_assert_eq!(got.shape(), &out[..]);
            let flat = |s: &[usize], idx: &[usize]| idx.iter().zip(s).fold(0, |acc, (&i, &n)| acc * n + if n == 1 { 0 } else { i });
            let (va, vb, got) = (ta.to_f32_vec(), tb.to_f32_vec(), got.to_f32_vec());
            let f: fn(f32, f32) -> f32 = match op {
                BinaryOp::Add => |x, y| x + y,
                BinaryOp::Sub => |x, y| x - y,
                BinaryOp::Mul => |x, y| x * y,
                _ => f32::max,
            };
            for (lin, g) in got.iter().enumerate() {
                let mut idx = vec![0; rank];
                let mut rest = lin;
                for d in (0..rank).rev() {
                    idx[d] = rest % out[d];
                    rest /= out[d];
                }
                let want = f(va[flat(&pa, &idx)], vb[flat(&pb, &idx)]);
                prop_assert_eq!(g.to_bits(), want.to_bits(), "at {:?}", idx);
            }
        }

        #[test]
        fn slice_halves_and_concat_reconstruct(
            shape in prop::collection::vec(1usize..=5, 1..=4),
            axis in 0usize..4,
            dt in 0usize..4,
            seed: u64,
        ) {
            let axis = axis % shape.len();
            let mut shape = shape;
            shape[axis] += 1; // at least 2, so both halves are non-empty
            let dt = DType::ALL[dt];
            let x = values(dt, shape.iter().product(), seed).reshaped(shape.clone());
            let mid = shape[axis] / 2;
            let mut b = Builder::new();
            let xi = b.input("x", dt, dims(&shape));
            let lo = b.slice("lo", xi, axis, Bound::FromStart(0), Bound::FromStart(mid)).unwrap();
            let hi = b.slice("hi", xi, axis, Bound::FromEnd(shape[axis] - mid), Bound::FromEnd(0)).unwrap();
            let y = b.concat("y", &[lo, hi], axis).unwrap();
            prop_assert_eq!(b.shape(y), &dims(&shape));
            b.output("y", y).unwrap();
            let g = b.finish().unwrap();
            let out = eval(&g, HashMap::from([("x".to_string(), x.clone())]), &HashMap::<String, Tensor>::new());
            prop_assert_eq!(out.unwrap().remove("y").unwrap(), x);
        }
    }
}
