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

mod options;

use std::path::{Path, PathBuf};

use smelt_ir::{DType, Tensor};
use smelt_models::batch::{generate_batch, BatchEvent, BatchOptions, BatchSession, BatchStats, Completion, Request};
use smelt_models::lm::next_token;
use smelt_models::qwen3::Logits;
use smelt_models::{
    CausalLm, ChatError, ChatMessage, Continuation, FinishReason, GenerationConfig, LoadOptions, ModelError,
    Qwen3Config, Qwen3Cpu, Qwen3Cuda, Qwen3CudaGroup, SamplingParams, Tokenizer, TokenizerError,
};

pub use options::{CudaOptions, Device, ModelOptions, Needs, DEFAULT_MAX_KV_TOKENS};

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
    #[error(
        "a KV cache of {tokens} tokens takes {bytes} bytes in {dtype}, more than the {total} bytes of {gpu}: \
         ask for fewer KV tokens"
    )]
    KvCacheTooLarge { tokens: usize, bytes: u64, dtype: DType, gpu: String, total: u64 },
}

/// What to generate: sampling, length and stop strings.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// None (the default): the model's recommended sampling, from its `generation_config.json`
    /// ([`Model::sampling_defaults`]), greedy when it has none.
    pub sampling: Option<SamplingParams>,
    pub max_new_tokens: usize,
    /// Generation ends at the first of these in the text (which is not returned).
    pub stop: Vec<String>,
    /// The EOS token that ends generation shows no text (a chat reply without its
    /// `<|im_end|>`); by default it shows the text the tokenizer decodes it to.
    pub hide_eos_text: bool,
}

impl Default for GenerateParams {
    fn default() -> GenerateParams {
        GenerateParams { sampling: None, max_new_tokens: 64, stop: Vec::new(), hide_eos_text: false }
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
    /// `generation_config.json`'s sampling; None: greedy.
    sampling: Option<SamplingParams>,
}

impl Model {
    /// Loads `dir` (config.json, safetensors weights, optionally tokenizer.json and a chat
    /// template) on `options.device`. What can fail fast does, before the weights are read:
    /// the options, the GPU, the tokenizer and the KV cache's size.
    pub fn load(dir: &Path, options: &ModelOptions) -> Result<Model, Error> {
        options.check()?;
        if options.device == Device::Cuda {
            // Without a GPU this fails at once, before anything is read.
            smelt_runtime::cuda::probe(0).map_err(ModelError::from)?;
        }
        let tokenizer = load_tokenizer(dir, options.tokenizer.as_deref())?;
        Model::load_with(dir, options, tokenizer)
    }

    /// [`Model::load`] with a tokenizer the caller loaded (with [`load_tokenizer`]), to use it
    /// before the weights are read.
    pub fn load_with(dir: &Path, options: &ModelOptions, tokenizer: Option<Tokenizer>) -> Result<Model, Error> {
        options.check()?;
        if !dir.is_dir() {
            return Err(ModelError::NoDir(dir.to_path_buf()).into());
        }
        match (&tokenizer, options.needs) {
            (None, Needs::Tokenizer | Needs::ChatTemplate) => return Err(Error::NoTokenizer(dir.to_path_buf())),
            (Some(t), Needs::ChatTemplate) if t.chat_template().is_none() => {
                return Err(Error::NoChatTemplate(dir.to_path_buf()))
            }
            _ => {}
        }
        let dtype = options.dtype();
        let load = LoadOptions { dtype, fuse: !options.no_fuse, tensor_parallel: options.tensor_parallel.max(1) };
        // The small files first: a bad one fails before the weights are read.
        let config = Qwen3Config::from_file(&dir.join("config.json")).map_err(ModelError::from)?;
        let sampling = GenerationConfig::load(dir, config.vocab_size)?.sampling;
        let lm: Box<dyn CausalLm> = match options.device {
            Device::Cpu => Box::new(Qwen3Cpu::load_with(dir, load)?),
            Device::Cuda => {
                options.cuda.check_fits(&config, dtype)?;
                // With batch options, the batched decode step is compiled too (for generate_batch).
                let rows = options.batch.map_or(0, |b| b.max_batch);
                let decoder = options.cuda.decoder_options(&config, rows);
                match options.tensor_parallel {
                    0 | 1 => Box::new(Qwen3Cuda::load(dir, dtype, &decoder)?),
                    world => Box::new(Qwen3CudaGroup::load(dir, dtype, world, &decoder)?),
                }
            }
        };
        let batch = options.batch.unwrap_or_default();
        Ok(Model { lm, tokenizer, dir: dir.to_path_buf(), batch, sampling })
    }

