//! The batch engine: runs many requests to completion over a paged KV cache, each with its
//! own sampling, stop strings and length, through a backend that computes several sequences'
//! chunks per step ([`BatchLm`]).

use std::time::Instant;

use smelt_passes::kv::KvPlan;

use super::blocks::{BlockId, BlockPool};
use super::scheduler::{Scheduler, SchedulerConfig, SchedulerStats};
use crate::config::Qwen3Config;
use crate::continuation::{Completion, Continuation, Request};
use crate::engine::ModelError;
use crate::lm::check_ids;
use crate::tokenizer::Tokenizer;

/// `ids` of one sequence to compute after its first `start` tokens, whose KV is in the blocks
/// of `blocks` (its block table, covering `start + ids.len()` tokens).
pub struct Chunk<'a> {
    pub ids: &'a [u32],
    pub start: usize,
    pub blocks: &'a [BlockId],
    /// The next token is the plain argmax (greedy, no penalties): a backend may return it
    /// instead of the logits.
    pub greedy: bool,
}

/// What a backend computed for a chunk.
#[derive(Clone, Debug)]
pub enum ChunkOutput {
    /// f32 logits of the chunk's last position.
    Logits(Vec<f32>),
    /// Their argmax (only for a chunk marked greedy).
    Greedy(u32),
}

