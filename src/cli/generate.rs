//! `smelt logits` and `smelt generate` on a Hugging Face model directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use smelt::ir::DType;
use smelt::models::{FinishReason, Qwen3Config, SamplingParams, Tokenizer};
use smelt::{Device, GenerateParams, Model, ModelOptions, Prompt};

use super::batch::{self, BatchArgs};
use super::outputs::{write_atomically, Reads};
use super::stats::RunClock;
use super::{model_dir_arg, token_ids, CudaArgs, DTypeArg, MemoryLimit, Numbers};

#[derive(clap::Args)]
pub struct LogitsArgs {
    /// A Hugging Face model directory (config.json, *.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Comma-separated prompt token ids, e.g. 5,17,42.
    #[arg(long, value_parser = token_ids)]
    prompt_ids: Numbers,
    /// Output safetensors file; holds `logits`, f32, [T, vocab].
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// A Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// The prompt as text (needs a tokenizer).
    #[arg(long, conflicts_with = "prompt_ids", required_unless_present_any = ["prompt_ids", "batch"])]
    prompt: Option<String>,
    /// The prompt as comma-separated token ids.
    #[arg(long, value_parser = token_ids)]
    prompt_ids: Option<Numbers>,
    /// Generate for every request of a JSON Lines file, batched: one object per line with
    /// "prompt", "prompt_ids" or "messages", and optionally its own "max_new_tokens",
    /// "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
    /// "seed" and "stop" (the flags are the defaults), and an "id" (any JSON value). Prints one
    /// JSON line per request as it finishes (its index, "id", finish_reason, prompt_tokens,
    /// completion_tokens, ids and text); --ids-out gets the id arrays in input order. On CUDA the batch shares the KV
    /// pool of --kv-tokens; in bf16 and f16 the decode steps of up to --max-batch sequences run
    /// as one batched step (not yet checked on a GPU), prompts one sequence at a time.
    #[arg(long, conflicts_with_all = ["prompt", "prompt_ids"])]
    batch: Option<PathBuf>,
    #[command(flatten)]
    batching: BatchArgs,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Stop when the generated text contains this string (not shown); may be repeated.
    #[arg(long)]
    stop: Vec<String>,
    /// Write the generated ids as a JSON array to this file.
    #[arg(long)]
    ids_out: Option<PathBuf>,
    /// Treat --prompt as one user turn, rendered with the model's chat template.
    #[arg(long)]
    chat: bool,
    /// With --chat (or "messages" in --batch): ask Qwen3 not to think (`enable_thinking=false`).
    #[arg(long)]
    no_think: bool,
    /// tokenizer.json to use instead of the model directory's.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
}

/// How the next token is chosen. A flag not given takes the model's recommended value from
/// its generation_config.json (when that sets `do_sample`), else greedy decoding's.
#[derive(clap::Args)]
pub struct SamplingArgs {
    /// 0 is greedy. [default: generation_config.json's, else 0]
    #[arg(long)]
    temperature: Option<f32>,
    /// Keep only the k most likely tokens (0: all). [default: generation_config.json's, else 0]
    #[arg(long)]
    top_k: Option<usize>,
    /// Keep the most likely tokens up to this much probability (1: all). [default:
    /// generation_config.json's, else 1]
    #[arg(long)]
    top_p: Option<f32>,
    /// Drop tokens less likely than this fraction of the most likely one (0: none). [default:
    /// generation_config.json's, else 0]
    #[arg(long)]
    min_p: Option<f32>,
    /// HF's repetition penalty over the prompt and output (1: off). [default:
    /// generation_config.json's, else 1]
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Subtracted from the logit of every token already generated (0: off). [default: 0]
    #[arg(long)]
    presence_penalty: Option<f32>,
    /// Seed for sampling at temperature > 0 (same seed, same output). [default: 0]
    #[arg(long)]
    seed: Option<u64>,
}

