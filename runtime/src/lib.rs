//! smelt's runtime: Hugging Face weights from safetensors (memory-mapped, validated before
//! use) and the CPU backend that runs graphs with the reference evaluator.

pub mod cpu;
pub mod cuda;
pub mod files;
pub mod paged;
pub mod weights;

pub use cpu::{weight_specs, CpuState, HostWeights};
pub use paged::{PagedKv, PagedKvError};
pub use weights::{Checkpoint, LoadedWeights, WeightError, WeightSpec};
