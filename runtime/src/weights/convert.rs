//! Little-endian raw tensor bytes → f32 values.
//!
//! The real model has ~600M parameters, so conversion works over fixed-size chunks: half-floats
//! are gathered into a small stack buffer of bits and converted with `half`'s slice routines
//! (vectorised — F16C on x86 — where the hardware allows), with no per-element allocation. The
//! mmapped bytes need not be 2- or 4-byte aligned, which is why nothing is reinterpreted in place.

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};
use safetensors::Dtype;

/// Elements converted per chunk: small enough for the stack, large enough to amortise the loop.
const CHUNK: usize = 4096;

/// Converts `bytes` stored as `dtype` to f32. `None` when `dtype` is not BF16, F16 or F32.
/// A trailing partial element (impossible after header validation) is ignored.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    match dtype {
        Dtype::F32 => Some(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        Dtype::F16 => Some(halves(bytes, |bits, out| bits.reinterpret_cast::<f16>().convert_to_f32_slice(out))),
        Dtype::BF16 => Some(halves(bytes, |bits, out| bits.reinterpret_cast::<bf16>().convert_to_f32_slice(out))),
        _ => None,
    }
}

/// Chunked 16-bit conversion: `convert(bits, out)` fills `out` (same length as `bits`).
fn halves(bytes: &[u8], convert: impl Fn(&[u16], &mut [f32])) -> Vec<f32> {
    let mut out = vec![0f32; bytes.len() / 2];
    let mut bits = [0u16; CHUNK];
    for (src, dst) in bytes.chunks(2 * CHUNK).zip(out.chunks_mut(CHUNK)) {
        let n = dst.len();
        for (b, c) in bits[..n].iter_mut().zip(src.chunks_exact(2)) {
            *b = u16::from_le_bytes([c[0], c[1]]);
        }
        convert(&bits[..n], dst);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_cross_chunk_boundaries() {
        let n = CHUNK * 2 + 3;
        // Exactly representable in both bf16 and f16; varied so a misplaced chunk shows up.
        let vals: Vec<f32> = (0..n).map(|i| (i % 251) as f32 * 0.5 - 60.0).collect();
        let bytes: Vec<u8> = vals.iter().flat_map(|&v| bf16::from_f32(v).to_bits().to_le_bytes()).collect();
        assert!(to_f32(Dtype::BF16, &bytes) == Some(vals.clone()));
        let bytes: Vec<u8> = vals.iter().flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes()).collect();
        assert!(to_f32(Dtype::F16, &bytes) == Some(vals));
    }

    #[test]
    fn unaligned_input_and_unsupported_dtypes() {
        let mut bytes = vec![0u8];
        bytes.extend(1.5f32.to_le_bytes());
        bytes.extend((-2.25f32).to_le_bytes());
        assert_eq!(to_f32(Dtype::F32, &bytes[1..]), Some(vec![1.5, -2.25]));
        assert_eq!(to_f32(Dtype::F64, &bytes), None);
        assert_eq!(to_f32(Dtype::I32, &bytes), None);
    }
}