impl SamplingArgs {
    /// The sampling in force: `defaults` (the model's generation_config.json; greedy without)
    /// with each flag given in place of its field; checked, an error naming the flag as typed.
    pub fn params(&self, defaults: Option<&SamplingParams>) -> Result<SamplingParams> {
        let d = defaults.cloned().unwrap_or_default();
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            seed: self.seed.unwrap_or(d.seed),
        };
        if let Err(e) = params.validate() {
            bail!("--{}", e.replacen('_', "-", 2));
        }
        Ok(params)
    }

    /// Refuses the flags greedy decoding ignores, given while `sampling` (what is in force) is
    /// greedy, as Hugging Face warns of them: they would change nothing. (In a batch they are
    /// defaults for lines that may set a temperature, so a batch does not call this.)
    pub fn refuse_unused(&self, sampling: &SamplingParams) -> Result<()> {
        let sampling_only = [
            ("--top-k", self.top_k.is_some()),
            ("--top-p", self.top_p.is_some()),
            ("--min-p", self.min_p.is_some()),
            ("--seed", self.seed.is_some()),
        ];
        match sampling_only.iter().find(|(_, set)| *set) {
            Some((flag, _)) if sampling.temperature == 0.0 => {
                bail!("{flag} applies to sampling, and --temperature 0 is greedy: set --temperature above 0")
            }
            _ => Ok(()),
        }
    }
}

/// The sampling `dir`'s generation_config.json recommends (None: greedy), read before the
/// weights load.
pub fn sampling_defaults(dir: &Path) -> Result<Option<SamplingParams>> {
    let dir = model_dir_arg(dir)?;
    let config = Qwen3Config::from_file(&dir.join("config.json"))?;
    Ok(smelt::models::GenerationConfig::load(&dir, config.vocab_size)?.sampling)
}

/// One line saying which sampling is in force and where it came from.
pub fn describe_sampling(sampling: &SamplingParams, defaults: Option<&SamplingParams>) -> String {
    if sampling.temperature == 0.0 {
        return "sampling: greedy".into();
    }
    let SamplingParams { temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty, seed } = sampling;
    let mut line = format!("sampling: temperature {temperature}, top_k {top_k}, top_p {top_p}");
    for (name, value, off) in [
        ("min_p", min_p, 0.0),
        ("repetition_penalty", repetition_penalty, 1.0),
        ("presence_penalty", presence_penalty, 0.0),
    ] {
        if *value != off {
            line += &format!(", {name} {value}");
        }
    }
    line += &format!(", seed {seed}");
    if defaults.is_some() {
        line += " (generation_config.json's where no flag is given; --temperature 0 for greedy)";
    }
    line
}

/// Where and how `logits`, `generate` and `chat` run the model.
#[derive(clap::Args)]
pub struct BackendArgs {
    /// Where the model runs: the CPU reference backend, or an NVIDIA GPU through the generated
    /// kernels.
    #[arg(long, default_value_t, value_parser = super::device())]
    device: Device,
    /// Execution dtype (default: f32 on the CPU, bf16 on CUDA).
    #[arg(long, value_enum)]
    dtype: Option<DTypeArg>,
    /// Run the primitive graph instead of the fused one (CPU only).
    #[arg(long)]
    no_fuse: bool,
    /// Split the model over N tensor-parallel ranks (Megatron layout), each holding its slices
    /// of the weights and its share of the KV heads: a thread per rank on the CPU, a GPU per
    /// rank with --device cuda (devices 0..N, NCCL between them; needs libnccl).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    tensor_parallel: u32,
    #[command(flatten)]
    cuda: CudaArgs,
}

impl BackendArgs {
    /// The library's options for these flags.
    pub fn options(&self) -> ModelOptions {
        ModelOptions {
            device: self.device,
            dtype: self.dtype.map(DType::from),
            no_fuse: self.no_fuse,
            tensor_parallel: self.tensor_parallel,
            cuda: self.cuda.options(),
            ..ModelOptions::default()
        }
    }

    /// Flags that do nothing on the chosen device are refused, not ignored.
    pub fn check_flags(&self) -> Result<()> {
        if let Some(flag) = self.cuda.given().first().filter(|_| self.device == Device::Cpu) {
            bail!("{flag} applies to the GPU: add --device cuda");
        }
        if self.no_fuse && self.device == Device::Cuda {
            bail!("--no-fuse: the CUDA backend runs fused graphs only");
        }
        Ok(())
    }

