//! Qwen3 for smelt: the config, the model declared as IR, the tokenizer and chat template,
//! and the generation loop over a runtime backend.

#![forbid(unsafe_code)]
// What a user supplies is never unwrapped: errors carry context instead.
#![deny(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod batch;
pub mod blueprint;
pub mod chat;
pub mod checkpoint_fit;
pub mod config;
pub mod continuation;
pub mod cuda_engine;
pub mod cuda_group;
pub mod engine;
pub mod generation_config;
pub mod lm;
pub mod qwen3;
mod ranks;
mod report;
pub mod sample;
pub mod stop;
pub mod tokenizer;

pub use blueprint::{Blueprint, GraphKind};
pub use chat::{ChatError, ChatMessage, ChatTemplate};
pub use config::{ConfigError, Qwen3Config};
pub use continuation::{Completion, Continuation, FinishReason, Request, Step};
pub use cuda_engine::{BatchCheck, Qwen3Cuda};
pub use cuda_group::Qwen3CudaGroup;
pub use engine::{LoadOptions, ModelError, Qwen3Cpu};
pub use generation_config::GenerationConfig;
pub use lm::{generate, CausalLm};
pub use sample::{Sampler, SamplingParams};
pub use stop::{check_stops, StopMatcher, TextStream};
pub use tokenizer::{IncrementalDecoder, Tokenizer, TokenizerError};
