//! Operand buffers for the kernels run on the host: reproducible tensors, and their storage
//! bytes each way. (Included by the host-emulation tests, which have `half`.)

#![allow(dead_code)]

use smelt_ir::{DType, Tensor};

/// Reproducible values in `[lo, hi)`, stored in `dtype`.
pub fn tensor(seed: &mut u64, dtype: DType, shape: &[usize], lo: f32, hi: f32) -> Tensor {
    let mut unit = || {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 40) as f32 / (1u64 << 24) as f32
    };
    Tensor::from_f32(dtype, shape.to_vec(), (0..shape.iter().product()).map(|_| lo + (hi - lo) * unit()).collect())
}

/// Storage bytes of a tensor, as a device buffer holds them.
pub fn bytes(t: &Tensor) -> Vec<u8> {
    if let Some(v) = t.i32s() {
        return v.iter().flat_map(|x| x.to_le_bytes()).collect();
    }
    let le = |x: f32| match t.dtype() {
        DType::BF16 => half::bf16::from_f32(x).to_le_bytes().to_vec(),
        DType::F16 => half::f16::from_f32(x).to_le_bytes().to_vec(),
        _ => x.to_le_bytes().to_vec(),
    };
    t.to_f32_vec().into_iter().flat_map(le).collect()
}

/// Values from storage bytes (i32 outputs as their values).
pub fn decode(dtype: DType, b: &[u8]) -> Vec<f32> {
    b.chunks(dtype.size_bytes())
        .map(|c| match (dtype, c) {
            (DType::BF16, &[a, b]) => half::bf16::from_le_bytes([a, b]).to_f32(),
            (DType::F16, &[a, b]) => half::f16::from_le_bytes([a, b]).to_f32(),
            (DType::I32, &[a, b, c, d]) => i32::from_le_bytes([a, b, c, d]) as f32,
            (_, &[a, b, c, d]) => f32::from_le_bytes([a, b, c, d]),
            _ => unreachable!(),
        })
        .collect()
}

/// The worst error of `got` against `want`, relative per element: a 16-bit value on its own
/// magnitude, or on 2^-10 of the largest when far below it (a sum that cancels); an f32 value
/// on the largest, as its differences are the f32 rounding of sums taken in another order.
pub fn worst_relative(got: &[f32], want: &[f32], dtype: DType) -> f32 {
    let largest = want.iter().fold(0f32, |m, w| m.max(w.abs()));
    let floor = if dtype == DType::F32 { largest } else { largest * 2f32.powi(-10) };
    got.iter()
        .zip(want)
        .map(|(g, w)| nan_is_worst((g - w).abs() / w.abs().max(floor).max(f32::MIN_POSITIVE)))
        .fold(0.0, f32::max)
}

/// An error that is NaN (a NaN output, or NaN against NaN) as the worst there is: `f32::max`
/// drops NaN, so folding errors with it would pass a NaN output.
fn nan_is_worst(e: f32) -> f32 {
    if e.is_nan() {
        f32::INFINITY
    } else {
        e
    }
}

/// ‖got − want‖ / ‖want‖ over the whole tensor, and the largest absolute difference.
pub fn whole_tensor_error(got: &[f32], want: &[f32]) -> (f64, f32) {
    let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let rel =
        norm(&mut got.iter().zip(want).map(|(g, w)| g - w)) / norm(&mut want.iter().copied()).max(f64::MIN_POSITIVE);
    let max_abs = got.iter().zip(want).map(|(g, w)| nan_is_worst((g - w).abs())).fold(0f32, f32::max);
    (rel, max_abs)
}
