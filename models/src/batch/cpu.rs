//! The CPU backend under the batch engine: each chunk runs through the reference evaluator in
//! turn, its KV gathered from and written back to the paged pool. Batching here is a
//! scheduling contract (what runs together, which blocks each sequence holds), checked on the
//! oracle; the speed of running chunks together is the GPU backend's business.

use smelt_passes::kv::KvPlan;

use super::engine::{BatchLm, Chunk, ChunkOutput};
use crate::config::Qwen3Config;
use crate::engine::{ModelError, Qwen3Cpu};

impl BatchLm for Qwen3Cpu {
    fn config(&self) -> &Qwen3Config {
        Qwen3Cpu::config(self)
    }

    fn eos_token_ids(&self) -> &[u32] {
        Qwen3Cpu::eos_token_ids(self)
    }

    fn kv_plan(&self, block_tokens: usize, budget_bytes: usize) -> Result<KvPlan, ModelError> {
        Qwen3Cpu::kv_plan(self, block_tokens, budget_bytes)
    }

    fn allocate_kv(&mut self, plan: &KvPlan) -> Result<(), ModelError> {
        self.allocate_paged(plan.blocks, plan.block_tokens)
    }

    fn run_chunks(&mut self, chunks: &[Chunk<'_>]) -> Result<Vec<ChunkOutput>, ModelError> {
        chunks
            .iter()
            .map(|c| {
                let logits = self.forward_paged(c.ids, c.start, c.blocks)?;
                Ok(ChunkOutput::Logits(logits.to_f32_vec()))
            })
            .collect()
    }
}
