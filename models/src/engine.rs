//! Qwen3 on the CPU backend: loads a Hugging Face model directory, runs prefill and decode
//! steps over a KV cache, and generates.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::Rng as _;

use smelt_ir::{Collective, DType, EvalError, Graph, IrError, Tensor, WeightSlice, WEIGHT_CONCAT};
use smelt_runtime::{HostWeights, PagedKv, WeightError};

use crate::blueprint::{Blueprint, Graphs, Opened};
use crate::config::{ConfigError, Qwen3Config};
use crate::lm::{check_ids, CausalLm};
use crate::qwen3::{Logits, EMBED, LOGITS, POSITIONS, TOKEN_IDS};
use crate::ranks::{run_ranks, RankCpu, RankRun};
use smelt_runtime::progress::{Task, Unit};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model directory {0} does not exist")]
    NoDir(PathBuf),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("building the graph: {0}")]
    Ir(#[from] IrError),
    #[error("evaluating the graph: {0}")]
    Eval(#[from] EvalError),
    #[error("token id {id} is out of range: the vocabulary has {vocab} entries")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("{needed} positions do not fit the context of {max} (max_position_embeddings)")]
    ContextFull { needed: usize, max: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("{path}: {message}")]
    GenerationConfig { path: PathBuf, message: String },
    #[error("compiling the graph: {0}")]
    Pass(#[from] smelt_passes::PassError),
    #[error(transparent)]
    Shard(#[from] smelt_passes::ShardError),
    #[error(transparent)]
    Cuda(#[from] smelt_runtime::cuda::CudaError),
    #[error("the KV cache: {0}")]
    PagedKv(#[from] smelt_runtime::PagedKvError),
    #[error("the KV cache: {0}")]
    KvPlan(#[from] smelt_passes::kv::KvPlanError),
    #[error("request {index}: {source}")]
    Request { index: usize, source: Box<ModelError> },
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "up to {tokens} tokens (prompt + max new tokens) need {bytes} bytes of KV cache; the budget of {budget} bytes holds {capacity_tokens} tokens"
    )]
    KvTooSmall { tokens: usize, bytes: usize, capacity_tokens: usize, budget: usize },
    #[error("internal error: {0}")]
    Internal(String),
    #[error(
        "{parameters} parameters need at least {need} bytes of host memory ({bytes_per_parameter} each) while loading; this machine has {have} (MemTotal)"
    )]
    HostMemory { parameters: usize, bytes_per_parameter: u64, need: u64, have: u64 },
    #[error(
        "f16 overflow: {count} logits at position {position} are not finite (an activation left f16's range, ±65504); compute in bf16 or f32"
    )]
    F16Overflow { position: usize, count: usize },
    #[error(
        "{count} logits at position {position} are NaN or infinite: an activation overflowed or a weight is damaged"
    )]
    NonFiniteLogits { position: usize, count: usize },
}

/// How a model is loaded.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Execution dtype of weights, activations and the KV cache.
    pub dtype: DType,
    /// Run the fused graphs the pass pipeline makes (the default), or the primitive ones.
    pub fuse: bool,
    /// Ranks of a tensor-parallel group (1: none). On the CPU each rank is a thread holding
    /// its slices of the weights and its share of the KV heads.
    pub tensor_parallel: u32,
}

impl LoadOptions {
    pub fn new(dtype: DType) -> LoadOptions {
        LoadOptions { dtype, fuse: true, tensor_parallel: 1 }
    }
}

pub struct Qwen3Cpu {
    blueprint: Blueprint,
    /// One, or one per tensor-parallel rank.
    ranks: Vec<RankCpu>,
    position: usize,
}

impl Qwen3Cpu {
    /// Loads `dir/config.json`, `dir/generation_config.json` (optional) and the safetensors
    /// weights, validated against the graph before anything runs; computes in `dtype`.
    pub fn load(dir: &Path, dtype: DType) -> Result<Qwen3Cpu, ModelError> {
        Qwen3Cpu::load_with(dir, LoadOptions::new(dtype))
    }