    /// The sampling a request without its own gets: `generation_config.json`'s when it sets
    /// `do_sample` (Qwen3: temperature 0.6, top_k 20, top_p 0.95), else None (greedy).
    pub fn sampling_defaults(&self) -> Option<&SamplingParams> {
        self.sampling.as_ref()
    }

    /// `params`' sampling, else the model's, else greedy; checked.
    fn sampling_for(&self, params: &GenerateParams) -> Result<SamplingParams, Error> {
        let sampling = params.sampling.as_ref().or(self.sampling.as_ref()).cloned().unwrap_or_default();
        sampling.validate().map_err(Error::Sampling)?;
        Ok(sampling)
    }

    pub fn config(&self) -> &Qwen3Config {
        self.lm.config()
    }

    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// Runs `ids` as a new sequence and returns the f32 logits at every position,
    /// `[ids.len(), vocab]`.
    pub fn logits(&mut self, ids: &[u32]) -> Result<Tensor, Error> {
        self.lm.reset();
        Ok(self.lm.forward(ids, Logits::AllPositions)?)
    }

    /// Starts generating after `prompt` (a new sequence). The prompt runs now; the iterator
    /// yields one chunk per new token (with `max_new_tokens: 0`, nothing runs and it yields none).
    pub fn generate(&mut self, prompt: Prompt<'_>, params: &GenerateParams) -> Result<Generation<'_>, Error> {
        let sampling = self.sampling_for(params)?;
        smelt_models::check_stops(&params.stop).map_err(|e| Error::Model(ModelError::BadRequest(e)))?;
        let needs_tokenizer = matches!(prompt, Prompt::Text(_)) || !params.stop.is_empty();
        if needs_tokenizer && self.tokenizer.is_none() {
            return Err(Error::NoTokenizer(self.dir.clone()));
        }
        let ids = match prompt {
            Prompt::Ids(ids) => ids.to_vec(),
            Prompt::Text(text) => self.tokenizer.as_ref().expect("checked").encode(text)?,
        };
        let request =
            Request { prompt: ids, max_new_tokens: params.max_new_tokens, sampling, stop: params.stop.clone() };
        let Model { lm, tokenizer, .. } = self;
        let lm = lm.as_mut();
        lm.reset();
        let mut seq = Continuation::new(&request, tokenizer.as_ref());
        if params.hide_eos_text {
            seq = seq.without_eos_text();
        }
        let next = match seq.finish() {
            Some(_) => None,
            None => Some(next_token(lm, &mut seq, &request.prompt)?),
        };
        Ok(Generation { lm, seq, next, prompt_tokens: request.prompt.len() })
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
    /// (sized by [`ModelOptions::batch`]) with prefix caching and preemption. On the CPU
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
                sampling: self.sampling_for(params)?,
                stop: params.stop.clone(),
            });
        }
        self.run_batch(&batch, on_event)
    }

    /// The batch engine one step at a time, for a server: requests join between steps and a
    /// cancelled one frees its KV blocks at once ([`BatchSession`]). It holds the model until
    /// dropped; the KV cache is sized by [`ModelOptions::batch`].
    pub fn batch_session(&mut self) -> Result<BatchSession<'_, '_>, Error> {
        let options = self.batch;
        let Model { lm, tokenizer, .. } = self;
        let lm = lm.as_batch().ok_or(Error::Unsupported("this backend cannot run a batch"))?;
        Ok(BatchSession::new(lm, &options, tokenizer.as_ref())?)
    }

    /// [`Model::generate_batch`] of requests already in token ids; a request's error names its
    /// index ([`ModelError::Request`]).
    pub fn run_batch(
        &mut self,
        batch: &[Request],
        on_event: impl FnMut(BatchEvent<'_>),
    ) -> Result<(Vec<Completion>, BatchStats), Error> {
        let options = self.batch;
        let lm = self.lm.as_batch().ok_or(Error::Unsupported("this backend cannot run a batch"))?;
        Ok(generate_batch(lm, batch, &options, self.tokenizer.as_ref(), on_event)?)
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
    prompt_tokens: usize,
}

impl Generation<'_> {
    /// Tokens of the prompt (after tokenizing and, for a chat, the template).
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

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

/// The tokenizer [`Model::load`] uses: `path` if given (with the chat template of its folder,
/// else of `dir`), else the directory's tokenizer.json
/// (with its chat template) if there is one.
pub fn load_tokenizer(dir: &Path, path: Option<&Path>) -> Result<Option<Tokenizer>, Error> {
    Ok(match path {
        Some(path) => Some(Tokenizer::from_file_for(path, dir)?),
        None if smelt_runtime::files::exists(&dir.join("tokenizer.json")) => Some(Tokenizer::from_model_dir(dir)?),
        None => None,
    })
}
