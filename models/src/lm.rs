//! What generation needs of a backend ([`CausalLm`]: the CPU reference or the GPU), the
//! checks every backend makes on the ids it is given, and the one-sequence generation loop.

use smelt_ir::Tensor;

use crate::config::Qwen3Config;
use crate::continuation::{Completion, Continuation, Step};
use crate::engine::ModelError;
use crate::qwen3::Logits;

/// Prompts at least this long show their progress (where a progress sink is installed).
pub const LONG_PROMPT: usize = 256;

/// What generation needs of a backend: the CPU reference ([`crate::Qwen3Cpu`]) or the GPU
/// ([`crate::Qwen3Cuda`]).
pub trait CausalLm {
    fn config(&self) -> &Qwen3Config;
    /// Ids that end generation.
    fn eos_token_ids(&self) -> &[u32];
    /// Tokens in the KV cache.
    fn position(&self) -> usize;
    /// Starts a new sequence.
    fn reset(&mut self);
    /// Appends `ids` to the sequence and returns f32 logits: `[ids.len(), vocab]` for
    /// `AllPositions`, `[1, vocab]` for `LastPosition`.
    fn forward(&mut self, ids: &[u32], logits: Logits) -> Result<Tensor, ModelError>;
    /// Appends `ids` and returns the greedy next token (a backend may skip reading logits).
    fn forward_greedy(&mut self, ids: &[u32]) -> Result<u32, ModelError> {
        let logits = self.forward(ids, Logits::LastPosition)?;
        Ok(crate::sample::argmax(logits.f32s().expect("logits are f32")))
    }
    /// The same model under the batch engine, where the backend supports it.
    fn as_batch(&mut self) -> Option<&mut dyn crate::batch::BatchLm> {
        None
    }
}

/// The checks every backend makes before running `ids` after `position` cached tokens.
pub(crate) fn check_ids(config: &Qwen3Config, position: usize, ids: &[u32]) -> Result<(), ModelError> {
    if ids.is_empty() {
        return Err(ModelError::EmptyPrompt);
    }
    let vocab = config.vocab_size;
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(ModelError::TokenOutOfRange { id, vocab });
    }
    let needed = position + ids.len();
    if needed > config.max_position_embeddings {
        return Err(ModelError::ContextFull { needed, max: config.max_position_embeddings });
    }
    Ok(())
}

/// Generates after `prompt` until `seq` ends (see [`Continuation::accept`]), calling
/// `on_token` with each new id and what it showed as soon as it is chosen.
pub fn generate(
    model: &mut dyn CausalLm,
    prompt: &[u32],
    mut seq: Continuation<'_>,
    mut on_token: impl FnMut(u32, &Step),
) -> Result<Completion, ModelError> {
    model.reset();
    let context = model.config().max_position_embeddings;
    if prompt.len() > context {
        return Err(ModelError::ContextFull { needed: prompt.len(), max: context });
    }
    if seq.finish().is_some() {
        return Ok(seq.into_completion());
    }
    let mut next = next_token(model, &mut seq, prompt)?;
    loop {
        let done = seq.accept(next, model.eos_token_ids(), model.position(), context);
        on_token(next, &done);
        if done.end.is_some() {
            return Ok(seq.into_completion());
        }
        next = next_token(model, &mut seq, &[next])?;
    }
}

/// Runs `ids` (appended to the sequence) and chooses the token after them for `seq`: the
/// backend's own argmax when `seq` is greedy, else `seq`'s sampler over the logits.
pub fn next_token(model: &mut dyn CausalLm, seq: &mut Continuation<'_>, ids: &[u32]) -> Result<u32, ModelError> {
    if seq.greedy() {
        return model.forward_greedy(ids);
    }
    let logits = model.forward(ids, Logits::LastPosition)?;
    Ok(seq.choose(logits.f32s().expect("logits are f32")))
}
