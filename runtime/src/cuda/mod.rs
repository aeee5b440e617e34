//! The CUDA backend: runs a fused decode graph's generated kernels on an NVIDIA GPU. Builds
//! and links on machines without CUDA (the driver and NVRTC are loaded at run time); opening a
//! device there is a clear error.

mod batch;
// FFI: the CUDA driver API (launches, device memory).
#[allow(unsafe_code)]
mod ceiling;
mod check;
#[allow(unsafe_code)]
mod decoder;
#[allow(unsafe_code)]
mod device;
mod device_weights;
mod emulated;
mod group;
// FFI: the group's collectives (NCCL) between its launches.
#[allow(unsafe_code)]
mod group_decoder;
mod layout;
// FFI: NCCL's collectives on device buffers.
#[allow(unsafe_code)]
mod nccl;
// FFI: launches of the exchange kernels.
#[allow(unsafe_code)]
mod ranks;

pub use batch::BatchRow;
pub use ceiling::{gemm_ceiling_kernel, gemm_rate};
pub use check::{check_prefill, check_step, CheckedRun, NodeCheck};
pub use decoder::{CudaDecoder, DecoderGraphs, DecoderOptions, JitReport, StepOutput};
pub use device::{probe, DeviceBuffer, DeviceInfo, Gpu};
pub use device_weights::{DeviceWeights, WeightBytes};
pub use emulated::{BatchRow as EmulatedRow, EmulatedRanks, EmulationOptions};
pub use group_decoder::GroupDecoder;
pub use nccl::NcclGroup;
pub use ranks::{GpuRanks, GroupOptions};

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver (libcuda.so) was found: this machine has no NVIDIA GPU driver")]
    NoDriver,
    #[error("CUDA device {ordinal} does not exist ({count} found)")]
    NoDevice { ordinal: usize, count: usize },
    #[error("{0}")]
    Unsupported(String),
    #[error("CUDA error while {what}: {message}")]
    Driver { what: String, message: String },
    #[error("CUDA out of memory allocating {what} ({bytes} bytes; {free} bytes free): {message}")]
    OutOfMemory { what: String, bytes: usize, free: usize, message: String },
    #[error("code generation failed: {0}")]
    Codegen(String),
    #[error("{0}")]
    Nvrtc(String),
    /// A checkpoint tensor refused while it was streamed to the device.
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightError),
    /// The CPU emulator's report (a checker's finding, or a kernel that crashed).
    #[error("emulation: {0}")]
    Emulation(String),
    #[error("device layout: {0}")]
    Layout(String),
    #[error("the KV cache is full: it holds {capacity} tokens (raise --kv-tokens)")]
    KvFull { capacity: usize },
    /// The greedy kernel found a NaN or an infinity in the logits (it returns -1 then).
    #[error("the logits at position {position} are NaN or infinite: an activation overflowed or a weight is damaged")]
    NonFiniteLogits { position: usize },
}
