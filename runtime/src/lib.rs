//! smelt's runtime: Hugging Face weights from safetensors (memory-mapped, validated before
//! use) and the CPU backend that runs graphs with the reference evaluator.

// Unsafe code only where a module is allowed it, with the reason there.
#![deny(unsafe_code)]
// What a user supplies is never unwrapped: errors carry context instead.
#![deny(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cpu;
pub mod cuda;
pub mod files;
pub mod paged;
pub mod progress;
pub mod weights;

pub use cpu::{weight_specs, CpuState, HostWeights};
pub use paged::{PagedKv, PagedKvError};
pub use weights::{Checkpoint, LoadedWeights, WeightError, WeightSpec};
