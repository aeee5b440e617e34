//! Host tensors: the values the reference evaluator computes with.

use std::fmt;

use crate::dtype::DType;

/// Element storage. Float dtypes keep f32 values that are already rounded to the tensor's dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

/// A dense row-major host tensor.
#[derive(Clone, PartialEq)]
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

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn data(&self) -> &Data {
        &self.data
    }

    /// The float values; `None` for i32 tensors.
    pub fn f32s(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            Data::I32(_) => None,
        }
    }

    pub fn i32s(&self) -> Option<&[i32]> {
        match &self.data {
            Data::I32(v) => Some(v),
            Data::F32(_) => None,
        }
    }

    /// Every element as f32 (i32 converted).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I32(v) => v.iter().map(|&x| x as f32).collect(),
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

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let preview: Vec<f32> = self.to_f32_vec().into_iter().take(8).collect();
        write!(f, "Tensor({}{:?}, {:?}…)", self.dtype, self.shape, preview)
    }
}
