//! smelt's code generator. So far: the expression renderer that turns a fused body into C,
//! and the prelude of helpers every kernel carries (bf16/f16 storage rounding without CUDA
//! headers). Kernel emitters, the launch schedule and the NVRTC front come next.

// Unsafe code only where a module is allowed it, with the reason there.
#![deny(unsafe_code)]
// What a user supplies is never unwrapped: errors carry context instead.
#![deny(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cache;
pub mod expr;
pub mod kernels;
// FFI: NVRTC's C API, for its version and whether the library is present.
#[allow(unsafe_code)]
pub mod nvrtc;
pub mod prelude;
pub mod program;
pub mod ptxas;
pub mod skip;
pub mod template;

pub use cache::ModuleCache;
pub use expr::{render, Leaves, LocalNames};
pub use kernels::{kernel_name, Kernel};
pub use nvrtc::{Arch, Nvrtc, NvrtcError};
pub use prelude::PRELUDE;
pub use program::{
    emit, emit_with, resolve_view, CodegenError, Cost, EmitOptions, Exchange, FewRows, Params, Program, Scheduled,
    Served, Variants, GEMV_ROWS,
};
pub use template::{Template, TemplateError};