    /// The memory a budget flag may ask for on the chosen device; on CUDA this probes the
    /// GPU, so a machine without one fails here, before any weights are loaded.
    pub fn memory_limit(&self) -> Result<Option<MemoryLimit>> {
        match self.device {
            Device::Cpu => Ok(MemoryLimit::host()),
            Device::Cuda => Ok(Some(MemoryLimit::gpu("--device cuda")?)),
        }
    }

    /// Loads the model in `dir` with `options` (made by [`BackendArgs::options`]) and the
    /// tokenizer the command already loaded. On CUDA the GPU is probed first.
    pub fn load(&self, dir: &Path, options: &ModelOptions, tokenizer: Option<Tokenizer>) -> Result<Model> {
        self.check_flags()?;
        let dir = model_dir_arg(dir)?;
        if self.device == Device::Cuda {
            MemoryLimit::gpu("--device cuda")?;
        }
        Model::load_with(&dir, options, tokenizer).map_err(|e| super::load_error(e, &dir))
    }
}

pub fn logits(a: LogitsArgs) -> Result<()> {
    Reads::new().model_dir(&a.model).check_output("--out", &a.out)?;
    let ids = a.prompt_ids.0.clone();
    let mut model = a.backend.load(&a.model, &a.backend.options(), None)?;
    let t0 = Instant::now();
    let logits = model.logits(&ids)?;
    tracing::info!("prefill of {} tokens in {:.2}s", ids.len(), t0.elapsed().as_secs_f64());
    let values = logits.f32s().context("logits are not f32")?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, logits.shape().to_vec(), &bytes)
        .context("building the logits tensor")?;
    let file = safetensors::serialize([("logits", view)], None).context("serializing logits")?;
    write_atomically(&a.out, &file)?;
    tracing::info!("wrote logits {:?} to {}", logits.shape(), a.out.display());
    Ok(())
}

fn tokenizer_for(a: &GenerateArgs) -> Result<Option<Tokenizer>> {
    Ok(smelt::load_tokenizer(&a.model, a.tokenizer.as_deref())?)
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    if let Some(path) = &a.ids_out {
        // Refused before any work: a file this command reads, or a folder it cannot write.
        let reads = Reads::new()
            .model_dir(&a.model)
            .maybe_file(a.tokenizer.as_deref(), "--tokenizer")
            .maybe_file(a.batch.as_deref(), "--batch");
        reads.check_output("--ids-out", path)?;
    }
    let defaults = sampling_defaults(&a.model)?;
    let sampling = a.sampling.params(defaults.as_ref())?;
    smelt::models::check_stops(&a.stop).map_err(|e| anyhow::anyhow!("--stop: {e}"))?;
    if let Some(flag) = a.batching.given().first().filter(|_| a.batch.is_none()) {
        bail!("{flag} applies to a batch: add --batch FILE.jsonl");
    }
    if a.no_think && !a.chat && a.batch.is_none() {
        bail!("--no-think applies to a chat: add --chat");
    }
    let tokenizer = tokenizer_for(&a)?;
    if let Some(path) = &a.batch {
        return generate_batch_file(&a, path, sampling, defaults.as_ref(), tokenizer);
    }
    a.sampling.refuse_unused(&sampling)?;
    if a.chat && a.prompt.is_none() {
        bail!("--chat takes the user's turn from --prompt TEXT (not --prompt-ids)");
    }
    check_tokenizer_for_prompt(&a, tokenizer.as_ref())?;
    let shows_text = tokenizer.is_some();
    let mut model = a.backend.load(&a.model, &a.backend.options(), tokenizer)?;
    let context = model.config().max_position_embeddings;
    tracing::info!("{}", describe_sampling(&sampling, defaults.as_ref()));
    let params = GenerateParams {
        max_new_tokens: a.max_new_tokens,
        sampling: Some(sampling),
        stop: a.stop.clone(),
        hide_eos_text: false,
    };
    let mut clock = RunClock::start();
    let mut generation = match (&a.prompt, &a.prompt_ids) {
        (_, Some(ids)) => model.generate(Prompt::Ids(&ids.0), &params)?,
        (Some(text), None) if a.chat => {
            let turn = [smelt::ChatMessage::new("user", text.as_str())];
            model.chat(&turn, a.no_think.then_some(false), &params)?
        }
        (Some(text), None) => model.generate(Prompt::Text(text), &params)?,
        (None, None) => unreachable!("clap requires --prompt or --prompt-ids"),
    };
    clock.prompt_done();
    let mut stdout = std::io::stdout().lock();
    let mut ids = Vec::new();
    for chunk in &mut generation {
        let chunk = chunk?;
        clock.token();
        ids.push(chunk.token);
        // Without a tokenizer, the ids are the text.
        let text = if shows_text { chunk.text } else { format!("{} ", chunk.token) };
        let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
    }
    let _ = writeln!(stdout);
    // The ids are the result; text that cannot be shown (an id past the tokenizer's vocabulary,
    // which a model's padded embedding table allows) is a warning, not a failed run.
    if let Some(e) = generation.warning() {
        tracing::warn!("not shown: {e}");
    }
    let finish = generation.finish_reason();
    tracing::info!("{}", clock.summary(generation.prompt_tokens(), finish.map_or("length", FinishReason::as_str)));
    // Generation ends at the context as it does at EOS, but the user asked for more: say so.
    if finish == Some(FinishReason::ContextFull) {
        tracing::info!(
            "note: stopped after {} of --max-new-tokens {}: the context ({context} tokens) is full",
            ids.len(),
            a.max_new_tokens
        );
    }
    if let Some(path) = &a.ids_out {
        write_atomically(path, serde_json::to_string(&ids)?.as_bytes())?;
    }
    Ok(())
}

