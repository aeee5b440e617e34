//! Subcommands. The forms documented in the README are a contract that outside checks rely on.

mod batch;
mod bench;
mod bench_serve;
mod chat;
mod chat_input;
mod check;
mod check_ranks;
mod compile;
mod compile_tp;
mod generate;
mod kernels;
pub mod log;
mod outputs;
mod progress;
mod random_model;
mod serve;
mod stats;
mod tokenize;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use smelt::ir::DType;

#[derive(Parser)]
#[command(name = "smelt", version, about = "Compile Qwen3 into a fused tensor graph and run it")]
pub struct Cli {
    /// Only warnings and errors on stderr: no progress bars, timings or statistics
    /// (`SMELT_LOG` still chooses the log lines when set).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Declare the model as a graph, fuse it, plan its memory and generate its decode kernels;
    /// print a summary (no weights, no GPU needed).
    Compile(compile::Args),
    /// Run one prefill and write the logits at every prompt position to a safetensors file.
    Logits(generate::LogitsArgs),
    /// Generate text from a prompt (or a batch of them), streaming it to stdout.
    Generate(generate::GenerateArgs),
    /// Chat with a model interactively: history, streaming replies, /reset, --no-think.
    Chat(chat::Args),
    /// Serve the model over HTTP with OpenAI's API (chat, completions, streaming), every
    /// request joining one continuous batch.
    Serve(serve::Args),
    /// Benchmark a running OpenAI-compatible server: request throughput, output tokens/s, TTFT
    /// and inter-token latency percentiles at several concurrencies.
    BenchServe(bench_serve::Args),
    /// Write a Qwen3 model directory with random weights (tiny or a published shape): runs
    /// every other command without a download.
    RandomModel(random_model::Args),
    /// Turn text into token ids (or ids back into text) with a tokenizer.json.
    Tokenize(tokenize::Args),
    /// Measure decode on the GPU: latency per token at several contexts, JIT time, memory,
    /// each next to its bandwidth floor measured on the same device.
    Bench(bench::Args),
    /// Run decode steps on the GPU kernel by kernel and compare every kernel's output with the
    /// CPU reference evaluator on the same operands.
    CheckKernels(check::Args),
}

/// The command line, parsed. Every subcommand reads `-1` as a value (a flag's parser then
/// refuses it by name), not as an unknown flag; `-inf` and `-nan` too.
pub fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let args = negative_specials_joined(std::env::args_os().collect());
    let matches = Cli::command().mut_subcommands(|s| s.allow_negative_numbers(true)).get_matches_from(args);
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// `--flag -inf` as `--flag=-inf`: clap takes `-1` for a number but `-inf`, `-nan` and
/// `-infinity` for short flags (`-i`); joined, the flag's own parser refuses them by name.
fn negative_specials_joined(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let special = |a: &std::ffi::OsString| {
        a.to_str().is_some_and(|s| ["-inf", "-infinity", "-nan"].contains(&s.to_ascii_lowercase().as_str()))
    };
    let mut out: Vec<std::ffi::OsString> = Vec::with_capacity(args.len());
    for arg in args {
        let joinable = out.last().and_then(|f| f.to_str()).is_some_and(|f| f.starts_with("--") && !f.contains('='));
        if special(&arg) && joinable {
            let mut joined = out.pop().unwrap_or_default();
            joined.push("=");
            joined.push(&arg);
            out.push(joined);
        } else {
            out.push(arg);
        }
    }
    out
}

pub fn run(cli: Cli) -> Result<()> {
    log::init(cli.quiet)?;
    progress::install(cli.quiet);
    match cli.command {
        Command::Compile(a) => compile::run(a),
        Command::Logits(a) => generate::logits(a),
        Command::Generate(a) => generate::generate(a),
        Command::Chat(a) => chat::run(a),
        Command::Serve(a) => serve::run(a),
        Command::BenchServe(a) => bench_serve::run(a),
        Command::RandomModel(a) => random_model::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Bench(a) => bench::run(a),
        Command::CheckKernels(a) => check::run(a),
    }
}

/// `--device`: where a model runs ([`smelt::Device`]), listed in `--help`.
pub fn device() -> impl clap::builder::TypedValueParser<Value = smelt::Device> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["cpu", "cuda"]).try_map(|s| s.parse::<smelt::Device>())
}

