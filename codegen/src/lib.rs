//! smelt's code generator. So far: the expression renderer that turns a fused body into C,
//! and the prelude of helpers every kernel carries (bf16/f16 storage rounding without CUDA
//! headers). Kernel emitters, the launch schedule and the NVRTC front come next.

pub mod expr;
pub mod prelude;

pub use expr::{render, Leaves, LocalNames};
pub use prelude::PRELUDE;
