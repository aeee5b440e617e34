//! Continuous batching over the block pool. Each step:
//!
//! 1. Running sequences, oldest first, get their next tokens (one when decoding, a chunk of
//!    the step's token budget while prefilling). A sequence that needs a block when none is
//!    left preempts the youngest running sequence (possibly itself): its blocks are released
//!    and it returns to the front of the queue, to be recomputed later from its tokens.
//! 2. If nothing was preempted, waiting sequences join in arrival order while there are batch
//!    slots, budget and blocks. A joining sequence first takes the longest run of cached full
//!    blocks of its tokens; if the block after that run is being computed right now by a
//!    running sequence, it waits a step to hit it instead of computing it twice.
//!
//! A sequence is its tokens (prompt, then generated) and how many of them have KV: prefill,
//! chunked prefill, decode and recompute after preemption are all "compute the tokens that
//! have none", so the engine samples whenever a sequence has caught up with its tokens.

use std::collections::{HashMap, HashSet, VecDeque};

use super::blocks::{chain_hash, BlockId, BlockPool, ROOT_HASH};

/// A caller's handle on a sequence.
pub type SeqId = usize;

#[derive(Clone, Copy, Debug)]
pub struct SchedulerConfig {
    /// Sequences running at once.
    pub max_batch: usize,
    /// Tokens computed per step across all sequences (at least `max_batch`, so every running
    /// sequence can decode).
    pub max_step_tokens: usize,
}

/// `len` tokens of `seq` from position `start`, to run this step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheduled {
    pub seq: SeqId,
    pub start: usize,
    pub len: usize,
}

/// Counters over the scheduler's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Tokens of sequences at the moment they joined the batch (prompts, and prompt plus
    /// output for a preempted sequence rejoining).
    pub queried_tokens: usize,
    /// Of those, tokens whose KV came from the prefix cache.
    pub hit_tokens: usize,
    pub preemptions: usize,
    pub steps: usize,
    /// Tokens computed (prefill, decode and recompute).
    pub computed_tokens: usize,
}

#[derive(Debug, Default)]
struct Seq {
    tokens: Vec<u32>,
    /// Tokens whose KV is in `blocks`.
    computed: usize,
    blocks: Vec<BlockId>,
    /// `hashes[i]`: the cache key of full block `i` of `tokens`.
    hashes: Vec<u64>,
    /// Leading blocks already cached (hits) or offered to the cache.
    offered: usize,
}

impl Seq {
    fn parent_hash(&self, block: usize) -> u64 {
        if block == 0 {
            ROOT_HASH
        } else {
            self.hashes[block - 1]
        }
    }

    fn update_hashes(&mut self, b: usize) {
        while (self.hashes.len() + 1) * b <= self.tokens.len() {
            let i = self.hashes.len();
            self.hashes.push(chain_hash(self.parent_hash(i), &self.tokens[i * b..(i + 1) * b]));
        }
    }
}

pub struct Scheduler {
    pool: BlockPool,
    config: SchedulerConfig,
    seqs: HashMap<SeqId, Seq>,
    waiting: VecDeque<SeqId>,
    /// In the order they joined: the last is the first preempted.
    running: Vec<SeqId>,
    stats: SchedulerStats,
}

