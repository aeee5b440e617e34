//! The batch engine one step at a time: sequences join and leave between steps. A server
//! adds each request as it arrives, runs [`BatchSession::step`] in a loop, and cancels a
//! sequence whose client went away (its KV blocks go back to the pool at once).
//! [`super::generate_batch`] is this loop run until every request has finished.

use std::collections::HashMap;

use smelt_passes::kv::KvPlan;

use super::blocks::BlockPool;
use super::engine::{check_request, BatchEvent, BatchLm, BatchOptions, Chunk, ChunkOutput};
use super::logprobs::token_logprobs;
use super::scheduler::{Scheduler, SchedulerConfig, SchedulerStats, SeqId};
use crate::continuation::{Completion, Continuation, Request};
use crate::engine::ModelError;
use crate::tokenizer::Tokenizer;

/// How one sequence reports, beyond what its [`Request`] asks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqOptions {
    /// The EOS id that ends the sequence shows no text (a chat reply without `<|im_end|>`).
    pub hide_eos_text: bool,
    /// Report each token's log-probability and this many of the most likely alternatives
    /// (`Some(0)`: the chosen token's only). The step then computes the full logits even
    /// for a greedy sequence.
    pub top_logprobs: Option<usize>,
}

/// What the pool and the scheduler hold now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionUsage {
    /// Sequences computed in the last step's batch (prefill or decode).
    pub running: usize,
    /// Sequences waiting for a place in the batch (new or preempted).
    pub waiting: usize,
    /// KV blocks held by sequences.
    pub blocks_used: usize,
    /// KV blocks in the pool.
    pub blocks_total: usize,
    /// KV blocks held by no sequence but kept for the prefix cache (reusable, and evictable).
    pub blocks_cached: usize,
    pub scheduler: SchedulerStats,
}

/// A sequence being generated.
struct Live<'t> {
    seq: Continuation<'t>,
    top_logprobs: Option<usize>,
}

/// A paged KV cache and the sequences sharing it, over a backend.
pub struct BatchSession<'m, 't> {
    model: &'m mut dyn BatchLm,
    tokenizer: Option<&'t Tokenizer>,
    kv: KvPlan,
    sched: Scheduler,
    live: HashMap<SeqId, Live<'t>>,
}

/// The KV layout `options` buys on `model`, checked against its context.
pub fn plan_kv(model: &dyn BatchLm, options: &BatchOptions) -> Result<KvPlan, ModelError> {
    let context = model.config().max_position_embeddings;
    if options.block_tokens > context {
        return Err(ModelError::BadRequest(format!(
            "a KV block of {} tokens is longer than the model's context ({context} tokens)",
            options.block_tokens
        )));
    }
    model.kv_plan(options.block_tokens, options.kv_budget_bytes)
}

impl<'m, 't> BatchSession<'m, 't> {
    /// Plans and allocates the KV cache `options` asks for.
    pub fn new(
        model: &'m mut dyn BatchLm,
        options: &BatchOptions,
        tokenizer: Option<&'t Tokenizer>,
    ) -> Result<BatchSession<'m, 't>, ModelError> {
        let kv = plan_kv(model, options)?;
        BatchSession::with_plan(model, kv, options, tokenizer)
    }

    /// Allocates the KV cache `kv` (from [`plan_kv`] with the same `options`).
    pub fn with_plan(
        model: &'m mut dyn BatchLm,
        kv: KvPlan,
        options: &BatchOptions,
        tokenizer: Option<&'t Tokenizer>,
    ) -> Result<BatchSession<'m, 't>, ModelError> {
        model.allocate_kv(&kv)?;
        let config = SchedulerConfig { max_batch: options.max_batch, max_step_tokens: options.max_step_tokens };
        let pool = BlockPool::new(kv.blocks, kv.block_tokens, options.prefix_cache);
        Ok(BatchSession { model, tokenizer, kv, sched: Scheduler::new(pool, config), live: HashMap::new() })
    }

    pub fn kv(&self) -> &KvPlan {
        &self.kv
    }

    /// Whether `request` can run here: its sampling, stop strings, ids, and a KV need that
    /// fits the whole pool.
    pub fn check(&self, request: &Request) -> Result<(), ModelError> {
        check_request(self.model.config(), &self.kv, request, self.tokenizer.is_some())
    }

