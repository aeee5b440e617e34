//! The Qwen3 chains the fusion passes look for, written as `models::qwen3` declares them
//! (HF's Qwen3RMSNorm; q/k norm + RoPE with its cos/sin tables), each with near misses: a
//! chain one step away from the pattern, which a matcher must leave alone. A near miss
//! computes something else, so fusing it is caught both by the matcher's count and by eval.

use smelt_ir::{Bound, Builder, DType, NodeId, ReduceOp, Shape, UnaryOp};

/// How an RMSNorm chain departs from HF's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Norm {
    Exact,
    /// The mean is taken over the first axis, not the last.
    WrongAxis,
    /// `square` reads another tensor than the one normalized.
    OtherSquared,
    /// The scale is a constant, not a weight.
    ConstantScale,
    /// A sum where HF has a mean.
    SumNotMean,
    /// The epsilon varies along the row (a vector constant, not a scalar).
    VectorEps,
}

pub(crate) const NORM_MISSES: [Norm; 5] =
    [Norm::WrongAxis, Norm::OtherSquared, Norm::ConstantScale, Norm::SumNotMean, Norm::VectorEps];

/// A fixed axis of `x` before its last, which [`Norm::WrongAxis`] reduces over.
pub(crate) fn wrong_axis(b: &Builder, x: NodeId) -> Option<usize> {
    let dims = b.shape(x).dims();
    (0..dims.len().saturating_sub(1)).find(|&i| dims[i].fixed().is_some())
}

/// `w * cast(x32 * rsqrt(mean(x32²) + eps))` with `x32 = cast(x, f32)`, over `x`'s last axis
/// (fixed); `other` is what [`Norm::OtherSquared`] squares (same shape as `x`).
pub(crate) fn rms_norm(b: &mut Builder, name: &str, x: NodeId, other: NodeId, how: Norm) -> NodeId {
    let dt = b.dtype(x);
    let last = b.shape(x).rank() - 1;
    let width = b.shape(x).last().expect("rank >= 1");
    let scale = match how {
        Norm::ConstantScale => {
            let n = width.fixed().expect("fixed last dim");
            b.constant(&format!("{name}.not_a_weight"), dt, Shape::new([width]), vec![1.5; n]).unwrap()
        }
        _ => b.weight(&format!("{name}.weight"), dt, Shape::new([width])).unwrap(),
    };
    let x32 = b.cast(&format!("{name}.to_f32"), x, DType::F32).unwrap();
    let squared = match how {
        Norm::OtherSquared => b.cast(&format!("{name}.other_f32"), other, DType::F32).unwrap(),
        _ => x32,
    };
    let sq = b.unary(&format!("{name}.square"), UnaryOp::Square, squared).unwrap();
    // The mean keeps its axis (as size 1), so one over any fixed axis still broadcasts.
    let (op, axis) = match how {
        Norm::WrongAxis => (ReduceOp::Mean, wrong_axis(b, x).expect("a fixed axis before the last")),
        Norm::SumNotMean => (ReduceOp::Sum, last),
        _ => (ReduceOp::Mean, last),
    };
    let var = b.reduce(&format!("{name}.mean"), op, sq, axis).unwrap();
    let eps = match how {
        Norm::VectorEps => {
            let n = width.fixed().expect("fixed last dim");
            let values = (0..n).map(|i| 1e-6 + 0.5 * i as f32).collect();
            b.constant(&format!("{name}.eps"), DType::F32, Shape::new([width]), values).unwrap()
        }
        _ => b.scalar(&format!("{name}.eps"), DType::F32, 1e-6).unwrap(),
    };
    let var = b.add(&format!("{name}.add_eps"), var, eps).unwrap();
    let inv = b.unary(&format!("{name}.rsqrt"), UnaryOp::Rsqrt, var).unwrap();
    let y = b.mul(&format!("{name}.normalize"), x32, inv).unwrap();
    let y = b.cast(&format!("{name}.to_input_dtype"), y, dt).unwrap();
    b.mul(&format!("{name}.scale"), scale, y).unwrap()
}

