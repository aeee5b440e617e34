//! Little-endian raw tensor bytes → the values a loaded weight keeps.
//!
//! The real model has ~600M parameters, so conversion works over fixed-size chunks: half-floats
//! are gathered into a small stack buffer of bits and converted with `half`'s slice routines
//! (vectorised — F16C on x86 — where the hardware allows), with no per-element allocation. The
//! bytes need not be 2- or 4-byte aligned, which is why nothing is reinterpreted in place.

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};
use safetensors::Dtype;
use smelt_ir::{DType, Tensor};

/// The values of a weight being loaded, in the narrowest storage that holds exactly what the
/// execution dtype computes with: a 16-bit execution dtype keeps its own 16 bits; f32 keeps
/// the checkpoint's own (bf16 or f16 widen to f32 exactly, so storing them wider only costs
/// memory).
pub enum Kept {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
}

impl Kept {
    /// Empty storage for `len` values stored as `stored`, to be computed with in `target` (a
    /// float dtype); `None` when `stored` is not BF16, F16 or F32.
    pub fn new(stored: Dtype, target: DType, len: usize) -> Option<Kept> {
        Some(match (target, stored) {
            (DType::BF16, _) | (DType::F32, Dtype::BF16) => Kept::Bf16(Vec::with_capacity(len)),
            (DType::F16, _) | (DType::F32, Dtype::F16) => Kept::F16(Vec::with_capacity(len)),
            (DType::F32, Dtype::F32) => Kept::F32(Vec::with_capacity(len)),
            _ => return None,
        })
    }

    /// Appends the values of `bytes` (whole elements stored as `stored`) and says whether
    /// every stored value was finite. Same-width values are copied as bits; others go
    /// through f32 and round to nearest even, as `DType::round` does.
    pub fn append(&mut self, stored: Dtype, bytes: &[u8]) -> bool {
        match (self, stored) {
            (Kept::Bf16(out), Dtype::BF16) => {
                bits(bytes, 0x7f80, |b| out.extend(b.iter().map(|&b| bf16::from_bits(b))))
            }
            (Kept::F16(out), Dtype::F16) => bits(bytes, 0x7c00, |b| out.extend(b.iter().map(|&b| f16::from_bits(b)))),
            (kept, _) => {
                let (values, finite) = to_f32(stored, bytes).unwrap_or_default();
                match kept {
                    Kept::F32(out) => out.extend_from_slice(&values),
                    Kept::Bf16(out) => out.extend(values.iter().map(|&v| bf16::from_f32(v))),
                    Kept::F16(out) => out.extend(values.iter().map(|&v| f16::from_f32(v))),
                }
                finite
            }
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Kept::F32(v) => v.len(),
            Kept::Bf16(v) => v.len(),
            Kept::F16(v) => v.len(),
        }
    }

    /// Forgets the values, keeping the allocation (a streamed tensor reuses it per chunk).
    pub fn clear(&mut self) {
        match self {
            Kept::F32(v) => v.clear(),
            Kept::Bf16(v) => v.clear(),
            Kept::F16(v) => v.clear(),
        }
    }

    /// How many values from index `from` on are NaN or infinite, and the index of the first
    /// (the length when there is none).
    pub fn non_finite_from(&self, from: usize) -> (usize, usize) {
        fn count<T: Copy>(v: &[T], from: usize, finite: impl Fn(T) -> bool) -> (usize, usize) {
            let tail = v.get(from..).unwrap_or_default();
            let first = tail.iter().position(|&x| !finite(x)).unwrap_or(tail.len());
            (tail[first..].iter().filter(|&&x| !finite(x)).count(), from + first)
        }
        match self {
            Kept::F32(v) => count(v, from, f32::is_finite),
            Kept::Bf16(v) => count(v, from, bf16::is_finite),
            Kept::F16(v) => count(v, from, f16::is_finite),
        }
    }

    /// Appends the values as little-endian `dtype` words, what a device buffer of that dtype
    /// holds: the same values [`Kept::into_tensor`] gives, so 16-bit values widen to f32
    /// exactly and f32 narrows to nearest even (as `half` and `DType::round` do).
    pub fn write_storage(&self, dtype: DType, out: &mut Vec<u8>) {
        fn each<T: Copy, const N: usize>(v: &[T], out: &mut Vec<u8>, word: impl Fn(T) -> [u8; N]) {
            out.reserve(v.len() * N);
            for &x in v {
                out.extend_from_slice(&word(x));
            }
        }
        match (self, dtype) {
            (Kept::Bf16(v), DType::BF16) => each(v, out, |x| x.to_bits().to_le_bytes()),
            (Kept::F16(v), DType::F16) => each(v, out, |x| x.to_bits().to_le_bytes()),
            (Kept::F32(v), DType::F32) => each(v, out, f32::to_le_bytes),
            (Kept::Bf16(v), DType::F32) => each(v, out, |x| x.to_f32().to_le_bytes()),
            (Kept::F16(v), DType::F32) => each(v, out, |x| x.to_f32().to_le_bytes()),
            // Not made by `Kept::new` (a 16-bit target keeps its own 16 bits), but defined.
            (kept, _) => {
                let values = kept.to_f32();
                match dtype {
                    DType::BF16 => each(&values, out, |x| bf16::from_f32(x).to_bits().to_le_bytes()),
                    DType::F16 => each(&values, out, |x| f16::from_f32(x).to_bits().to_le_bytes()),
                    DType::F32 | DType::I32 => each(&values, out, f32::to_le_bytes),
                }
            }
        }
    }

