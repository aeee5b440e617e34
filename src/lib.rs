//! smelt: a compute-graph compiler that runs Qwen3. [`Model`] is the library API (load a model
//! directory on the CPU or a GPU, generate, generate a batch, chat); this facade also re-exports the crates:
//! [`ir`] (the tensor IR and its reference evaluator), [`passes`], [`codegen`] (CUDA C kernels),
//! [`runtime`] (weights, the CPU and CUDA backends) and [`models`] (Qwen3, tokenizer, chat
//! template, sampling, generation).

#![forbid(unsafe_code)]
// What a user supplies is never unwrapped: errors carry context instead.
#![deny(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod api;

pub use api::{
    load_tokenizer, Chunk, CudaOptions, Device, Error, GenerateParams, Generation, Model, ModelOptions, Needs, Prompt,
    DEFAULT_MAX_KV_TOKENS,
};
pub use smelt_models::batch::{BatchEvent, BatchOptions, BatchStats, Completion, FinishReason, Request};
pub use smelt_models::{ChatMessage, SamplingParams};

pub use smelt_codegen as codegen;
pub use smelt_emulate as emulate;
pub use smelt_ir as ir;
pub use smelt_models as models;
pub use smelt_passes as passes;
pub use smelt_runtime as runtime;
