//! Subcommands. The forms documented in the README are a contract that outside checks rely on.

mod batch;
mod bench;
mod chat;
mod check;
mod compile;
mod generate;
mod kernels;
mod outputs;
mod tokenize;

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use smelt::ir::DType;

#[derive(Parser)]
#[command(name = "smelt", version, about = "Compile Qwen3 into a fused tensor graph and run it")]
pub struct Cli {
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
    /// Turn text into token ids (or ids back into text) with a tokenizer.json.
    Tokenize(tokenize::Args),
    /// Measure decode on the GPU: latency per token at several contexts, JIT time, memory,
    /// each next to its bandwidth floor measured on the same device.
    Bench(bench::Args),
    /// Run decode steps on the GPU kernel by kernel and compare every kernel's output with the
    /// CPU reference evaluator on the same operands.
    CheckKernels(check::Args),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Compile(a) => compile::run(a),
        Command::Logits(a) => generate::logits(a),
        Command::Generate(a) => generate::generate(a),
        Command::Chat(a) => chat::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Bench(a) => bench::run(a),
        Command::CheckKernels(a) => check::run(a),
    }
}

/// Where a model runs: the CPU reference backend, or an NVIDIA GPU (decode kernels through
/// NVRTC; prompts run one token per step until the prefill kernels exist).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

/// Options of the CUDA backend.
#[derive(clap::Args, Clone, Debug)]
pub struct CudaArgs {
    /// Tokens the GPU's KV cache holds (default: the model's context, at most 32768).
    #[arg(long)]
    kv_tokens: Option<usize>,
    /// Launch the decode step's kernels one by one instead of replaying a CUDA graph.
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
    /// Rows of a batched decode step to compile for (set by the commands that batch).
    #[arg(skip)]
    pub batch_rows: usize,
}

impl CudaArgs {
    fn options(&self, config: &smelt::models::Qwen3Config) -> smelt::runtime::cuda::DecoderOptions {
        let kv_tokens = self.kv_tokens.unwrap_or(config.max_position_embeddings.min(32768));
        smelt::runtime::cuda::DecoderOptions {
            cuda_graphs: !self.no_cuda_graphs,
            pdl: !self.no_pdl,
            prefill: self.gpu_prefill,
            batch_rows: self.batch_rows,
            ..smelt::runtime::cuda::DecoderOptions::new(kv_tokens)
        }
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

/// Parses `5,17,42` (spaces allowed) into ids.
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u32>() {
            Ok(id) => ids.push(id),
            Err(_) => bail!("{part:?} is not a token id (expected non-negative integers separated by commas)"),
        }
    }
    if ids.is_empty() {
        bail!("no token ids given");
    }
    Ok(ids)
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
