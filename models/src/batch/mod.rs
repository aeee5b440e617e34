//! Batched generation: many requests over one paged KV cache, with continuous batching,
//! preemption and prefix caching.

pub mod blocks;
mod cpu;
pub mod engine;
pub mod logprobs;
pub mod scheduler;
pub mod session;

pub use crate::continuation::{Completion, FinishReason, Request};
pub use blocks::{BlockId, BlockPool};
pub use engine::{generate_batch, BatchEvent, BatchLm, BatchOptions, BatchStats, Chunk, ChunkOutput};
pub use logprobs::{token_logprobs, TokenLogprobs};
pub use scheduler::{Scheduled, Scheduler, SchedulerConfig, SchedulerStats, SeqId};
pub use session::{plan_kv, BatchSession, SeqOptions, SessionUsage};
