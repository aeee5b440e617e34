//! The batch engine: runs many requests to completion over a paged KV cache, each with its
//! own sampling, stop strings and length, through a backend that computes several sequences'
//! chunks per step ([`BatchLm`]).

use std::time::Instant;

use smelt_passes::kv::KvPlan;

use super::blocks::BlockId;
use super::logprobs::TokenLogprobs;
use super::scheduler::SchedulerStats;
use super::session::{plan_kv, BatchSession, SeqOptions};
use crate::config::Qwen3Config;
use crate::continuation::{Completion, Request};
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
    /// `logprobs` where its sequence asked for them ([`super::SeqOptions::top_logprobs`]).
    Token { request: usize, token: u32, text: &'a str, logprobs: Option<&'a TokenLogprobs> },
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
    let kv = plan_kv(model, options)?;
    for (index, r) in requests.iter().enumerate() {
        check_request(model.config(), &kv, r, tokenizer.is_some())
            .map_err(|e| ModelError::Request { index, source: Box::new(e) })?;
    }
    let mut session = BatchSession::with_plan(model, kv, options, tokenizer)?;
    let mut done: Vec<Option<Completion>> = vec![None; requests.len()];
    for (i, r) in requests.iter().enumerate() {
        done[i] = session.add(i, r, SeqOptions::default())?;
    }
    while !session.is_idle() {
        session.step(|event| {
            if let BatchEvent::Finished { request, completion, .. } = &event {
                done[*request] = Some((*completion).clone());
            }
            on_event(event);
        })?;
    }
    let completions = done
        .into_iter()
        .enumerate()
        .map(|(i, c)| c.ok_or_else(|| ModelError::Internal(format!("request {i} did not finish"))))
        .collect::<Result<Vec<Completion>, ModelError>>()?;
    let stats = BatchStats {
        kv: session.kv().clone(),
        scheduler: session.usage().scheduler,
        prompt_tokens: requests.iter().map(|r| r.prompt.len()).sum(),
        generated_tokens: completions.iter().map(|c| c.ids.len()).sum(),
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok((completions, stats))
}

/// Whether `r` can run on a model of `config` with the KV cache `kv`.
pub(super) fn check_request(
    config: &Qwen3Config,
    kv: &KvPlan,
    r: &Request,
    has_tokenizer: bool,
) -> Result<(), ModelError> {
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