impl Scheduler {
    pub fn new(pool: BlockPool, config: SchedulerConfig) -> Scheduler {
        let max_batch = config.max_batch.max(1);
        let config = SchedulerConfig { max_batch, max_step_tokens: config.max_step_tokens.max(max_batch) };
        Scheduler {
            pool,
            config,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            stats: SchedulerStats::default(),
        }
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub fn stats(&self) -> SchedulerStats {
        self.stats
    }

    /// Queues a sequence of `tokens` (non-empty; the caller checked it fits the pool alone).
    pub fn add(&mut self, id: SeqId, tokens: Vec<u32>) {
        debug_assert!(!tokens.is_empty() && !self.seqs.contains_key(&id));
        self.seqs.insert(id, Seq { tokens, ..Seq::default() });
        self.waiting.push_back(id);
    }

    /// Sequences holding a place in the batch.
    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// Sequences waiting for a place in the batch (new or preempted).
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    pub fn tokens(&self, id: SeqId) -> &[u32] {
        &self.seqs[&id].tokens
    }

    pub fn blocks(&self, id: SeqId) -> &[BlockId] {
        &self.seqs[&id].blocks
    }

    /// Tokens of `id` with KV.
    pub fn computed(&self, id: SeqId) -> usize {
        self.seqs[&id].computed
    }

    /// What runs this step. Empty only when idle.
    pub fn schedule(&mut self) -> Vec<Scheduled> {
        let mut budget = self.config.max_step_tokens;
        let mut plan = Vec::new();
        let preempted = self.schedule_running(&mut budget, &mut plan);
        if !preempted {
            self.admit_waiting(&mut budget, &mut plan);
        }
        if !plan.is_empty() {
            self.stats.steps += 1;
        }
        plan
    }

    /// Step 1; returns whether anything was preempted.
    fn schedule_running(&mut self, budget: &mut usize, plan: &mut Vec<Scheduled>) -> bool {
        let b = self.pool.block_tokens();
        let mut preempted = false;
        let mut i = 0;
        while i < self.running.len() {
            let id = self.running[i];
            let seq = &self.seqs[&id];
            let len = (seq.tokens.len() - seq.computed).min(*budget);
            if len == 0 {
                i += 1;
                continue;
            }
            let start = seq.computed;
            let need = (start + len).div_ceil(b).saturating_sub(seq.blocks.len());
            let mut self_preempted = false;
            while self.pool.available() < need {
                let victim = *self.running.last().expect("the sequence itself is running");
                self.preempt(victim);
                preempted = true;
                if victim == id {
                    self_preempted = true;
                    break;
                }
            }
            if self_preempted {
                break;
            }
            self.grow(id, need);
            plan.push(Scheduled { seq: id, start, len });
            *budget -= len;
            i += 1;
        }
        preempted
    }

    /// Step 2.
    fn admit_waiting(&mut self, budget: &mut usize, plan: &mut Vec<Scheduled>) {
        let b = self.pool.block_tokens();
        let caching = self.pool.prefix_cache();
        // Cache keys of full blocks the running sequences have yet to compute.
        let mut in_flight: HashSet<u64> = HashSet::new();
        if caching {
            for id in &self.running {
                let seq = &self.seqs[id];
                in_flight.extend(&seq.hashes[seq.offered..]);
            }
        }
        let mut deferred = Vec::new();
        while self.running.len() < self.config.max_batch && *budget > 0 {
            let Some(id) = self.waiting.pop_front() else { break };
            let seq = self.seqs.get_mut(&id).expect("waiting sequences exist");
            seq.update_hashes(b);
            // The last token is always computed: its logits choose the next one.
            let max_hits = (seq.tokens.len() - 1) / b;
            let mut hits = Vec::new();
            if caching {
                while hits.len() < max_hits {
                    let i = hits.len();
                    match self.pool.lookup(seq.parent_hash(i), &seq.tokens[i * b..(i + 1) * b]) {
                        Some(block) => hits.push(block),
                        None => break,
                    }
                }
                if hits.len() < max_hits && in_flight.contains(&seq.hashes[hits.len()]) {
                    deferred.push(id);
                    continue;
                }
            }
            let start = hits.len() * b;
            let len = (seq.tokens.len() - start).min(*budget);
            let need = (start + len).div_ceil(b) - hits.len();
            // Hits nobody holds are counted as available but are about to be held.
            let idle_hits = hits.iter().filter(|&&block| self.pool.refs(block) == 0).count();
            if self.pool.available() - idle_hits < need {
                self.waiting.push_front(id);
                break;
            }
            for &block in &hits {
                self.pool.acquire(block);
            }
            let seq = self.seqs.get_mut(&id).expect("waiting sequences exist");
            seq.offered = hits.len();
            seq.blocks = hits;
            seq.computed = start;
            self.stats.queried_tokens += seq.tokens.len();
            self.stats.hit_tokens += start;
            in_flight.extend(&seq.hashes[seq.offered..]);
            self.running.push(id);
            self.grow(id, need);
            plan.push(Scheduled { seq: id, start, len });
            *budget -= len;
        }
        for id in deferred.into_iter().rev() {
            self.waiting.push_front(id);
        }
    }

    /// Gives `id` `n` new blocks (the caller made sure they are available).
    fn grow(&mut self, id: SeqId, n: usize) {
        for _ in 0..n {
            let block = self.pool.allocate().expect("blocks were checked available");
            self.seqs.get_mut(&id).expect("running sequences exist").blocks.push(block);
        }
    }

    fn preempt(&mut self, id: SeqId) {
        self.running.retain(|&r| r != id);
        let seq = self.seqs.get_mut(&id).expect("running sequences exist");
        self.pool.release(&seq.blocks);
        seq.blocks.clear();
        seq.computed = 0;
        seq.offered = 0;
        self.waiting.push_front(id);
        self.stats.preemptions += 1;
    }

    /// Records that the step computed `len` more tokens of `id` and offers its newly full
    /// blocks to the cache. Returns whether `id` has caught up with its tokens (its last
    /// logits choose the next token).
    pub fn advance(&mut self, id: SeqId, len: usize) -> bool {
        let b = self.pool.block_tokens();
        let seq = self.seqs.get_mut(&id).expect("scheduled sequences exist");
        seq.computed += len;
        debug_assert!(seq.computed <= seq.tokens.len());
        self.stats.computed_tokens += len;
        seq.update_hashes(b);
        while seq.offered < seq.blocks.len() && (seq.offered + 1) * b <= seq.computed {
            let i = seq.offered;
            self.pool.register(seq.blocks[i], seq.parent_hash(i), &seq.tokens[i * b..(i + 1) * b]);
            seq.offered += 1;
        }
        seq.computed == seq.tokens.len()
    }

    /// Appends a generated token to `id`, to be computed next step.
    pub fn push_token(&mut self, id: SeqId, token: u32) {
        self.seqs.get_mut(&id).expect("running sequences exist").tokens.push(token);
    }

    /// Drops `id` (finished), releasing its blocks; cached ones stay for reuse.
    pub fn finish(&mut self, id: SeqId) {
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
        if let Some(seq) = self.seqs.remove(&id) {
            self.pool.release(&seq.blocks);
        }
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