    /// Adds `request` as sequence `id` (unique among live ones); it joins the batch at a
    /// later step. A request that has ended before its first token (`max_new_tokens: 0`)
    /// is not added: its completion comes back at once.
    pub fn add(&mut self, id: SeqId, request: &Request, options: SeqOptions) -> Result<Option<Completion>, ModelError> {
        self.check(request)?;
        if self.live.contains_key(&id) {
            return Err(ModelError::Internal(format!("sequence {id} is already live")));
        }
        let mut seq = Continuation::new(request, self.tokenizer);
        if options.hide_eos_text {
            seq = seq.without_eos_text();
        }
        if seq.finish().is_some() {
            return Ok(Some(seq.into_completion()));
        }
        self.sched.add(id, request.prompt.clone());
        self.live.insert(id, Live { seq, top_logprobs: options.top_logprobs });
        Ok(None)
    }

    /// Drops sequence `id` now, releasing its KV blocks (full cached ones stay for reuse).
    /// Returns whether it was live.
    pub fn cancel(&mut self, id: SeqId) -> bool {
        self.sched.finish(id);
        self.live.remove(&id).is_some()
    }

    /// No sequence is live.
    pub fn is_idle(&self) -> bool {
        self.sched.is_idle()
    }

    pub fn usage(&self) -> SessionUsage {
        let pool = self.sched.pool();
        SessionUsage {
            running: self.sched.running_len(),
            waiting: self.sched.waiting_len(),
            blocks_used: pool.capacity() - pool.available(),
            blocks_total: pool.capacity(),
            blocks_cached: pool.cached(),
            scheduler: self.sched.stats(),
        }
    }

    /// Runs one step: chooses the chunks, computes them, and reports each chosen token and
    /// each sequence that ended (which then leaves the session). An error of the backend
    /// leaves the session's sequences where they were; the caller cancels them.
    pub fn step(&mut self, mut on_event: impl FnMut(BatchEvent<'_>)) -> Result<(), ModelError> {
        let plan = self.sched.schedule();
        if plan.is_empty() {
            if self.sched.is_idle() {
                return Ok(());
            }
            return Err(ModelError::Internal("the scheduler has work but scheduled none".into()));
        }
        let chunks: Vec<Chunk<'_>> = plan
            .iter()
            .map(|s| Chunk {
                ids: &self.sched.tokens(s.seq)[s.start..s.start + s.len],
                start: s.start,
                blocks: self.sched.blocks(s.seq),
                greedy: self.live.get(&s.seq).is_some_and(|l| l.seq.greedy() && l.top_logprobs.is_none()),
            })
            .collect();
        let outputs = self.model.run_chunks(&chunks)?;
        let context = self.model.config().max_position_embeddings;
        for (s, output) in plan.iter().zip(outputs) {
            if !self.sched.advance(s.seq, s.len) {
                continue;
            }
            let live = self.live.get_mut(&s.seq).ok_or_else(|| not_live(s.seq))?;
            let (token, logprobs) = match output {
                ChunkOutput::Logits(logits) => {
                    let logprobs = live.top_logprobs.map(|_| &logits[..]);
                    let token = live.seq.choose(&logits);
                    (token, logprobs.map(|l| token_logprobs(l, token, live.top_logprobs.unwrap_or(0))))
                }
                ChunkOutput::Greedy(token) => (token, None),
            };
            let step = live.seq.accept(token, self.model.eos_token_ids(), self.sched.computed(s.seq), context);
            on_event(BatchEvent::Token { request: s.seq, token, text: &step.text, logprobs: logprobs.as_ref() });
            let Some((_, tail)) = step.end else {
                self.sched.push_token(s.seq, token);
                continue;
            };
            self.sched.finish(s.seq);
            let live = self.live.remove(&s.seq).ok_or_else(|| not_live(s.seq))?;
            let completion = live.seq.into_completion();
            on_event(BatchEvent::Finished { request: s.seq, text: &tail, completion: &completion });
        }
        Ok(())
    }
}

fn not_live(id: SeqId) -> ModelError {
    ModelError::Internal(format!("scheduled sequence {id} is not live"))
}