    /// [`Qwen3Cpu::load`] with every option.
    /// Reports the load (and any tensor the model does not use) as `tracing` events.
    pub fn load_with(dir: &Path, options: LoadOptions) -> Result<Qwen3Cpu, ModelError> {
        let started = std::time::Instant::now();
        let dtype = options.dtype;
        let Opened { blueprint, checkpoint, specs } = Blueprint::open(dir, options)?;
        // Weights stay in 16 bits when the checkpoint or the execution dtype has them so (a
        // missing or odd embedding was reported with everything else by the weight checks).
        let stored = checkpoint.dtype(EMBED).unwrap_or(DType::F32);
        let kept = if dtype == DType::F32 { stored } else { dtype };
        check_host_memory(&blueprint.config, kept.size_bytes() as u64)?;
        let ignored = Blueprint::ignored(&blueprint.config);
        let mut weights = Vec::new();
        for specs in &specs {
            let loaded = checkpoint.load_all(specs, ignored, dtype)?;
            weights.push(HostWeights::from_map(loaded.tensors.into_iter().collect()));
        }
        let model = Qwen3Cpu::assemble(blueprint, weights)?;
        crate::report::rank_weights(&model.rank_weights().map(HostWeights::bytes).collect::<Vec<_>>());
        crate::report::loaded(dir, model.blueprint(), started);
        Ok(model)
    }

    /// The model from its blueprint and each rank's checkpoint tensors (or slices), which are
    /// joined as the fused graphs read them.
    fn assemble(blueprint: Blueprint, weights: Vec<HostWeights>) -> Result<Qwen3Cpu, ModelError> {
        let graphs = match blueprint.ranks.is_empty() {
            true => vec![blueprint.graphs.clone()],
            false => blueprint.ranks.clone(),
        };
        let mut ranks = Vec::new();
        for (graphs, mut weights) in graphs.into_iter().zip(weights) {
            weights.prepare_for(&graphs.all())?;
            ranks.push(RankCpu::new(graphs, weights));
        }
        Ok(Qwen3Cpu { blueprint, ranks, position: 0 })
    }

    /// A model with seeded random weights (uniform in ±0.05, norm weights 1): for benchmarks
    /// and tests that need the real shapes but not a checkpoint.
    pub fn with_random_weights(config: Qwen3Config, options: LoadOptions, seed: u64) -> Result<Qwen3Cpu, ModelError> {
        // Random weights are made in f32 whatever the dtype.
        check_host_memory(&config, 4)?;
        let dtype = options.dtype;
        let graphs = Graphs::declare(&config, dtype)?;
        let world = options.tensor_parallel;
        let ranks = if world > 1 { graphs.shard(world)? } else { Vec::new() };
        let mut rng = crate::sample::seeded_rng(seed);
        let mut weights = HashMap::new();
        for spec in smelt_runtime::weight_specs(&graphs.all()) {
            let n: usize = spec.shape.iter().product();
            let values: Vec<f32> = if spec.name.ends_with("norm.weight") {
                vec![1.0; n]
            } else {
                (0..n).map(|_| (rng.random::<f32>() - 0.5) * 0.1).collect()
            };
            weights.insert(spec.name, Tensor::from_f32(dtype, spec.shape, values));
        }
        let eos_token_ids = config.eos_token_ids.clone();
        // Each rank's slices of the whole tensors.
        let rank_weights = match ranks.is_empty() {
            true => vec![HostWeights::from_map(weights)],
            false => ranks.iter().map(|r| sliced_weights(&weights, &r.all())).collect::<Result<_, _>>()?,
        };
        let fuse = |g: Graphs| if options.fuse { g.fuse() } else { Ok(g) };
        let graphs = fuse(graphs)?;
        let ranks = ranks.into_iter().map(fuse).collect::<Result<_, _>>()?;
        let blueprint = Blueprint { config, dtype, graphs, ranks, eos_token_ids, unused_tensors: Vec::new() };
        Qwen3Cpu::assemble(blueprint, rank_weights)
    }

    /// The model without its weights: config, graphs, EOS ids.
    pub fn blueprint(&self) -> &Blueprint {
        &self.blueprint
    }

    pub fn config(&self) -> &Qwen3Config {
        &self.blueprint.config
    }

    /// The weights, in the execution dtype, shaped for the graphs (concatenations made); rank
    /// 0's slices of them under tensor parallelism.
    pub fn host_weights(&self) -> &HostWeights {
        &self.ranks[0].run.weights
    }

    /// Each rank's weights (one entry without tensor parallelism).
    pub fn rank_weights(&self) -> impl Iterator<Item = &HostWeights> {
        self.ranks.iter().map(|r| &r.run.weights)
    }

    pub fn dtype(&self) -> DType {
        self.blueprint.dtype
    }

