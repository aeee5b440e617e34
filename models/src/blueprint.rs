//! A model directory read and checked without its weights: the config, the graphs each
//! backend runs, the EOS ids; with the checkpoint opened and validated against the graphs,
//! so that a backend reads weights only after everything that can be refused cheaply was.

use std::path::Path;

use smelt_ir::{DType, Graph, IrError};
use smelt_runtime::{weight_specs, Checkpoint, WeightSpec};

use crate::config::Qwen3Config;
use crate::engine::{LoadOptions, ModelError};
use crate::generation_config::GenerationConfig;
use crate::qwen3::{declare, DeclareOptions, Logits, Phase, LM_HEAD};

/// The three graphs a model runs.
#[derive(Clone)]
pub(crate) struct Graphs {
    pub(crate) prefill_all: Graph,
    pub(crate) prefill_last: Graph,
    pub(crate) decode: Graph,
}

impl Graphs {
    pub(crate) fn declare(cfg: &Qwen3Config, dtype: DType) -> Result<Graphs, IrError> {
        let opts = |phase, logits| DeclareOptions { phase, dtype, logits };
        Ok(Graphs {
            prefill_all: declare(cfg, opts(Phase::Prefill, Logits::AllPositions))?,
            prefill_last: declare(cfg, opts(Phase::Prefill, Logits::LastPosition))?,
            decode: declare(cfg, opts(Phase::Decode, Logits::LastPosition))?,
        })
    }

    pub(crate) fn all(&self) -> [&Graph; 3] {
        [&self.prefill_all, &self.prefill_last, &self.decode]
    }

    /// Each rank's graphs for a tensor-parallel group of `world` ranks (see
    /// [`smelt_passes::shard`]), from the declared (unfused) graphs.
    pub(crate) fn shard(&self, world: u32) -> Result<Vec<Graphs>, smelt_passes::ShardError> {
        let all = smelt_passes::shard(&self.prefill_all, world)?;
        let last = smelt_passes::shard(&self.prefill_last, world)?;
        let decode = smelt_passes::shard(&self.decode, world)?;
        Ok(all
            .into_iter()
            .zip(last)
            .zip(decode)
            .map(|((prefill_all, prefill_last), decode)| Graphs { prefill_all, prefill_last, decode })
            .collect())
    }

    /// Runs the standard pass pipeline over each graph.
    pub(crate) fn fuse(mut self) -> Result<Graphs, smelt_passes::PassError> {
        let pipeline = smelt_passes::pipeline::standard();
        for g in [&mut self.prefill_all, &mut self.prefill_last, &mut self.decode] {
            pipeline.run(g, "qwen3")?;
        }
        Ok(self)
    }
}

/// The graphs a GPU backend compiles, by what a step runs: see [`Blueprint::decode_graph`],
/// [`Blueprint::prefill_graph`] and [`Blueprint::batch_graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphKind {
    Decode,
    Prefill,
    Batch,
}

/// A model without its weights.
#[derive(Clone)]
pub struct Blueprint {
    pub(crate) config: Qwen3Config,
    pub(crate) dtype: DType,
    pub(crate) graphs: Graphs,
    /// Each rank's graphs of a tensor-parallel group (fused like `graphs`); empty for one rank.
    pub(crate) ranks: Vec<Graphs>,
    pub(crate) eos_token_ids: Vec<u32>,
    pub(crate) unused_tensors: Vec<String>,
}

/// [`Blueprint::open`]'s result: the blueprint, the checkpoint it was checked against, and the
/// checkpoint tensors (or slices of them) each rank's graphs read, before fusion joins any.
pub(crate) struct Opened {
    pub(crate) blueprint: Blueprint,
    pub(crate) checkpoint: Checkpoint,
    pub(crate) specs: Vec<Vec<WeightSpec>>,
}

