//! Subcommands. The forms documented in the README are a contract that outside checks rely on.

mod compile;
mod generate;
mod io;
mod kernels;
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
    /// Generate text from a prompt, streaming it to stdout.
    Generate(generate::GenerateArgs),
    /// Turn text into token ids (or ids back into text) with a tokenizer.json.
    Tokenize(tokenize::Args),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Compile(a) => compile::run(a),
        Command::Logits(a) => generate::logits(a),
        Command::Generate(a) => generate::generate(a),
        Command::Tokenize(a) => tokenize::run(a),
    }
}

/// Where a model runs. Only the CPU reference backend exists so far.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

impl Device {
    fn require_cpu(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda => bail!("--device cuda: the CUDA backend is not built yet; use --device cpu"),
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
