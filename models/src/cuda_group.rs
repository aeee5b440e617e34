//! Qwen3 over a tensor-parallel group of GPUs, one rank per device (`--device cuda
//! --tensor-parallel N`): each rank's fused graphs compiled for its device, its weight slices
//! streamed from the mapped checkpoint (never the whole tensor), the exchanges as NCCL
//! collectives inside each device's captured decode step. One sequence at a time: batched
//! decode needs the logits gathered for many rows, which the group does not do yet.

use std::path::Path;

use smelt_ir::{DType, Tensor};
use smelt_runtime::cuda::{CudaError, DecoderGraphs, DecoderOptions, Gpu, GroupDecoder, StepOutput};

use crate::blueprint::{Blueprint, GraphKind};
use crate::config::Qwen3Config;
use crate::cuda_engine::{OneSequence, SequenceDecoder};
use crate::engine::{LoadOptions, ModelError};
use crate::lm::CausalLm;
use crate::qwen3::Logits;

pub struct Qwen3CudaGroup {
    /// Config, every rank's graphs and EOS ids; the weights are on the devices only.
    blueprint: Blueprint,
    group: GroupDecoder,
}

impl Qwen3CudaGroup {
    /// Loads `dir` in `dtype` split over `world` ranks on devices 0..world: checks the config
    /// and the checkpoint as the CPU backend does, shards and fuses the graphs, opens every
    /// device and the NCCL communicators before reading any weight, then streams each rank's
    /// slices to its device.
    pub fn load(dir: &Path, dtype: DType, world: u32, options: &DecoderOptions) -> Result<Qwen3CudaGroup, ModelError> {
        let started = std::time::Instant::now();
        if world < 2 {
            return Err(ModelError::BadRequest(format!("a tensor-parallel group of {world} GPUs (use 2 or more)")));
        }
        let gpus = (0..world as usize)
            .map(|r| match Gpu::open(r) {
                Err(CudaError::NoDevice { count, .. }) => Err(ModelError::BadRequest(format!(
                    "--tensor-parallel {world} needs {world} GPUs, one per rank; this machine has {count}"
                ))),
                other => other.map_err(ModelError::from),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let opened = Blueprint::open(dir, LoadOptions { dtype, fuse: true, tensor_parallel: world })?;
        let blueprint = opened.blueprint;
        let mut graphs = Vec::with_capacity(world as usize);
        for r in 0..world as usize {
            let graph =
                |kind| blueprint.rank_graph(r, kind).ok_or_else(|| ModelError::Internal(format!("no rank {r}")));
            let prefill = if options.prefill { Some(graph(GraphKind::Prefill)?) } else { None };
            graphs.push(DecoderGraphs { decode: graph(GraphKind::Decode)?, prefill, batch: None });
        }
        let group = GroupDecoder::new(gpus, &graphs, &opened.checkpoint, options)?;
        for r in 0..group.world() {
            crate::report::compiled(group.rank(r).expect("a rank of the group"));
        }
        crate::report::loaded(dir, &blueprint, started);
        Ok(Qwen3CudaGroup { blueprint, group })
    }

    pub fn world(&self) -> usize {
        self.group.world()
    }

    fn one_sequence(&mut self) -> OneSequence<'_, GroupDecoder> {
        OneSequence { blueprint: &self.blueprint, decoder: &mut self.group }
    }
}

impl SequenceDecoder for GroupDecoder {
    fn position(&self) -> usize {
        GroupDecoder::position(self)
    }

    fn capacity(&self) -> usize {
        GroupDecoder::capacity(self)
    }

    fn has_prefill(&self) -> bool {
        GroupDecoder::has_prefill(self)
    }

    fn step(&mut self, token: u32, want_logits: bool) -> Result<StepOutput, CudaError> {
        GroupDecoder::step(self, token, want_logits)
    }

    fn prefill(&mut self, tokens: &[u32], want_logits: bool) -> Result<StepOutput, CudaError> {
        GroupDecoder::prefill(self, tokens, want_logits)
    }
}

impl CausalLm for Qwen3CudaGroup {
    fn config(&self) -> &Qwen3Config {
        self.blueprint.config()
    }

    fn eos_token_ids(&self) -> &[u32] {
        self.blueprint.eos_token_ids()
    }

    fn position(&self) -> usize {
        self.group.position()
    }

    fn reset(&mut self) {
        self.group.reset()
    }

    fn forward(&mut self, ids: &[u32], logits: Logits) -> Result<Tensor, ModelError> {
        self.one_sequence().forward(ids, logits)
    }

    fn forward_greedy(&mut self, ids: &[u32]) -> Result<u32, ModelError> {
        self.one_sequence().forward_greedy(ids)
    }
}