impl Blueprint {
    /// Reads `dir/config.json` and `dir/generation_config.json` (optional), opens the
    /// checkpoint and checks every tensor the graphs read (name, shape, float dtype), and makes
    /// the graphs for `options.dtype` (fused unless `options.fuse` is off). Reads no weights.
    pub(crate) fn open(dir: &Path, options: LoadOptions) -> Result<Opened, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::NoDir(dir.to_path_buf()));
        }
        let config_path = dir.join("config.json");
        let config = Qwen3Config::from_file(&config_path)?;
        let checkpoint = Checkpoint::open(dir)?;
        crate::checkpoint_fit::check(&config, &checkpoint, &config_path.display().to_string())?;
        let graphs = Graphs::declare(&config, options.dtype)?;
        let ranks = if options.tensor_parallel > 1 { graphs.shard(options.tensor_parallel)? } else { Vec::new() };
        // Checked against the declared (primitive) graphs: the checkpoint's own tensor names
        // (each rank's slices of them).
        let specs: Vec<Vec<WeightSpec>> = match ranks.is_empty() {
            true => vec![weight_specs(&graphs.all())],
            false => ranks.iter().map(|r| weight_specs(&r.all())).collect(),
        };
        let unused_tensors = checkpoint.validate(&specs.concat(), Blueprint::ignored(&config))?;
        let graphs = if options.fuse { graphs.fuse()? } else { graphs };
        let ranks = ranks.into_iter().map(|r| if options.fuse { r.fuse() } else { Ok(r) }).collect::<Result<_, _>>()?;
        let mut eos_token_ids = GenerationConfig::load(dir, config.vocab_size)?.eos_token_ids.unwrap_or_default();
        if eos_token_ids.is_empty() {
            eos_token_ids = config.eos_token_ids.clone();
        }
        let blueprint = Blueprint { config, dtype: options.dtype, graphs, ranks, eos_token_ids, unused_tensors };
        Ok(Opened { blueprint, checkpoint, specs })
    }

    /// Checkpoint tensors a model may carry and not use: tied checkpoints may still carry
    /// lm_head.weight (the real 0.6B does).
    pub(crate) fn ignored(config: &Qwen3Config) -> &'static [&'static str] {
        if config.tie_word_embeddings {
            &[LM_HEAD]
        } else {
            &[]
        }
    }

    pub fn config(&self) -> &Qwen3Config {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The ranks of its tensor-parallel group (1: the whole model on one device).
    pub fn tensor_parallel(&self) -> u32 {
        self.ranks.len().max(1) as u32
    }

    /// Rank `rank`'s graph of `kind` (the whole model's for one rank).
    pub fn rank_graph(&self, rank: usize, kind: GraphKind) -> Option<&Graph> {
        let graphs = match self.ranks.is_empty() {
            true => (rank == 0).then_some(&self.graphs),
            false => self.ranks.get(rank),
        }?;
        Some(match kind {
            GraphKind::Decode => &graphs.decode,
            GraphKind::Prefill => &graphs.prefill_last,
            GraphKind::Batch => &graphs.prefill_all,
        })
    }

    /// The decode graph (fused unless loaded with `fuse: false`), which the GPU backend compiles.
    pub fn decode_graph(&self) -> &Graph {
        &self.graphs.decode
    }

    /// The graph of a batched decode step on the GPU: the all-positions prefill graph, its T
    /// rows taken as one new token each of T sequences (see `smelt_codegen::EmitOptions`).
    pub fn batch_graph(&self) -> &Graph {
        &self.graphs.prefill_all
    }

    /// The prefill graph a GPU backend runs prompts with: the last position's logits only
    /// (the lm_head reads row T - 1 of the final norm's output).
    pub fn prefill_graph(&self) -> &Graph {
        &self.graphs.prefill_last
    }

    /// Ids that end generation: `generation_config.json`'s, else `config.json`'s.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// Checkpoint tensors the model does not use (worth a warning).
    pub fn unused_tensors(&self) -> &[String] {
        &self.unused_tensors
    }

    /// The paged KV layout `budget_bytes` buys, from the decode graph's caches.
    pub fn kv_plan(&self, block_tokens: usize, budget_bytes: usize) -> Result<smelt_passes::kv::KvPlan, ModelError> {
        Ok(smelt_passes::kv::plan_kv(&self.graphs.decode, block_tokens, budget_bytes)?)
    }
}
