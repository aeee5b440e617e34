//! Host tensors: the values the reference evaluator computes with.

use std::borrow::Cow;
use std::fmt;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::dtype::DType;

/// Element storage. Computed float values are f32, already rounded to the tensor's dtype.
/// Weights may stay in the 16 bits their checkpoint stores them in (a quarter or half of the
/// memory): `Bf16` for a tensor of dtype bf16 or f32, `F16` for f16 or f32; every such value
/// widens to f32 exactly, so the evaluator computes with the same numbers either way.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I32(Vec<i32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
}

impl Data {
    /// The values as f32: moved when stored as f32, else converted.
    pub fn into_floats(self) -> Vec<f32> {
        match self {
            Data::F32(v) => v,
            Data::I32(v) => v.into_iter().map(|x| x as f32).collect(),
            Data::Bf16(v) => v.to_f32_vec(),
            Data::F16(v) => v.to_f32_vec(),
        }
    }
}

/// A dense row-major host tensor. Two tensors are equal when their dtype, shape and values
/// are, however the values are stored.
#[derive(Clone)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    data: Data,
}

impl Tensor {
    /// A float tensor of `dtype`; values are rounded to `dtype`.
    ///
    /// Panics if `dtype` is not a float type or the length does not match the shape: callers
    /// build these from shapes they computed, never from user input.
    pub fn from_f32(dtype: DType, shape: Vec<usize>, mut values: Vec<f32>) -> Tensor {
        assert!(dtype.is_float(), "from_f32 with {dtype}");
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape {shape:?}");
        if dtype != DType::F32 {
            for v in &mut values {
                *v = dtype.round(*v);
            }
        }
        Tensor { dtype, shape, data: Data::F32(values) }
    }

    /// A float tensor from values already representable in `dtype` (no rounding pass), for
    /// hot paths that only move stored values around.
    pub fn from_stored(dtype: DType, shape: Vec<usize>, values: Vec<f32>) -> Tensor {
        assert!(dtype.is_float(), "from_stored with {dtype}");
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape {shape:?}");
        debug_assert!(values.iter().take(64).all(|&v| dtype.round(v).to_bits() == v.to_bits() || v.is_nan()));
        Tensor { dtype, shape, data: Data::F32(values) }
    }

    /// A float tensor of `dtype` (bf16 or f32) kept as the bf16 values given.
    ///
    /// Panics on another dtype or a length that does not match the shape.
    pub fn from_bf16(dtype: DType, shape: Vec<usize>, values: Vec<bf16>) -> Tensor {
        assert!(matches!(dtype, DType::BF16 | DType::F32), "bf16 storage for {dtype}");
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape {shape:?}");
        Tensor { dtype, shape, data: Data::Bf16(values) }
    }

    /// A float tensor of `dtype` (f16 or f32) kept as the f16 values given.
    ///
    /// Panics on another dtype or a length that does not match the shape.
    pub fn from_f16(dtype: DType, shape: Vec<usize>, values: Vec<f16>) -> Tensor {
        assert!(matches!(dtype, DType::F16 | DType::F32), "f16 storage for {dtype}");
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape {shape:?}");
        Tensor { dtype, shape, data: Data::F16(values) }
    }

    pub fn from_i32(shape: Vec<usize>, values: Vec<i32>) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape {shape:?}");
        Tensor { dtype: DType::I32, shape, data: Data::I32(values) }
    }

    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        match dtype {
            DType::I32 => Tensor::from_i32(shape, vec![0; n]),
            _ => Tensor::from_f32(dtype, shape, vec![0.0; n]),
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Elements `range` of axis `axis`, every other axis whole (a copy).
    ///
    /// Panics when the range is empty or past the axis: callers slice by shapes they checked.
    pub fn slice_along(&self, axis: usize, range: std::ops::Range<usize>) -> Tensor {
        use crate::op::Bound;
        crate::eval::movement::slice(self, axis, Bound::FromStart(range.start), Bound::FromStart(range.end))
            .unwrap_or_else(|e| panic!("slice_along: {e}"))
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes its storage holds: 2 per element kept in 16 bits, else 4.
    pub fn storage_bytes(&self) -> usize {
        let per = match self.data {
            Data::Bf16(_) | Data::F16(_) => 2,
            Data::F32(_) | Data::I32(_) => 4,
        };
        self.len() * per
    }

    pub fn data(&self) -> &Data {
        &self.data
    }

    /// The float values when stored as f32; `None` for i32 and 16-bit storage (see
    /// [`Tensor::floats`]).
    pub fn f32s(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }

    pub fn i32s(&self) -> Option<&[i32]> {
        match &self.data {
            Data::I32(v) => Some(v),
            _ => None,
        }
    }

    /// Every element as f32: borrowed when stored as f32, else widened (i32 converted).
    pub fn floats(&self) -> Cow<'_, [f32]> {
        match &self.data {
            Data::F32(v) => Cow::Borrowed(v),
            _ => Cow::Owned(self.to_f32_vec()),
        }
    }

    /// Every element as f32 (i32 converted, 16-bit floats widened).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I32(v) => v.iter().map(|&x| x as f32).collect(),
            Data::Bf16(v) => v.to_f32_vec(),
            Data::F16(v) => v.to_f32_vec(),
        }
    }

    /// Elements `start..start + out.len()` as f32 into `out`, for a reader that wants a few
    /// rows of a large tensor without widening all of it (matmul's weight tiles, gathered
    /// embedding rows). Panics past the end.
    ///
    /// Inlined into matmul's AVX2 build, where the bf16 shift becomes a few vector
    /// instructions per 8 values. (`half`'s bf16 slice conversion is a scalar loop with a
    /// branch to quiet NaNs: with it, a decode step over a bf16 checkpoint in f32 took 1.5x as
    /// long as over f32 weights.)
    #[inline(always)]
    pub fn floats_into(&self, start: usize, out: &mut [f32]) {
        let end = start + out.len();
        match &self.data {
            Data::F32(v) => out.copy_from_slice(&v[start..end]),
            Data::I32(v) => out.iter_mut().zip(&v[start..end]).for_each(|(o, &x)| *o = x as f32),
            Data::Bf16(v) => {
                for (o, x) in out.iter_mut().zip(&v[start..end]) {
                    *o = f32::from_bits(u32::from(x.to_bits()) << 16);
                }
            }
            Data::F16(v) => v[start..end].convert_to_f32_slice(out),
        }
    }

    pub fn into_data(self) -> Data {
        self.data
    }

    /// Same data, new shape of equal element count.
    pub fn reshaped(mut self, shape: Vec<usize>) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), self.len(), "reshape to {shape:?}");
        self.shape = shape;
        self
    }
}

impl PartialEq for Tensor {
    fn eq(&self, other: &Tensor) -> bool {
        let meta = self.dtype == other.dtype && self.shape == other.shape;
        meta && match (&self.data, &other.data) {
            (Data::I32(a), Data::I32(b)) => a == b,
            (Data::I32(_), _) | (_, Data::I32(_)) => false,
            (Data::F32(a), Data::F32(b)) => a == b,
            _ => self.floats() == other.floats(),
        }
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut preview = vec![0.0; self.len().min(8)];
        self.floats_into(0, &mut preview);
        write!(f, "Tensor({}{:?}, {:?}…)", self.dtype, self.shape, preview)
    }
}
