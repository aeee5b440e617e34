//! The fused RMSNorm and norm + RoPE against their formulas, written here independently of
//! `fused.rs` (which composes the primitive kernels): HF's Qwen3RMSNorm, `w * cast(x *
//! rsqrt(mean(x²) + eps))` in f32, and the NeoX rotation `x*cos + rotate_half(x)*sin` with
//! f32 angles, each product and sum rounded to the dtype as the primitive ops round it.
//!
//! Tolerances, relative per element (to the row's largest magnitude for RoPE's sum, whose
//! rounded terms can cancel). For bf16 and f16, two ulps of the dtype (2^-6 and 2^-9): the
//! normalized value can round one ulp the other way where the f32 intermediate sits on a
//! rounding boundary that the reference's f64 falls across, and the product with the weight
//! can round once more. For f32, 1e-6. Worst measured over 3,000 cases (252,284 values):
//! bf16 1.04e-2 RMSNorm, 5.1e-3 RoPE; f16 1.9e-3 and 4.9e-4; f32 3.5e-7 and 1.7e-7.

use half::{bf16, f16};
use proptest::prelude::*;

use super::*;
use crate::{shape, Builder, FusedOp};

/// Values in [-2, 2) from a seed.
fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// `v` rounded to `dtype`, as a primitive op stores it.
fn round(dtype: DType, v: f64) -> f64 {
    match dtype {
        DType::BF16 => bf16::from_f64(v).to_f64(),
        DType::F16 => f16::from_f64(v).to_f64(),
        _ => v as f32 as f64,
    }
}

fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 2f64.powi(-6),
        DType::F16 => 2f64.powi(-9),
        _ => 1e-6,
    }
}

/// HF's RMSNorm of each row of `x [rows, d]`: in f32, cast back, times the weight.
fn norm_formula(x: &[f64], w: &[f64], d: usize, eps: f32, dtype: DType) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(d) {
        let mean = row.iter().map(|v| v * v).sum::<f64>() / d as f64;
        let inv = 1.0 / (mean + eps as f64).sqrt();
        out.extend(row.iter().zip(w).map(|(v, wi)| round(dtype, wi * round(dtype, v * inv))));
    }
    out
}

/// The NeoX rotation of `x [t, h, d]` at `positions`, angles `position * inv_freq` in f32,
/// the cos and sin tables rounded to the dtype, then `x*cos + rotate_half(x)*sin`.
fn rope_formula(x: &[f64], positions: &[i32], h: usize, d: usize, theta: f32, dtype: DType) -> Vec<f64> {
    let half = d / 2;
    let mut out = vec![0.0; x.len()];
    for (ti, &p) in positions.iter().enumerate() {
        for hi in 0..h {
            let row = &x[(ti * h + hi) * d..][..d];
            for i in 0..d {
                let inv_freq = 1.0 / theta.powf((2 * (i % half)) as f32 / d as f32);
                let angle = (p as f32 * inv_freq) as f64;
                let (cos, sin) = (round(dtype, angle.cos()), round(dtype, angle.sin()));
                let rotated = if i < half { -row[i + half] } else { row[i - half] };
                let v = round(dtype, round(dtype, row[i] * cos) + round(dtype, rotated * sin));
                out[(ti * h + hi) * d + i] = v;
            }
        }
    }
    out
}

/// Each element within `tolerance(dtype)` of `want`, relative to `scale` (its own magnitude
/// for a product; for a sum, the largest magnitude in its row, as a sum of rounded terms can
/// cancel).
fn assert_matches(got: &Tensor, want: &[f64], scale: &[f64], dtype: DType, what: &str) {
    let got = got.to_f32_vec();
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        let err = (g as f64 - w).abs() / s.max(f64::MIN_POSITIVE);
        assert!(err <= tolerance(dtype), "{what}: element {i}: {g} vs {w} ({err:e} relative)");
    }
}

/// The largest magnitude of each row of `d` values, repeated for each of its elements.
fn row_scale(v: &[f64], d: usize) -> Vec<f64> {
    v.chunks(d).flat_map(|row| std::iter::repeat_n(row.iter().fold(0f64, |m, x| m.max(x.abs())), d)).collect()
}

const THETA: f32 = 10000.0;

/// `op` on `x [T, h, d]` (T = positions.len()), a weight `[d]`, and for the RoPE ops the
/// positions and `inv_freq`.
fn run_fused(op: Op, dtype: DType, x: &[f32], w: &[f32], positions: &[i32], h: usize, d: usize) -> Tensor {
    let t = positions.len();
    let mut b = Builder::new();
    let xs = b.input("x", dtype, shape![t, h, d]);
    let ws = b.input("w", dtype, shape![d]);
    let mut operands = vec![xs, ws];
    if !matches!(op, Op::Fused(FusedOp::RmsNorm { .. })) {
        operands.push(b.input("positions", DType::I32, shape![t]));
        let inv: Vec<f32> = (0..d / 2).map(|i| 1.0 / THETA.powf((2 * i) as f32 / d as f32)).collect();
        operands.push(b.constant("inv_freq", DType::F32, shape![d / 2], inv).unwrap());
    }
    let y = b.op("y", op, &operands).unwrap();
    b.output("y", y).unwrap();
    let inputs = HashMap::from([
        ("x".to_string(), Tensor::from_f32(dtype, vec![t, h, d], x.to_vec())),
        ("w".to_string(), Tensor::from_f32(dtype, vec![d], w.to_vec())),
        ("positions".to_string(), Tensor::from_i32(vec![t], positions.to_vec())),
    ]);
    eval(&b.finish().unwrap(), inputs, &HashMap::new()).unwrap().remove("y").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn rms_norm_and_norm_rope_match_their_formulas(
        t in 1usize..=4, h in 1usize..=3, half in 1usize..=16, seed: u64, far in 0i32..40000,
    ) {
        let d = 2 * half;
        let eps = 1e-6;
        let positions: Vec<i32> = (0..t as i32).map(|i| far + 3 * i).collect();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            // The inputs as the dtype holds them.
            let x = Tensor::from_f32(dtype, vec![t * h * d], noise(seed, t * h * d)).to_f32_vec();
            let w = Tensor::from_f32(dtype, vec![d], noise(seed ^ 0xfeed, d)).to_f32_vec();
            let (x64, w64): (Vec<f64>, Vec<f64>) =
                (x.iter().map(|&v| v as f64).collect(), w.iter().map(|&v| v as f64).collect());
            let normed = norm_formula(&x64, &w64, d, eps, dtype);
            let got = run_fused(Op::Fused(FusedOp::RmsNorm { eps }), dtype, &x, &w, &positions, h, d);
            let own: Vec<f64> = normed.iter().map(|v| v.abs()).collect();
            assert_matches(&got, &normed, &own, dtype, &format!("{dtype} rmsnorm"));
            // NormRope rotates the normed values the fused op itself computed (its own
            // rounding), so the rotation is judged alone.
            let got_normed: Vec<f64> = got.to_f32_vec().iter().map(|&v| v as f64).collect();
            let rotated = rope_formula(&got_normed, &positions, h, d, THETA, dtype);
            let got = run_fused(Op::Fused(FusedOp::NormRope { eps, append: false }), dtype, &x, &w, &positions, h, d);
            assert_matches(&got, &rotated, &row_scale(&got_normed, d), dtype, &format!("{dtype} norm_rope"));
        }
    }
}
