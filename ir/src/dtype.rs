//! Element types of IR values.

use std::fmt;

use half::{bf16, f16};

/// The element type of a value. Floating types are computed in f32 by the reference evaluator
/// and rounded to their storage type after every op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
}

impl DType {
    pub const ALL: [DType; 4] = [DType::F32, DType::F16, DType::BF16, DType::I32];

    /// Bytes per element in storage.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    pub fn is_float(self) -> bool {
        !matches!(self, DType::I32)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
        }
    }

    /// Parses the names this crate prints (`f32`, `bf16`, ...) and the spellings found in
    /// Hugging Face configs (`float32`, `bfloat16`, `float16`).
    pub fn parse(s: &str) -> Option<DType> {
        match s {
            "f32" | "float32" | "float" => Some(DType::F32),
            "f16" | "float16" | "half" => Some(DType::F16),
            "bf16" | "bfloat16" => Some(DType::BF16),
            "i32" | "int32" => Some(DType::I32),
            _ => None,
        }
    }

    /// Rounds an f32 to the nearest value representable in this type (round-to-nearest-even),
    /// returned as f32. This is what "storing" a value in this dtype means for the evaluator.
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            DType::F32 => x,
            DType::F16 => f16::from_f32(x).to_f32(),
            DType::BF16 => bf16::from_f32(x).to_f32(),
            // As a cast to int32 does in PyTorch: toward zero.
            DType::I32 => x.trunc(),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_matches_half() {
        let x = 1.0f32 + 1.0 / 512.0; // between two bf16 values
        assert_eq!(DType::BF16.round(x), 1.0);
        assert_eq!(DType::F16.round(x), x);
        assert_eq!(DType::F32.round(x), x);
    }

    #[test]
    fn parse_round_trips_names() {
        for d in DType::ALL {
            assert_eq!(DType::parse(d.name()), Some(d));
        }
        assert_eq!(DType::parse("bfloat16"), Some(DType::BF16));
        assert_eq!(DType::parse("float64"), None);
    }
}