    /// Ids that end generation: `generation_config.json`'s, else `config.json`'s.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.blueprint.eos_token_ids
    }

    /// The sequence's KV caches by graph input name, `[tokens, KV heads, head dim]` each
    /// (empty before the first token); rank 0's heads under tensor parallelism.
    pub fn kv_caches(&self) -> &HashMap<String, Tensor> {
        self.ranks[0].run.state.values()
    }

    /// Each rank's KV caches, in rank order (one entry without tensor parallelism).
    pub fn rank_kv_caches(&self) -> impl Iterator<Item = &HashMap<String, Tensor>> {
        self.ranks.iter().map(|r| r.run.state.values())
    }

    /// Tokens in the KV cache.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Starts a new sequence.
    pub fn reset(&mut self) {
        for rank in &mut self.ranks {
            rank.run.state.reset();
        }
        self.position = 0;
    }

    /// Appends `ids` to the sequence and returns f32 logits: `[ids.len(), vocab]` for
    /// `AllPositions`, `[1, vocab]` for `LastPosition`.
    pub fn forward(&mut self, ids: &[u32], logits: Logits) -> Result<Tensor, ModelError> {
        check_ids(&self.blueprint.config, self.position, ids)?;
        let needed = self.position + ids.len();
        let pick: fn(&Graphs) -> &Graph = match (ids.len(), logits) {
            (1, Logits::LastPosition) => |g| &g.decode,
            (_, Logits::LastPosition) => |g| &g.prefill_last,
            (_, Logits::AllPositions) => |g| &g.prefill_all,
        };
        let inputs = step_inputs(ids, self.position);
        // A long prompt takes seconds on the CPU: its progress through the graph's nodes (shown
        // for one rank; a group's ranks advance together).
        let nodes = pick(&self.ranks[0].graphs).node_count() as u64;
        let one_rank = self.ranks.len() == 1;
        let task =
            (one_rank && ids.len() >= crate::lm::LONG_PROMPT).then(|| Task::begin("prompt", nodes, Unit::Fraction));
        let step = |rank: &mut RankRun, graph: &Graph, inputs, group: Option<&dyn Collective>| {
            let mut advance = || task.iter().for_each(|t| t.advance(1));
            crate::ranks::sequence_step(rank, graph, inputs, group, &mut advance)
        };
        let mut out = run_ranks(&mut self.ranks, pick, inputs, &step)?;
        let logits = out.remove(LOGITS).expect("the graph outputs logits");
        // A row per new token, or the last one's only.
        let first_row = if logits.shape()[0] == ids.len() { self.position } else { needed - 1 };
        check_finite_logits(&logits, first_row)?;
        self.position = needed;
        Ok(logits)
    }

    /// The paged KV layout `budget_bytes` buys, from the decode graph's caches.
    pub fn kv_plan(&self, block_tokens: usize, budget_bytes: usize) -> Result<smelt_passes::kv::KvPlan, ModelError> {
        self.blueprint.kv_plan(block_tokens, budget_bytes)
    }

    /// Makes a paged KV pool of `blocks` blocks for [`Qwen3Cpu::forward_paged`]; blocks take
    /// memory when first written.
    pub fn allocate_paged(&mut self, blocks: usize, block_tokens: usize) -> Result<(), ModelError> {
        for rank in &mut self.ranks {
            rank.run.paged = Some(PagedKv::for_graph(&rank.graphs.decode, blocks, block_tokens)?);
        }
        Ok(())
    }

    /// Runs `ids` after `start` tokens whose KV is in the blocks `table` lists (of the pool
    /// [`Qwen3Cpu::allocate_paged`] made), writing theirs after it; returns the f32 logits of
    /// the last position. The single-sequence state ([`Qwen3Cpu::forward`]) is untouched.
    pub fn forward_paged(&mut self, ids: &[u32], start: usize, table: &[u32]) -> Result<Tensor, ModelError> {
        check_ids(&self.blueprint.config, start, ids)?;
        let pick: fn(&Graphs) -> &Graph = if ids.len() == 1 { |g| &g.decode } else { |g| &g.prefill_last };
        let step = |rank: &mut RankRun, graph: &Graph, inputs, group: Option<&dyn Collective>| {
            let paged = rank.paged.as_mut().ok_or_else(|| ModelError::Internal("no paged KV pool allocated".into()))?;
            Ok(paged.run_rank(graph, &rank.weights, inputs, table, start, group)?)
        };
        let mut out = run_ranks(&mut self.ranks, pick, step_inputs(ids, start), &step)?;
        let logits = out.remove(LOGITS).expect("the graph outputs logits");
        check_finite_logits(&logits, start + ids.len() - 1)?;
        Ok(logits)
    }
}

