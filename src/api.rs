//! The library API: load a Hugging Face model directory on a device, generate from a prompt
//! or a chat as a stream of tokens and text, reach the tokenizer.
//!
//! ```
//! use smelt::{GenerateParams, Model, ModelOptions, Prompt};
//!
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models/gqa1-tied-f32");
//! let mut model = Model::load(dir.as_ref(), &ModelOptions::default())?;
//! let params = GenerateParams { max_new_tokens: 8, ..GenerateParams::default() };
//! let mut ids = Vec::new();
//! for chunk in model.generate(Prompt::Ids(&[5, 17, 42]), &params)? {
//!     let chunk = chunk?;
//!     ids.push(chunk.token); // chunk.text is the new text (empty: this fixture has no tokenizer)
//! }
//! assert!(!ids.is_empty() && ids.len() <= 8);
//! # Ok::<(), smelt::Error>(())
//! ```

use std::path::{Path, PathBuf};

use smelt_ir::DType;
use smelt_models::batch::{generate_batch, BatchEvent, BatchOptions, BatchStats, Completion, Request};
use smelt_models::engine::next_token;
use smelt_models::{
    CausalLm, ChatError, ChatMessage, Continuation, FinishReason, LoadOptions, ModelError, Qwen3Config, Qwen3Cpu,
    Qwen3Cuda, SamplingParams, Tokenizer, TokenizerError,
};
use smelt_runtime::cuda::DecoderOptions;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error("{0} has no tokenizer.json: a text prompt, a chat or a stop string needs one")]
    NoTokenizer(PathBuf),
    #[error("{0} has no chat template (tokenizer_config.json or chat_template.jinja)")]
    NoChatTemplate(PathBuf),
    #[error("sampling: {0}")]
    Sampling(String),
    #[error("{0}")]
    Unsupported(&'static str),
}

/// Where a model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The reference evaluator (f32 by default).
    #[default]
    Cpu,
    /// An NVIDIA GPU through the generated kernels (bf16 by default).
    Cuda,
}

/// How a model is loaded.
#[derive(Clone, Debug, Default)]
pub struct ModelOptions {
    pub device: Device,
    /// Execution dtype; default f32 on the CPU, bf16 on CUDA.
    pub dtype: Option<DType>,
    /// Tokens the GPU's KV cache holds (default: the context, at most 32768).
    pub kv_tokens: Option<usize>,
    /// [`Model::generate_batch`]: the KV cache's size in bytes, shared by the batch (default 1 GiB).
    pub kv_memory: Option<usize>,
    /// [`Model::generate_batch`]: sequences running at once (default 64); on CUDA, setting it
    /// also compiles the batched decode step for that many rows.
    pub max_batch: Option<usize>,
    /// [`Model::generate_batch`]: share full KV blocks between requests (default on).
    pub no_prefix_cache: bool,
}

/// What to generate: sampling, length and stop strings.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    /// Generation ends at the first of these in the text (which is not returned).
    pub stop: Vec<String>,
}

impl Default for GenerateParams {
    fn default() -> GenerateParams {
        GenerateParams { sampling: SamplingParams::default(), max_new_tokens: 64, stop: Vec::new() }
    }
}

/// A prompt: text (tokenized with the model's tokenizer) or token ids.
#[derive(Clone, Copy, Debug)]
pub enum Prompt<'p> {
    Text(&'p str),
    Ids(&'p [u32]),
}

/// One generated token and the text it completes (possibly empty: a character may span tokens).
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    pub token: u32,
    pub text: String,
}

/// A loaded model.
pub struct Model {
    lm: Box<dyn CausalLm>,
    tokenizer: Option<Tokenizer>,
    dir: PathBuf,
    batch: BatchOptions,
}