/// `generate --batch FILE`: the requests read and checked, then the model loaded with the
/// batch engine's options.
fn generate_batch_file(
    a: &GenerateArgs,
    path: &Path,
    sampling: SamplingParams,
    defaults: Option<&SamplingParams>,
    tokenizer: Option<Tokenizer>,
) -> Result<()> {
    tracing::info!("{} (a line's own fields take precedence)", describe_sampling(&sampling, defaults));
    let batch_defaults = batch::Defaults {
        max_new_tokens: a.max_new_tokens,
        sampling,
        stop: &a.stop,
        chat: a.chat,
        enable_thinking: a.no_think.then_some(false),
    };
    let file = batch::read_requests(path, &batch_defaults, tokenizer.as_ref())?;
    a.backend.check_flags()?;
    if let Some(block) = a.batching.kv_block_tokens() {
        // Checked before the weights load: a block is at most the context.
        let config = Qwen3Config::from_file(&model_dir_arg(&a.model)?.join("config.json"))?;
        let context = config.max_position_embeddings;
        if block > context {
            bail!("--kv-block-tokens {block} is longer than the model's context ({context} tokens)");
        }
    }
    if let Some(limit) = a.backend.memory_limit()? {
        let bytes = a.batching.options().kv_budget_bytes as u64;
        limit.check(&format!("--kv-memory {}", super::size(bytes)), bytes)?;
    }
    // On CUDA, the batched decode step is compiled for the batch's width.
    let options = ModelOptions { batch: Some(a.batching.options()), ..a.backend.options() };
    let mut model = a.backend.load(&a.model, &options, tokenizer)?;
    batch::run(&mut model, &file, &a.batching, a.ids_out.as_deref())
}

/// What the prompt and stop strings need of the tokenizer, checked before the weights load.
fn check_tokenizer_for_prompt(a: &GenerateArgs, tokenizer: Option<&Tokenizer>) -> Result<()> {
    match tokenizer {
        None if a.prompt.is_some() => bail!(
            "--prompt needs a tokenizer: {} has no tokenizer.json (pass --tokenizer or --prompt-ids)",
            a.model.display()
        ),
        None if !a.stop.is_empty() => bail!(
            "--stop needs a tokenizer to see text: {} has no tokenizer.json (pass --tokenizer)",
            a.model.display()
        ),
        None => tracing::info!("note: no tokenizer.json in {}: streaming token ids", a.model.display()),
        Some(t) if a.chat && t.chat_template().is_none() => {
            bail!("--chat needs a chat template: {} has no tokenizer_config.json with one", a.model.display())
        }
        Some(_) => {}
    }
    Ok(())
}