/// Options of the CUDA backend, as flags ([`smelt::CudaOptions`]).
#[derive(clap::Args, Clone, Debug)]
pub struct CudaArgs {
    /// Tokens the GPU's KV cache holds (default: the model's context, at most 32768).
    #[arg(long, value_parser = at_least_one())]
    kv_tokens: Option<usize>,
    /// Launch the decode and batched steps' kernels one by one instead of replaying CUDA graphs.
    #[arg(long)]
    no_cuda_graphs: bool,
    /// Launch without programmatic dependent launch (Hopper lets a kernel start while the
    /// previous one finishes).
    #[arg(long)]
    no_pdl: bool,
    /// Run prompts through the prefill kernels (tensor-core GEMM, prefill attention) instead
    /// of one decode step per token. Experimental: not yet checked on a GPU.
    #[arg(long)]
    gpu_prefill: bool,
    #[command(flatten)]
    pub variants: VariantArgs,
}

/// The A/B twins of the kernel variants (`smelt::codegen::Variants`), each a flag that turns
/// one off.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct VariantArgs {
    /// Prefill and batched GEMMs never split K among blocks (the A/B variant; by default a
    /// GEMM with few output tiles does).
    #[arg(long)]
    pub no_split_k: bool,
    /// Decode attention runs as a split kernel and a combine kernel (the A/B variant; by
    /// default the last split of each KV head merges them).
    #[arg(long)]
    pub no_merged_attention: bool,
    /// Decode GEMVs prefetch the weight rows they read into L2 before waiting for the previous
    /// kernel (the A/B variant; off by default until measured).
    #[arg(long)]
    pub l2_prefetch: bool,
    /// A kernel per fused op: q's norm + RoPE, k's norm + RoPE and append, v's append, and the
    /// greedy token's argmax each on its own (the A/B variant; by default the first three run
    /// as one kernel over the row's heads, and the lm_head GEMV computes the argmax).
    #[arg(long)]
    pub no_co_launch: bool,
    /// Prefill and batched steps of at most N new tokens (or sequences) run each matmul as a
    /// GEMV over their rows instead of the tensor-core GEMM; fewer where a matmul's K leaves
    /// shared memory for fewer rows (the A/B variant: 0 always runs the GEMM) [default: 4]
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=8))]
    pub gemv_rows: Option<usize>,
}

impl VariantArgs {
    pub fn variants(&self) -> smelt::codegen::Variants {
        smelt::codegen::Variants {
            split_k: !self.no_split_k,
            merged_attention: !self.no_merged_attention,
            l2_prefetch: self.l2_prefetch,
            co_launch: !self.no_co_launch,
            gemv_rows: self.gemv_rows.unwrap_or(smelt::codegen::GEMV_ROWS),
        }
    }

    fn given(&self) -> [(&'static str, bool); 5] {
        [
            ("--no-split-k", self.no_split_k),
            ("--no-merged-attention", self.no_merged_attention),
            ("--l2-prefetch", self.l2_prefetch),
            ("--no-co-launch", self.no_co_launch),
            ("--gemv-rows", self.gemv_rows.is_some()),
        ]
    }
}

impl CudaArgs {
    /// The CUDA-only flags given (each is an error on the CPU).
    pub fn given(&self) -> Vec<&'static str> {
        let flags = [
            ("--kv-tokens", self.kv_tokens.is_some()),
            ("--no-cuda-graphs", self.no_cuda_graphs),
            ("--no-pdl", self.no_pdl),
            ("--gpu-prefill", self.gpu_prefill),
        ];
        flags.into_iter().chain(self.variants.given()).filter(|(_, set)| *set).map(|(flag, _)| flag).collect()
    }

    pub fn options(&self) -> smelt::CudaOptions {
        smelt::CudaOptions {
            kv_tokens: self.kv_tokens,
            no_cuda_graphs: self.no_cuda_graphs,
            no_pdl: self.no_pdl,
            prefill: self.gpu_prefill,
            variants: self.variants.variants(),
        }
    }
}