/// How a q/k norm + RoPE chain departs from Qwen3's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rope {
    Exact,
    /// `rotate_half` as `cat(x1, -x2)`: the halves swapped.
    HalvesSwapped,
    /// The cos table computed with `sin`.
    SinForCos,
    /// The second half `x2` is also read outside the chain (a graph output).
    SharedHalf,
    /// The sin table from other positions than the cos table.
    OtherPositions,
    /// The cos table's second half from other positions than its first: `cat(freqs, freqs')`.
    UnequalTableHalves,
    /// RoPE of `x` itself, not of `rms_norm(x)`.
    NoNorm,
    /// The tables from f32 positions, an input of their own (not the i32 positions).
    FloatPositions,
    /// `inv_freq` a weight, not a constant.
    WeightInvFreq,
    /// The tables' angles as `freqs + freqs` (`inv_freq` as wide as the head), not
    /// `cat(freqs, freqs)`.
    DoubledFreqs,
    /// The first half sliced one element late: `x[..., 1..D/2+1]`.
    ShiftedHalf,
    /// `rotate_half` as `cat(exp(x2), x1)`: another unary op in place of the negation.
    ExpNotNeg,
    /// `rotate_half` as `-x2 + x1` (broadcast against the tables): only well-typed for D = 2,
    /// see [`Rope::head_dim`].
    SumNotConcat,
}

impl Rope {
    /// The head dim a chain of this kind is built with: `d`, or 2 where only 2 type-checks.
    pub(crate) fn head_dim(self, d: usize) -> usize {
        if self == Rope::SumNotConcat {
            2
        } else {
            d
        }
    }
}

pub(crate) const ROPE_MISSES: [Rope; 12] = [
    Rope::HalvesSwapped,
    Rope::SinForCos,
    Rope::SharedHalf,
    Rope::OtherPositions,
    Rope::UnequalTableHalves,
    Rope::NoNorm,
    Rope::FloatPositions,
    Rope::WeightInvFreq,
    Rope::DoubledFreqs,
    Rope::ShiftedHalf,
    Rope::ExpNotNeg,
    Rope::SumNotConcat,
];

/// The cos or sin table `[T, 1, D]` in `dt`: `f(cat(freqs, freqs))` with `freqs =
/// reshape(cast(positions, f32), [T, 1]) * inv_freq`, as `models::qwen3` computes it (the
/// second half's freqs from `positions[1]`; for [`Rope::DoubledFreqs`], `f(freqs + freqs)`).
fn table(
    b: &mut Builder,
    name: &str,
    positions: [NodeId; 2],
    inv_freq: NodeId,
    f: UnaryOp,
    dt: DType,
    how: Rope,
) -> NodeId {
    let t = b.shape(positions[0]).dims()[0];
    let width = b.shape(inv_freq).dims()[0].fixed().expect("fixed");
    let d = if how == Rope::DoubledFreqs { width } else { 2 * width };
    let freqs_of = |b: &mut Builder, part: &str, positions: NodeId| {
        let pos = b.cast(&format!("{name}.positions_f32{part}"), positions, DType::F32).unwrap();
        let pos = b.reshape(&format!("{name}.positions_col{part}"), pos, Shape::new([t, 1.into()])).unwrap();
        b.mul(&format!("{name}.freqs{part}"), pos, inv_freq).unwrap()
    };
    let freqs = freqs_of(b, "", positions[0]);
    let second = if positions[1] == positions[0] { freqs } else { freqs_of(b, ".second", positions[1]) };
    let emb = match how {
        Rope::DoubledFreqs => b.add(&format!("{name}.emb"), freqs, second).unwrap(),
        _ => b.concat(&format!("{name}.emb"), &[freqs, second], 1).unwrap(),
    };
    let x = b.unary(&format!("{name}.trig"), f, emb).unwrap();
    let x = b.cast(&format!("{name}.cast"), x, dt).unwrap();
    b.reshape(&format!("{name}.heads"), x, Shape::new([t, 1.into(), d.into()])).unwrap()
}