/// What the batch engine needs of a backend.
pub trait BatchLm {
    fn config(&self) -> &Qwen3Config;
    /// Ids that end generation.
    fn eos_token_ids(&self) -> &[u32];
    /// The paged KV layout `budget_bytes` buys at `block_tokens` tokens per block.
    fn kv_plan(&self, block_tokens: usize, budget_bytes: usize) -> Result<KvPlan, ModelError>;
    /// Makes the KV pool `plan` describes (dropping any earlier one).
    fn allocate_kv(&mut self, plan: &KvPlan) -> Result<(), ModelError>;
    /// Computes every chunk (appending its KV through its block table) and returns what
    /// chooses each chunk's next token.
    fn run_chunks(&mut self, chunks: &[Chunk<'_>]) -> Result<Vec<ChunkOutput>, ModelError>;
}

/// How the batch runs.
#[derive(Clone, Copy, Debug)]
pub struct BatchOptions {
    /// Bytes of KV cache (in the execution dtype) shared by all sequences.
    pub kv_budget_bytes: usize,
    pub block_tokens: usize,
    /// Sequences running at once.
    pub max_batch: usize,
    /// Tokens computed per step across all sequences (bounds a step's prefill work).
    pub max_step_tokens: usize,
    pub prefix_cache: bool,
}

impl Default for BatchOptions {
    fn default() -> BatchOptions {
        BatchOptions {
            kv_budget_bytes: 1 << 30,
            block_tokens: smelt_passes::kv::DEFAULT_BLOCK_TOKENS,
            max_batch: 64,
            max_step_tokens: 2048,
            prefix_cache: true,
        }
    }
}

/// What happened, for streaming.
#[derive(Debug)]
pub enum BatchEvent<'a> {
    /// Request `request` generated `token`, completing `text` (possibly empty).
    Token { request: usize, token: u32, text: &'a str },
    /// Request `request` ended; `text` is the last of its text.
    Finished { request: usize, text: &'a str, completion: &'a Completion },
}

#[derive(Clone, Debug)]
pub struct BatchStats {
    pub kv: KvPlan,
    pub scheduler: SchedulerStats,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub seconds: f64,
}

impl BatchStats {
    /// Prompt tokens whose KV came from the prefix cache, over prompt tokens looked up.
    pub fn prefix_hit_rate(&self) -> f64 {
        let s = &self.scheduler;
        s.hit_tokens as f64 / s.queried_tokens.max(1) as f64
    }
}

/// Runs `requests` to completion; returns their completions in input order. `on_event` sees
/// every token as it is chosen. Requests are checked before anything runs: a bad one is an
/// error naming its index.
pub fn generate_batch(
    model: &mut dyn BatchLm,
    requests: &[Request],
    options: &BatchOptions,
    tokenizer: Option<&Tokenizer>,
    mut on_event: impl FnMut(BatchEvent<'_>),
) -> Result<(Vec<Completion>, BatchStats), ModelError> {
    let t0 = Instant::now();
    let context = model.config().max_position_embeddings;
    if options.block_tokens > context {
        return Err(ModelError::BadRequest(format!(
            "a KV block of {} tokens is longer than the model's context ({context} tokens)",
            options.block_tokens
        )));
    }
    let kv = model.kv_plan(options.block_tokens, options.kv_budget_bytes)?;
    for (index, r) in requests.iter().enumerate() {
        check_request(model.config(), &kv, r, tokenizer.is_some())
            .map_err(|e| ModelError::Request { index, source: Box::new(e) })?;
    }
    model.allocate_kv(&kv)?;
    let config = SchedulerConfig { max_batch: options.max_batch, max_step_tokens: options.max_step_tokens };
    let mut sched = Scheduler::new(BlockPool::new(kv.blocks, kv.block_tokens, options.prefix_cache), config);
    let mut live: Vec<Option<Continuation<'_>>> = Vec::with_capacity(requests.len());
    let mut done: Vec<Option<Completion>> = vec![None; requests.len()];
    for (i, r) in requests.iter().enumerate() {
        let seq = Continuation::new(r, tokenizer);
        if seq.finish().is_some() {
            done[i] = Some(seq.into_completion());
            live.push(None);
            continue;
        }
        sched.add(i, r.prompt.clone());
        live.push(Some(seq));
    }
    while !sched.is_idle() {
        let plan = sched.schedule();
        if plan.is_empty() {
            return Err(ModelError::Internal("the scheduler has work but scheduled none".into()));
        }
        let chunks: Vec<Chunk<'_>> = plan
            .iter()
            .map(|s| Chunk {
                ids: &sched.tokens(s.seq)[s.start..s.start + s.len],
                start: s.start,
                blocks: sched.blocks(s.seq),
                greedy: live[s.seq].as_ref().is_some_and(Continuation::greedy),
            })
            .collect();
        let outputs = model.run_chunks(&chunks)?;
        for (s, output) in plan.iter().zip(outputs) {
            if !sched.advance(s.seq, s.len) {
                continue;
            }
            let seq = live[s.seq].as_mut().expect("scheduled requests are live");
            let token = match output {
                ChunkOutput::Logits(logits) => seq.choose(&logits),
                ChunkOutput::Greedy(token) => token,
            };
            let step = seq.accept(token, model.eos_token_ids(), sched.computed(s.seq), context);
            on_event(BatchEvent::Token { request: s.seq, token, text: &step.text });
            let Some((_, tail)) = step.end else {
                sched.push_token(s.seq, token);
                continue;
            };
            sched.finish(s.seq);
            let completion = live[s.seq].take().expect("scheduled requests are live").into_completion();
            on_event(BatchEvent::Finished { request: s.seq, text: &tail, completion: &completion });
            done[s.seq] = Some(completion);
        }
    }
    let completions: Vec<Completion> = done.into_iter().map(|c| c.expect("every request finished")).collect();
    let stats = BatchStats {
        kv,
        scheduler: sched.stats(),
        prompt_tokens: requests.iter().map(|r| r.prompt.len()).sum(),
        generated_tokens: completions.iter().map(|c| c.ids.len()).sum(),
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok((completions, stats))
}

/// The checks a request passes before the batch starts.
fn check_request(config: &Qwen3Config, kv: &KvPlan, r: &Request, has_tokenizer: bool) -> Result<(), ModelError> {
    r.sampling.validate().map_err(ModelError::BadRequest)?;
    crate::stop::check_stops(&r.stop).map_err(ModelError::BadRequest)?;
    if !r.stop.is_empty() && !has_tokenizer {
        return Err(ModelError::BadRequest("stop strings need a tokenizer to see text".into()));
    }
    check_ids(config, 0, &r.prompt)?;
    // Alone in the cache, every request must fit to its end, or preemption could never make
    // room for it.
    let tokens = r.prompt.len().saturating_add(r.max_new_tokens).min(config.max_position_embeddings);
    let blocks = tokens.div_ceil(kv.block_tokens);
    if blocks > kv.blocks {
        return Err(ModelError::KvTooSmall {
            tokens,
            bytes: blocks * kv.bytes_per_block,
            capacity_tokens: kv.capacity_tokens,
            budget: kv.budget_bytes,
        });
    }
    Ok(())
}