impl Model {
    /// Loads `dir` (config.json, safetensors weights, optionally tokenizer.json and a chat
    /// template) on `options.device`.
    pub fn load(dir: &Path, options: &ModelOptions) -> Result<Model, Error> {
        let dtype = options.dtype.unwrap_or(match options.device {
            Device::Cpu => DType::F32,
            Device::Cuda => DType::BF16,
        });
        if options.device == Device::Cuda {
            // Without a GPU this fails at once, before the weights are read.
            smelt_runtime::cuda::probe(0).map_err(ModelError::from)?;
        }
        let cpu = Qwen3Cpu::load_with(dir, LoadOptions::new(dtype))?;
        let lm: Box<dyn CausalLm> = match options.device {
            Device::Cpu => Box::new(cpu),
            Device::Cuda => {
                let kv_tokens = options.kv_tokens.unwrap_or(cpu.config().max_position_embeddings.min(32768));
                // With max_batch, batched decode steps are compiled too (for generate_batch).
                let decoder =
                    DecoderOptions { batch_rows: options.max_batch.unwrap_or(0), ..DecoderOptions::new(kv_tokens) };
                Box::new(Qwen3Cuda::new(cpu, &decoder)?)
            }
        };
        let tokenizer = if smelt_runtime::files::exists(&dir.join("tokenizer.json")) {
            Some(Tokenizer::from_model_dir(dir)?)
        } else {
            None
        };
        let defaults = BatchOptions::default();
        let batch = BatchOptions {
            kv_budget_bytes: options.kv_memory.unwrap_or(defaults.kv_budget_bytes),
            max_batch: options.max_batch.unwrap_or(defaults.max_batch),
            prefix_cache: !options.no_prefix_cache,
            ..defaults
        };
        Ok(Model { lm, tokenizer, dir: dir.to_path_buf(), batch })
    }

    pub fn config(&self) -> &Qwen3Config {
        self.lm.config()
    }

    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// Starts generating after `prompt` (a new sequence). The prompt runs now; the iterator
    /// yields one chunk per new token (with `max_new_tokens: 0`, nothing runs and it yields none).
    pub fn generate(&mut self, prompt: Prompt<'_>, params: &GenerateParams) -> Result<Generation<'_>, Error> {
        params.sampling.validate().map_err(Error::Sampling)?;
        smelt_models::check_stops(&params.stop).map_err(|e| Error::Model(ModelError::BadRequest(e)))?;
        let needs_tokenizer = matches!(prompt, Prompt::Text(_)) || !params.stop.is_empty();
        if needs_tokenizer && self.tokenizer.is_none() {
            return Err(Error::NoTokenizer(self.dir.clone()));
        }
        let ids = match prompt {
            Prompt::Ids(ids) => ids.to_vec(),
            Prompt::Text(text) => self.tokenizer.as_ref().expect("checked").encode(text)?,
        };
        let request = Request {
            prompt: ids,
            max_new_tokens: params.max_new_tokens,
            sampling: params.sampling.clone(),
            stop: params.stop.clone(),
        };
        let Model { lm, tokenizer, .. } = self;
        let lm = lm.as_mut();
        lm.reset();
        let mut seq = Continuation::new(&request, tokenizer.as_ref());
        let next = match seq.finish() {
            Some(_) => None,
            None => Some(next_token(lm, &mut seq, &request.prompt)?),
        };
        Ok(Generation { lm, seq, next })
    }

    /// One assistant turn after `messages`, rendered with the model's chat template;
    /// `enable_thinking: Some(false)` asks Qwen3 not to think.
    pub fn chat(
        &mut self,
        messages: &[ChatMessage],
        enable_thinking: Option<bool>,
        params: &GenerateParams,
    ) -> Result<Generation<'_>, Error> {
        let tokenizer = self.tokenizer.as_ref().ok_or_else(|| Error::NoTokenizer(self.dir.clone()))?;
        let template = tokenizer.chat_template().ok_or_else(|| Error::NoChatTemplate(self.dir.clone()))?;
        let text = template.render(messages, true, enable_thinking)?;
        self.generate(Prompt::Text(&text), params)
    }
}