/// Logits `[rows, vocab]` whose first row is at `first_row` must be finite: NaN or inf would
/// make greedy decoding print token 0 forever.
fn check_finite_logits(logits: &Tensor, first_row: usize) -> Result<(), ModelError> {
    let values = logits.f32s().expect("logits are f32");
    let vocab = logits.shape().last().copied().unwrap_or(1).max(1);
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(at) => {
            let row = &values[at / vocab * vocab..(at / vocab + 1) * vocab];
            let count = row.iter().filter(|v| !v.is_finite()).count();
            Err(ModelError::NonFiniteLogits { position: first_row + at / vocab, count })
        }
    }
}

/// The host holds every weight as f32 while loading (4 bytes a parameter, whatever the
/// checkpoint's dtype): a model that needs more than the machine's memory is refused here,
/// before anything is allocated, instead of ending in the out-of-memory killer.
/// Refuses a model whose weights, `bytes_per_parameter` each as the host keeps them, cannot fit
/// this machine's memory, before any is read.
fn check_host_memory(config: &Qwen3Config, bytes_per_parameter: u64) -> Result<(), ModelError> {
    let Some(have) = smelt_runtime::files::host_memory_bytes() else { return Ok(()) };
    let parameters = config.parameter_count();
    let need = (parameters as u64).saturating_mul(bytes_per_parameter);
    if need > have {
        return Err(ModelError::HostMemory { parameters, bytes_per_parameter, need, have });
    }
    Ok(())
}

/// One rank's weights: the slices its `graphs` name, cut from the whole tensors `whole`.
fn sliced_weights(whole: &HashMap<String, Tensor>, graphs: &[&Graph]) -> Result<HostWeights, ModelError> {
    let mut tensors = HashMap::new();
    for spec in smelt_runtime::weight_specs(graphs) {
        for part in spec.name.split(WEIGHT_CONCAT) {
            let (base, slice) = WeightSlice::parse(part);
            let t = whole.get(base).ok_or_else(|| ModelError::Internal(format!("no weight {base}")))?;
            let t = match slice {
                Some(s) => t.slice_along(s.axis, s.start..s.end),
                None => t.clone(),
            };
            tensors.insert(part.to_string(), t);
        }
    }
    Ok(HostWeights::from_map(tensors))
}

/// The token ids and positions of `ids` appended after `start` tokens.
fn step_inputs(ids: &[u32], start: usize) -> HashMap<String, Tensor> {
    let n = ids.len();
    let positions = (start..start + n).map(|p| p as i32).collect();
    HashMap::from([
        (TOKEN_IDS.to_string(), Tensor::from_i32(vec![n], ids.iter().map(|&i| i as i32).collect())),
        (POSITIONS.to_string(), Tensor::from_i32(vec![n], positions)),
    ])
}

impl CausalLm for Qwen3Cpu {
    fn config(&self) -> &Qwen3Config {
        Qwen3Cpu::config(self)
    }

    fn eos_token_ids(&self) -> &[u32] {
        Qwen3Cpu::eos_token_ids(self)
    }

    fn position(&self) -> usize {
        Qwen3Cpu::position(self)
    }

    fn reset(&mut self) {
        Qwen3Cpu::reset(self)
    }

    fn forward(&mut self, ids: &[u32], logits: Logits) -> Result<Tensor, ModelError> {
        Qwen3Cpu::forward(self, ids, logits)
    }

    fn as_batch(&mut self) -> Option<&mut dyn crate::batch::BatchLm> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_larger_than_the_host_is_refused_before_allocating() {
        // A 16M-entry vocabulary of width 16384: 2^38 parameters, 1 TiB as f32.
        let mut config = Qwen3Config::qwen3_0_6b();
        config.vocab_size = 1 << 24;
        config.hidden_size = 1 << 14;
        let e = Qwen3Cpu::with_random_weights(config, LoadOptions::new(DType::BF16), 0).err().expect("refused");
        assert!(matches!(e, ModelError::HostMemory { .. }), "{e}");
        assert!(e.to_string().contains("host memory"), "{e}");
    }
}
