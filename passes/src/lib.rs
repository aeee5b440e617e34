//! smelt's compiler passes: each a small `Pass` that rewrites the IR graph and reports what it
//! matched; the `PassManager` runs them in order; planners lay out activation and KV memory.

#![forbid(unsafe_code)]
// What a user supplies is never unwrapped: errors carry context instead.
#![deny(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod canonicalize;
pub mod cse;
pub mod dce;
pub mod fuse;
pub mod kv;
pub mod memory;
pub mod pass;
pub mod pipeline;
pub mod shard;
pub mod stats;
#[cfg(test)]
pub(crate) mod testing;

pub use canonicalize::Canonicalize;
pub use cse::Cse;
pub use dce::Dce;
pub use kv::{plan_kv, KvPlan, KvPlanError, DEFAULT_BLOCK_TOKENS};
pub use memory::{check_plan, plan_memory, Buffer, MemoryPlan, ARENA_ALIGN};
pub use pass::{Pass, PassError, PassManager, PassRun, Report};
pub use shard::{shard, ShardError};