/// Qwen3's q/k norm + RoPE over `x [T, H, D]` (D even and fixed): `x*cos + rotate_half(x)*sin`
/// of `rms_norm(x)`, the tables from `positions` (i32 `[T]`, and `other_positions` for
/// [`Rope::OtherPositions`]) and a constant `inv_freq`. Returns the root, and for
/// [`Rope::SharedHalf`] the half that must also become a graph output.
pub(crate) fn norm_rope(
    b: &mut Builder,
    name: &str,
    x: NodeId,
    positions: NodeId,
    other_positions: NodeId,
    how: Rope,
) -> (NodeId, Option<NodeId>) {
    let dt = b.dtype(x);
    let d = b.shape(x).last().and_then(|d| d.fixed()).expect("fixed head dim");
    assert_eq!(d, how.head_dim(d), "{how:?} needs a head dim of {}", how.head_dim(d));
    let half = d / 2;
    let mut inv: Vec<f32> = (0..half).map(|i| 1.0 / 10000f32.powf((2 * i) as f32 / d as f32)).collect();
    if how == Rope::DoubledFreqs {
        inv = inv.repeat(2);
    }
    let inv_shape = Shape::new([inv.len().into()]);
    let inv_freq = match how {
        Rope::WeightInvFreq => b.weight(&format!("{name}.inv_freq"), DType::F32, inv_shape).unwrap(),
        _ => b.constant(&format!("{name}.inv_freq"), DType::F32, inv_shape, inv).unwrap(),
    };
    let positions = match how {
        Rope::FloatPositions => b.input(&format!("{name}.positions_f32"), DType::F32, b.shape(positions).clone()),
        _ => positions,
    };
    let cos_f = if how == Rope::SinForCos { UnaryOp::Sin } else { UnaryOp::Cos };
    let cos_second = if how == Rope::UnequalTableHalves { other_positions } else { positions };
    let cos = table(b, &format!("{name}.cos"), [positions, cos_second], inv_freq, cos_f, dt, how);
    let sin_positions = if how == Rope::OtherPositions { other_positions } else { positions };
    let sin = table(b, &format!("{name}.sin"), [sin_positions; 2], inv_freq, UnaryOp::Sin, dt, how);
    let normed = if how == Rope::NoNorm { x } else { rms_norm(b, &format!("{name}.norm"), x, x, Norm::Exact) };
    let first = if how == Rope::ShiftedHalf { 1 } else { 0 };
    let x1 =
        b.slice(&format!("{name}.x1"), normed, 2, Bound::FromStart(first), Bound::FromStart(first + half)).unwrap();
    let x2 = b.slice(&format!("{name}.x2"), normed, 2, Bound::FromStart(half), Bound::FromStart(d)).unwrap();
    let sign = if how == Rope::ExpNotNeg { UnaryOp::Exp } else { UnaryOp::Neg };
    let neg = b.unary(&format!("{name}.neg_x2"), sign, x2).unwrap();
    let rotated = match how {
        Rope::HalvesSwapped => b.concat(&format!("{name}.rotate_half"), &[x1, neg], 2).unwrap(),
        Rope::SumNotConcat => b.add(&format!("{name}.rotate_half"), neg, x1).unwrap(),
        _ => b.concat(&format!("{name}.rotate_half"), &[neg, x1], 2).unwrap(),
    };
    let a = b.mul(&format!("{name}.x_cos"), normed, cos).unwrap();
    let c = b.mul(&format!("{name}.rot_sin"), rotated, sin).unwrap();
    let root = b.add(&format!("{name}.rope"), a, c).unwrap();
    (root, (how == Rope::SharedHalf).then_some(x2))
}