    fn to_f32(&self) -> Vec<f32> {
        match self {
            Kept::F32(v) => v.clone(),
            Kept::Bf16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Kept::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }

    /// The tensor of `dtype` (the target given to [`Kept::new`]).
    pub fn into_tensor(self, dtype: DType, shape: Vec<usize>) -> Tensor {
        match self {
            Kept::F32(v) => Tensor::from_stored(dtype, shape, v),
            Kept::Bf16(v) => Tensor::from_bf16(dtype, shape, v),
            Kept::F16(v) => Tensor::from_f16(dtype, shape, v),
        }
    }
}

/// Little-endian 16-bit words of `bytes`, a chunk at a time, to `take`; says whether no word
/// holds all of `exponent` (NaN or inf).
fn bits(bytes: &[u8], exponent: u16, mut take: impl FnMut(&[u16])) -> bool {
    let mut chunk = [0u16; CHUNK];
    let mut worst = 0u16;
    for src in bytes.chunks(2 * CHUNK) {
        let n = src.len() / 2;
        for (b, c) in chunk[..n].iter_mut().zip(src.chunks_exact(2)) {
            *b = u16::from_le_bytes([c[0], c[1]]);
        }
        worst = worst.max(chunk[..n].iter().map(|b| b & exponent).max().unwrap_or(0));
        take(&chunk[..n]);
    }
    worst != exponent
}

/// Elements converted per chunk: small enough for the stack, large enough to amortise the loop.
const CHUNK: usize = 4096;

/// Converts `bytes` stored as `dtype` to f32, and says whether every value is finite: checked
/// on the stored bits of each chunk while it is in cache (an all-ones exponent is NaN or inf),
/// as a max-reduction the compiler vectorizes. On the full-size Qwen3-0.6B that costs about 50
/// ms; a flag set inside the conversion loop cost 450 ms (it stops vectorization). `None` when
/// `dtype` is not BF16, F16 or F32. A trailing partial element (impossible after header
/// validation) is ignored.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<(Vec<f32>, bool)> {
    match dtype {
        Dtype::F32 => {
            const EXPONENT: u32 = 0x7f80_0000;
            let mut out = vec![0f32; bytes.len() / 4];
            let mut worst = 0u32;
            for (src, dst) in bytes.chunks(4 * CHUNK).zip(out.chunks_mut(CHUNK)) {
                for (v, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                    *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
                worst = worst.max(dst.iter().map(|v| v.to_bits() & EXPONENT).max().unwrap_or(0));
            }
            Some((out, worst != EXPONENT))
        }
        Dtype::F16 => Some(halves(bytes, 0x7c00, |bits, out| bits.reinterpret_cast::<f16>().convert_to_f32_slice(out))),
        Dtype::BF16 => {
            Some(halves(bytes, 0x7f80, |bits, out| bits.reinterpret_cast::<bf16>().convert_to_f32_slice(out)))
        }
        _ => None,
    }
}

/// Chunked 16-bit conversion: `convert(bits, out)` fills `out` (same length as `bits`); a
/// value whose bits hold all of `exponent` is NaN or inf.
fn halves(bytes: &[u8], exponent: u16, convert: impl Fn(&[u16], &mut [f32])) -> (Vec<f32>, bool) {
    let mut out = Vec::with_capacity(bytes.len() / 2);
    let mut chunk = [0f32; CHUNK];
    let finite = bits(bytes, exponent, |b| {
        convert(b, &mut chunk[..b.len()]);
        out.extend_from_slice(&chunk[..b.len()]);
    });
    (out, finite)
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
        assert!(to_f32(Dtype::BF16, &bytes) == Some((vals.clone(), true)));
        let bytes: Vec<u8> = vals.iter().flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes()).collect();
        assert!(to_f32(Dtype::F16, &bytes) == Some((vals, true)));
    }

    #[test]
    fn non_finite_values_are_flagged_in_every_dtype() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let vals = [1.0, bad, -2.0];
            let f32_bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
            let bf16_bytes: Vec<u8> = vals.iter().flat_map(|&v| bf16::from_f32(v).to_bits().to_le_bytes()).collect();
            let f16_bytes: Vec<u8> = vals.iter().flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes()).collect();
            for (dtype, bytes) in [(Dtype::F32, f32_bytes), (Dtype::BF16, bf16_bytes), (Dtype::F16, f16_bytes)] {
                assert_eq!(to_f32(dtype, &bytes).map(|(_, finite)| finite), Some(false), "{dtype:?} {bad}");
            }
        }
        // The largest finite values are not flagged.
        let max: Vec<u8> = [f32::MAX, f32::MIN].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(to_f32(Dtype::F32, &max).map(|(_, finite)| finite), Some(true));
        let max16: Vec<u8> = [f16::MAX, f16::MIN].iter().flat_map(|v| v.to_bits().to_le_bytes()).collect();
        assert_eq!(to_f32(Dtype::F16, &max16).map(|(_, finite)| finite), Some(true));
    }

    #[test]
    fn unaligned_input_and_unsupported_dtypes() {
        let mut bytes = vec![0u8];
        bytes.extend(1.5f32.to_le_bytes());
        bytes.extend((-2.25f32).to_le_bytes());
        assert_eq!(to_f32(Dtype::F32, &bytes[1..]), Some((vec![1.5, -2.25], true)));
        assert_eq!(to_f32(Dtype::F64, &bytes), None);
        assert_eq!(to_f32(Dtype::I32, &bytes), None);
    }
}