/// An error of [`smelt::Model::load`] for the command line: a KV cache too large for the GPU
/// names `--kv-tokens`; anything else names the directory.
pub fn load_error(e: smelt::Error, dir: &std::path::Path) -> anyhow::Error {
    match e {
        e @ smelt::Error::KvCacheTooLarge { .. } => anyhow::Error::new(e).context("--kv-tokens"),
        e => anyhow::Error::new(e).context(format!("loading {}", dir.display())),
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DTypeArg {
    F32,
    Bf16,
    F16,
}

impl From<DTypeArg> for DType {
    fn from(d: DTypeArg) -> DType {
        match d {
            DTypeArg::F32 => DType::F32,
            DTypeArg::Bf16 => DType::BF16,
            DTypeArg::F16 => DType::F16,
        }
    }
}

/// The most memory a budget may ask for: the host's on the CPU, the GPU's on CUDA.
pub struct MemoryLimit {
    bytes: u64,
    what: String,
}

impl MemoryLimit {
    /// This machine's memory, where the OS says (`None` elsewhere: nothing to check against).
    pub fn host() -> Option<MemoryLimit> {
        let bytes = smelt::runtime::files::host_memory_bytes()?;
        Some(MemoryLimit { bytes, what: "this machine's memory (MemTotal in /proc/meminfo)".into() })
    }

    /// Probes the GPU (within a second, allocating nothing) for its memory; the error says
    /// which command needed it, never a flag the user did not pass.
    pub fn gpu(command: &str) -> Result<MemoryLimit> {
        let info = smelt::runtime::cuda::probe(0).with_context(|| format!("{command} needs an NVIDIA GPU"))?;
        Ok(MemoryLimit { bytes: info.total_bytes as u64, what: format!("the memory of {}", info.name) })
    }

    /// `bytes` asked for by `flag` fits.
    pub fn check(&self, flag: &str, bytes: u64) -> Result<()> {
        if bytes > self.bytes {
            bail!("{flag} is more than {}: {} ({} bytes)", self.what, size(self.bytes), self.bytes);
        }
        Ok(())
    }
}

/// `2.00 GiB`, `48.0 KiB`, `512 B`.
pub fn size(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        _ if bytes >= 1 << 30 => format!("{:.2} GiB", b / 1073741824.0),
        _ if bytes >= 1 << 20 => format!("{:.2} MiB", b / 1048576.0),
        _ if bytes >= 1 << 10 => format!("{:.1} KiB", b / 1024.0),
        _ => format!("{bytes} B"),
    }
}

/// Writes `text` to stdout. A reader that has gone away (`smelt compile | head`) ends the
/// output quietly: `print!` would panic on the broken pipe.
pub fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.context("writing to stdout"),
    }
}

/// In decimal units, as bandwidths are given: `1.192 GB`, `37.50 MB`, `197.6 KB`, `512 B`.
pub fn decimal_size(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        1_000_000_000.. => format!("{:.3} GB", b / 1e9),
        1_000_000.. => format!("{:.2} MB", b / 1e6),
        1_000.. => format!("{:.1} KB", b / 1e3),
        _ => format!("{bytes} B"),
    }
}

/// `1 layer`, `28 layers`: `n` and a noun made plural with an `s` unless `n` is 1.
pub fn plural(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// A count that must be at least 1, as a clap value parser (the error names the flag).
pub fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// The most sequences a batched step runs (`--max-batch`, `bench --batch`, `check-kernels
/// --batch`); vLLM's default is 256.
pub const MAX_BATCH: u64 = 4096;

/// Refuses a value of `flag` above `max`, saying what `max` is.
pub fn at_most(flag: &str, values: &[u32], max: usize, what: &str) -> Result<()> {
    match values.iter().find(|&&v| v as usize > max) {
        Some(v) => bail!("{flag} {v} is more than {what} ({max})"),
        None => Ok(()),
    }
}

/// A comma-separated list of non-negative integers (`5,17,42`, spaces allowed): token ids,
/// contexts, lengths. Parsed by clap, so an error names the flag.
#[derive(Clone, Debug)]
pub struct Numbers(pub Vec<u32>);

/// The value parser of [`Numbers`] for counts and lengths.
pub fn numbers(s: &str) -> Result<Numbers, String> {
    list_of(s, "a non-negative integer", "numbers")
}

/// The value parser of [`Numbers`] for token ids.
pub fn token_ids(s: &str) -> Result<Numbers, String> {
    list_of(s, "a token id", "token ids")
}

fn list_of(s: &str, one: &str, many: &str) -> Result<Numbers, String> {
    let mut values = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u32>() {
            Ok(v) => values.push(v),
            Err(_) => {
                return Err(format!("{part:?} is not {one} (expected non-negative integers separated by commas)"))
            }
        }
    }
    if values.is_empty() {
        return Err(format!("no {many} given"));
    }
    Ok(Numbers(values))
}

pub fn model_dir_arg(dir: &std::path::Path) -> Result<PathBuf> {
    if !dir.exists() {
        bail!("model directory {} does not exist", dir.display());
    }
    if !dir.is_dir() {
        bail!("{} is not a directory (expected a Hugging Face model directory)", dir.display());
    }
    Ok(dir.to_path_buf())
}