impl Model {
    /// Runs every request to completion together: continuous batching over one paged KV cache
    /// (sized by [`ModelOptions::kv_memory`]) with prefix caching and preemption. On the CPU
    /// each request gets exactly the tokens [`Model::generate`] gives it alone. `on_event`
    /// sees each token as it is chosen; the completions come back in input order.
    ///
    /// ```
    /// use smelt::{GenerateParams, Model, ModelOptions, Prompt};
    ///
    /// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models/gqa1-tied-f32");
    /// let mut model = Model::load(dir.as_ref(), &ModelOptions::default())?;
    /// let params = GenerateParams { max_new_tokens: 4, ..GenerateParams::default() };
    /// let shared: Vec<u32> = (1..=40).collect();
    /// let (a, b) = ([&shared[..], &[7]].concat(), [&shared[..], &[8]].concat());
    /// let requests = [(Prompt::Ids(&a), params.clone()), (Prompt::Ids(&b), params)];
    /// let (completions, stats) = model.generate_batch(&requests, |_event| {})?;
    /// assert_eq!(completions.len(), 2);
    /// // The second prompt found the first's two full 16-token blocks cached.
    /// assert_eq!(stats.scheduler.hit_tokens, 32);
    /// # Ok::<(), smelt::Error>(())
    /// ```
    pub fn generate_batch(
        &mut self,
        requests: &[(Prompt<'_>, GenerateParams)],
        on_event: impl FnMut(BatchEvent<'_>),
    ) -> Result<(Vec<Completion>, BatchStats), Error> {
        let mut batch = Vec::with_capacity(requests.len());
        for (prompt, params) in requests {
            let prompt = match prompt {
                Prompt::Ids(ids) => ids.to_vec(),
                Prompt::Text(text) => {
                    self.tokenizer.as_ref().ok_or_else(|| Error::NoTokenizer(self.dir.clone()))?.encode(text)?
                }
            };
            batch.push(Request {
                prompt,
                max_new_tokens: params.max_new_tokens,
                sampling: params.sampling.clone(),
                stop: params.stop.clone(),
            });
        }
        let options = self.batch;
        let lm = self.lm.as_batch().ok_or(Error::Unsupported("this backend cannot run a batch"))?;
        Ok(generate_batch(lm, &batch, &options, self.tokenizer.as_ref(), on_event)?)
    }
}

/// A generation in progress: an iterator of [`Chunk`]s. It ends after an EOS token (yielded),
/// `max_new_tokens`, a stop string, or a full context; [`Generation::finish_reason`] says
/// which.
pub struct Generation<'a> {
    lm: &'a mut dyn CausalLm,
    seq: Continuation<'a>,
    /// The token the next call yields; None once generation has ended.
    next: Option<u32>,
}

impl Generation<'_> {
    /// Why generation ended; `None` while it goes on.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.seq.finish()
    }

    /// The first text that could not be shown (an id past the tokenizer's vocabulary, which a
    /// model's padded embedding table allows); the ids are the result either way.
    pub fn warning(&self) -> Option<&str> {
        self.seq.warning()
    }
}

impl Iterator for Generation<'_> {
    type Item = Result<Chunk, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let token = self.next.take()?;
        let context = self.lm.config().max_position_embeddings;
        let step = self.seq.accept(token, self.lm.eos_token_ids(), self.lm.position(), context);
        let mut text = step.text;
        match step.end {
            // Flush what the detokenizer and the stop matcher still hold.
            Some((_, tail)) => text.push_str(&tail),
            None => match next_token(self.lm, &mut self.seq, &[token]) {
                Ok(t) => self.next = Some(t),
                Err(e) => return Some(Err(e.into())),
            },
        }
        Some(Ok(Chunk { token, text }))
    }
}
