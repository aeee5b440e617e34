//! Qwen3 on the GPU: the model's fused graphs compiled by the CUDA backend, its weights
//! streamed to the device from the checkpoint (or uploaded from a CPU model's). Prompts run through the decode step one token at a time unless the
//! prefill kernels (tensor-core GEMM, prefill attention) are asked for.

use std::path::Path;

use smelt_ir::{DType, Tensor};
use smelt_passes::kv::KvPlan;
use smelt_runtime::cuda::{
    check_prefill, check_step, BatchRow, CudaDecoder, CudaError, DecoderGraphs, DecoderOptions, Gpu, NodeCheck,
    StepOutput, WeightBytes,
};
use smelt_runtime::progress::{Task, Unit};
use smelt_runtime::HostWeights;

use crate::batch::{BatchLm, Chunk, ChunkOutput};
use crate::blueprint::Blueprint;
use crate::config::Qwen3Config;
use crate::engine::{LoadOptions, ModelError, Qwen3Cpu};
use crate::lm::{check_ids, CausalLm, LONG_PROMPT};
use crate::qwen3::Logits;
use crate::sample::argmax;

/// A batched decode step against the same rows run one at a time (see
/// [`Qwen3Cuda::check_batch`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchCheck {
    pub rows: usize,
    /// ‖batched − single‖ / ‖single‖ over a row's logits: the worst row, and the mean.
    pub max_rel_err: f64,
    pub mean_rel_err: f64,
    pub max_abs: f64,
    /// Rows whose logits have the same argmax.
    pub top1_agreement: f64,
    /// Rows whose greedy tokens (computed on the GPU) agree.
    pub greedy_agreement: f64,
}

pub struct Qwen3Cuda {
    /// Config, graphs and EOS ids; the weights are on the device only.
    blueprint: Blueprint,
    decoder: CudaDecoder,
}

impl Qwen3Cuda {
    /// Loads `dir` onto device 0 in `dtype` (bf16, f16 or f32): checks the config and the
    /// checkpoint as the CPU backend does, compiles the fused graphs and streams each weight
    /// from the mapped checkpoint to the device a staging buffer at a time, so the host never
    /// holds the model. With `options.prefill`, prompts run through the prefill graph's
    /// kernels. Reports the load, the kernels' JIT time and the device memory as `tracing` events.
    pub fn load(dir: &Path, dtype: DType, options: &DecoderOptions) -> Result<Qwen3Cuda, ModelError> {
        let started = std::time::Instant::now();
        let opened = Blueprint::open(dir, LoadOptions::new(dtype))?;
        let model = Qwen3Cuda::start(opened.blueprint, &opened.checkpoint, options)?;
        crate::report::loaded(dir, &model.blueprint, started);
        Ok(model)
    }

    /// Compiles `cpu`'s graphs for device 0 and uploads its host weights: for checks and
    /// benchmarks that hold a CPU model anyway. The graphs must be fused (the CUDA backend has
    /// kernels for fused ops only).
    pub fn from_cpu(cpu: &Qwen3Cpu, options: &DecoderOptions) -> Result<Qwen3Cuda, ModelError> {
        Qwen3Cuda::start(cpu.blueprint().clone(), cpu.host_weights(), options)
    }

    fn start(
        blueprint: Blueprint,
        weights: &dyn WeightBytes,
        options: &DecoderOptions,
    ) -> Result<Qwen3Cuda, ModelError> {
        let gpu = Gpu::open(0)?;
        // Batched decode runs its matmuls on the tensor-core GEMM: bf16 and f16 only.
        let batched = matches!(blueprint.dtype(), DType::BF16 | DType::F16);
        let graphs = DecoderGraphs {
            decode: blueprint.decode_graph(),
            prefill: options.prefill.then(|| blueprint.prefill_graph()),
            batch: batched.then(|| blueprint.batch_graph()),
        };
        let decoder = CudaDecoder::with_graphs(gpu, graphs, weights, options)?;
        crate::report::compiled(&decoder);
        Ok(Qwen3Cuda { blueprint, decoder })
    }

    /// Turns programmatic dependent launch on or off (see `CudaDecoder::set_pdl`).
    pub fn set_pdl(&mut self, on: bool) {
        self.decoder.set_pdl(on)
    }

    pub fn decoder(&self) -> &CudaDecoder {
        &self.decoder
    }

    /// The decoder itself, for benchmarks that drive it directly (its single-sequence state
    /// is reset by the next [`CausalLm::reset`]).
    pub fn decoder_mut(&mut self) -> &mut CudaDecoder {
        &mut self.decoder
    }

    pub fn dtype(&self) -> DType {
        self.blueprint.dtype()
    }

    /// Runs one decode step kernel by kernel, checking every node against `ir::eval` on the
    /// same operands with `reference`'s host weights (see `smelt_runtime::cuda::check_step`).
    pub fn check_step(&mut self, reference: &Qwen3Cpu, token: u32) -> Result<Vec<NodeCheck>, ModelError> {
        check_ids(self.blueprint.config(), self.decoder.position(), &[token])?;
        let weights = self.reference_weights(reference)?;
        Ok(check_step(&mut self.decoder, weights, token)?)
    }

    /// Runs `tokens` through the prefill kernels launch by launch, checking every node against
    /// `ir::eval` on the same operands with `reference`'s host weights (see
    /// `smelt_runtime::cuda::check_prefill`).
    pub fn check_prefill(&mut self, reference: &Qwen3Cpu, tokens: &[u32]) -> Result<Vec<NodeCheck>, ModelError> {
        self.check(tokens)?;
        let weights = self.reference_weights(reference)?;
        Ok(check_prefill(&mut self.decoder, weights, tokens)?)
    }

    /// The host weights of a CPU model of the same dtype and shapes (the checks evaluate this
    /// model's graphs with them).
    fn reference_weights<'r>(&self, reference: &'r Qwen3Cpu) -> Result<&'r HostWeights, ModelError> {
        let (mine, theirs) = (self.blueprint.config(), reference.config());
        if reference.dtype() != self.dtype()
            || (mine.num_layers, mine.hidden_size) != (theirs.num_layers, theirs.hidden_size)
        {
            let why = format!(
                "a {:?} reference model for a {:?} GPU model of another shape",
                reference.dtype(),
                self.dtype()
            );
            return Err(ModelError::Internal(why));
        }
        Ok(reference.host_weights())
    }

    /// One decode step kernel by kernel, timed per launch (see `CudaDecoder::profile_step`).
    pub fn profile_step(&mut self, token: u32) -> Result<Vec<f64>, ModelError> {
        self.check(&[token])?;
        Ok(self.decoder.profile_step(token)?)
    }

    /// Runs one batched decode step of `rows` sequences (prompts of 1 to 61 tokens, each in
    /// blocks of its own, listed in reverse so no table is the identity) and the same rows
    /// one sequence at a time, and compares each row's logits. The two paths run different
    /// kernels (a GEMM over the rows against GEMVs) and both round to the model dtype, so they
    /// agree to rounding noise; a wrong position or block table makes a row's error about 1.
    pub fn check_batch(&mut self, rows: usize) -> Result<BatchCheck, ModelError> {
        let vocab = self.blueprint.config().vocab_size;
        let d = &mut self.decoder;
        if rows == 0 || rows > d.batch_rows() {
            let why = format!("a batched step of {rows} rows (this model's batch graph takes 1 to {})", d.batch_rows());
            return Err(smelt_runtime::cuda::CudaError::Unsupported(why).into());
        }
        let shape = d.kv_shape();
        const LONGEST: usize = 61;
        let per_seq = (LONGEST + 2).div_ceil(shape.block_tokens);
        if rows * per_seq > shape.blocks {
            let why =
                format!("{rows} sequences of {per_seq} blocks; the pool has {} (raise --kv-tokens)", shape.blocks);
            return Err(smelt_runtime::cuda::CudaError::Unsupported(why).into());
        }
        let lens: Vec<usize> = (0..rows).map(|i| 1 + (i * 37) % LONGEST).collect();
        let tables: Vec<Vec<u32>> =
            (0..rows).map(|i| (0..per_seq).rev().map(|j| (i * per_seq + j) as u32).collect()).collect();
        let token = |i: usize, p: usize| {
            (((i * 1000 + p + 1) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) as u32 % vocab as u32
        };
        for (i, table) in tables.iter().enumerate() {
            d.set_sequence(table, 0)?;
            for p in 0..lens[i] {
                d.step(token(i, p), false)?;
            }
        }
        let batch: Vec<BatchRow<'_>> =
            (0..rows).map(|i| BatchRow { token: token(i, lens[i]), position: lens[i], table: &tables[i] }).collect();
        let batched = d.decode_batch(&batch, true)?;
        let mut check = BatchCheck { rows, ..BatchCheck::default() };
        for (i, b) in batched.iter().enumerate() {
            d.set_sequence(&tables[i], lens[i])?;
            let single = d.step(token(i, lens[i]), true)?;
            let (b, s) = (b.logits.as_deref().unwrap_or_default(), single.logits.as_deref().unwrap_or_default());
            let diff: f64 = b.iter().zip(s).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>().sqrt();
            let norm: f64 = s.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
            // NaN as the worst error (f64::max would drop it), though a NaN logit is refused on
            // the way out of the GPU already.
            let nan_is_worst = |e: f64| if e.is_nan() { f64::INFINITY } else { e };
            let rel = nan_is_worst(diff / norm.max(1e-30));
            check.max_rel_err = check.max_rel_err.max(rel);
            check.mean_rel_err += rel / rows as f64;
            let max_abs = b.iter().zip(s).map(|(x, y)| nan_is_worst((x - y).abs() as f64)).fold(0.0, f64::max);
            check.max_abs = check.max_abs.max(max_abs);
            check.top1_agreement += f64::from(u8::from(argmax(b) == argmax(s))) / rows as f64;
            check.greedy_agreement += f64::from(u8::from(batched[i].next_token == single.next_token)) / rows as f64;
        }
        d.reset();
        Ok(check)
    }

    fn f16(&self) -> bool {
        self.blueprint.dtype() == DType::F16
    }

    fn check_finite(&self, logits: &[f32]) -> Result<(), ModelError> {
        check_finite(&self.blueprint, self.decoder.position(), logits)
    }

    fn check(&mut self, ids: &[u32]) -> Result<(), ModelError> {
        self.one_sequence().check(ids)
    }

    fn one_sequence(&mut self) -> OneSequence<'_, CudaDecoder> {
        OneSequence { blueprint: &self.blueprint, decoder: &mut self.decoder }
    }
}

/// Logits read from the GPU must be finite (greedy steps need no read: the argmax kernel
/// flags non-finite rows). f16 activations can overflow where bf16 ones cannot; the kernels
/// accumulate in f32 but store f16, so an overflow shows as non-finite logits. The CPU backend
/// names the op (`EvalOptions::overflow_is_error`); here the logits of every f16 step are read
/// and checked, and a failure says it was f16. `position`: tokens in the cache after the step.
fn check_finite(blueprint: &Blueprint, position: usize, logits: &[f32]) -> Result<(), ModelError> {
    let count = logits.iter().filter(|v| !v.is_finite()).count();
    let position = position.saturating_sub(1);
    match count {
        0 => Ok(()),
        _ if blueprint.dtype() == DType::F16 => Err(ModelError::F16Overflow { position, count }),
        _ => Err(ModelError::NonFiniteLogits { position, count }),
    }
}

/// What the one-sequence paths need of the GPU: one device's decoder, or a tensor-parallel
/// group's ([`crate::Qwen3CudaGroup`]).
pub(crate) trait SequenceDecoder {
    fn position(&self) -> usize;
    fn capacity(&self) -> usize;
    fn has_prefill(&self) -> bool;
    fn step(&mut self, token: u32, want_logits: bool) -> Result<StepOutput, CudaError>;
    fn prefill(&mut self, tokens: &[u32], want_logits: bool) -> Result<StepOutput, CudaError>;
}

impl SequenceDecoder for CudaDecoder {
    fn position(&self) -> usize {
        CudaDecoder::position(self)
    }

    fn capacity(&self) -> usize {
        CudaDecoder::capacity(self)
    }

    fn has_prefill(&self) -> bool {
        CudaDecoder::has_prefill(self)
    }

    fn step(&mut self, token: u32, want_logits: bool) -> Result<StepOutput, CudaError> {
        CudaDecoder::step(self, token, want_logits)
    }

    fn prefill(&mut self, tokens: &[u32], want_logits: bool) -> Result<StepOutput, CudaError> {
        CudaDecoder::prefill(self, tokens, want_logits)
    }
}

/// One sequence on a GPU decoder: [`CausalLm`]'s forward passes, shared by one device and a
/// group.
pub(crate) struct OneSequence<'a, D: SequenceDecoder> {
    pub blueprint: &'a Blueprint,
    pub decoder: &'a mut D,
}

impl<D: SequenceDecoder> OneSequence<'_, D> {
    fn f16(&self) -> bool {
        self.blueprint.dtype() == DType::F16
    }

    fn check_finite(&self, logits: &[f32]) -> Result<(), ModelError> {
        check_finite(self.blueprint, self.decoder.position(), logits)
    }

    fn check(&self, ids: &[u32]) -> Result<(), ModelError> {
        check_ids(self.blueprint.config(), self.decoder.position(), ids)?;
        let needed = self.decoder.position() + ids.len();
        if needed > self.decoder.capacity() {
            return Err(CudaError::KvFull { capacity: self.decoder.capacity() }.into());
        }
        Ok(())
    }

    pub fn forward(&mut self, ids: &[u32], logits: Logits) -> Result<Tensor, ModelError> {
        self.check(ids)?;
        let vocab = self.blueprint.config().vocab_size;
        if logits == Logits::LastPosition && ids.len() > 1 && self.decoder.has_prefill() {
            let row = self.decoder.prefill(ids, true)?.logits.expect("asked for logits");
            self.check_finite(&row)?;
            return Ok(Tensor::from_stored(DType::F32, vec![1, vocab], row));
        }
        let mut rows = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let want = logits == Logits::AllPositions || i + 1 == ids.len() || self.f16();
            if let Some(row) = self.decoder.step(id, want)?.logits {
                self.check_finite(&row)?;
                if logits == Logits::AllPositions || i + 1 == ids.len() {
                    rows.extend(row);
                }
            }
        }
        let n = rows.len() / vocab;
        Ok(Tensor::from_stored(DType::F32, vec![n, vocab], rows))
    }

    pub fn forward_greedy(&mut self, ids: &[u32]) -> Result<u32, ModelError> {
        self.check(ids)?;
        // In f16 every step's logits are read and checked (see `check_finite`).
        let want = self.f16();
        let out = if ids.len() > 1 && self.decoder.has_prefill() {
            self.decoder.prefill(ids, want)?
        } else {
            let (last, init) = ids.split_last().expect("check refuses empty ids");
            // A long prompt, token by token, takes seconds: show it.
            let task = (init.len() >= LONG_PROMPT).then(|| Task::begin("prompt", ids.len() as u64, Unit::Items));
            for &id in init {
                let step = self.decoder.step(id, want)?;
                self.check_finite(step.logits.as_deref().unwrap_or_default())?;
                if let Some(task) = &task {
                    task.advance(1);
                }
            }
            self.decoder.step(*last, want)?
        };
        self.check_finite(out.logits.as_deref().unwrap_or_default())?;
        Ok(out.next_token)
    }
}

impl CausalLm for Qwen3Cuda {
    fn config(&self) -> &Qwen3Config {
        self.blueprint.config()
    }

    fn eos_token_ids(&self) -> &[u32] {
        self.blueprint.eos_token_ids()
    }

    fn position(&self) -> usize {
        self.decoder.position()
    }

    fn reset(&mut self) {
        self.decoder.reset()
    }

    fn forward(&mut self, ids: &[u32], logits: Logits) -> Result<Tensor, ModelError> {
        self.one_sequence().forward(ids, logits)
    }

    fn as_batch(&mut self) -> Option<&mut dyn BatchLm> {
        Some(self)
    }

    fn forward_greedy(&mut self, ids: &[u32]) -> Result<u32, ModelError> {
        self.one_sequence().forward_greedy(ids)
    }
}

/// The batch engine on the GPU: the pool made at load time holds every sequence's blocks.
/// With a batch graph (bf16/f16, `DecoderOptions::batch_rows`), a step's decode chunks run as
/// one batched step, each row through its sequence's block table; its GEMMs round differently
/// from the single-sequence GEMVs, so outputs can differ from one-at-a-time runs by rounding
/// (`Qwen3Cuda::check_batch` measures by how much). Other chunks (prompts, recomputes) run one
/// sequence after another, token by token unless the prefill kernels were compiled; without a
/// batch graph every sequence runs exactly the kernels it runs alone.
impl BatchLm for Qwen3Cuda {
    fn config(&self) -> &Qwen3Config {
        self.blueprint.config()
    }

    fn eos_token_ids(&self) -> &[u32] {
        self.blueprint.eos_token_ids()
    }

    fn kv_plan(&self, block_tokens: usize, budget_bytes: usize) -> Result<KvPlan, ModelError> {
        let shape = self.decoder.kv_shape();
        if block_tokens != shape.block_tokens {
            let message = format!("the GPU's KV pool has blocks of {} tokens, not {block_tokens}", shape.block_tokens);
            return Err(ModelError::BadRequest(message));
        }
        // The pool was sized at load (--kv-tokens); the budget can only use less of it.
        let mut plan = self.blueprint.kv_plan(block_tokens, budget_bytes)?;
        plan.blocks = plan.blocks.min(shape.blocks);
        plan.capacity_tokens = plan.blocks * block_tokens;
        Ok(plan)
    }

    fn allocate_kv(&mut self, plan: &KvPlan) -> Result<(), ModelError> {
        let blocks = self.decoder.kv_shape().blocks;
        if plan.blocks > blocks {
            return Err(ModelError::Internal(format!("a plan of {} blocks for a pool of {blocks}", plan.blocks)));
        }
        Ok(())
    }

    fn run_chunks(&mut self, chunks: &[Chunk<'_>]) -> Result<Vec<ChunkOutput>, ModelError> {
        for c in chunks {
            check_ids(self.blueprint.config(), c.start, c.ids)?;
        }
        let mut out: Vec<Option<ChunkOutput>> = vec![None; chunks.len()];
        // Decode chunks (one token each) run together when there is a batch graph.
        let decodes: Vec<usize> = (0..chunks.len()).filter(|&i| chunks[i].ids.len() == 1).collect();
        let rows = self.decoder.batch_rows();
        if rows > 0 && decodes.len() > 1 {
            for group in decodes.chunks(rows) {
                let batch: Vec<BatchRow<'_>> = group
                    .iter()
                    .map(|&i| BatchRow { token: chunks[i].ids[0], position: chunks[i].start, table: chunks[i].blocks })
                    .collect();
                let want_logits = self.f16() || group.iter().any(|&i| !chunks[i].greedy);
                for (&i, step) in group.iter().zip(self.decoder.decode_batch(&batch, want_logits)?) {
                    self.check_finite(step.logits.as_deref().unwrap_or_default())?;
                    out[i] = Some(chunk_output(chunks[i].greedy, step));
                }
            }
        }
        for (i, c) in chunks.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            self.decoder.set_sequence(c.blocks, c.start)?;
            let want = self.f16() || !c.greedy;
            let step = if c.ids.len() > 1 && self.decoder.has_prefill() {
                self.decoder.prefill(c.ids, want)?
            } else {
                let (last, init) = c.ids.split_last().expect("chunks are not empty");
                for &id in init {
                    let step = self.decoder.step(id, self.f16())?;
                    self.check_finite(step.logits.as_deref().unwrap_or_default())?;
                }
                self.decoder.step(*last, want)?
            };
            self.check_finite(step.logits.as_deref().unwrap_or_default())?;
            out[i] = Some(chunk_output(c.greedy, step));
        }
        Ok(out.into_iter().map(|o| o.expect("every chunk ran")).collect())
    }
}

/// What a step gives the engine: the greedy token alone when that is all a chunk needs.
fn chunk_output(greedy: bool, step: smelt_runtime::cuda::StepOutput) -> ChunkOutput {
    match step.logits {
        Some(logits) if !greedy => ChunkOutput::Logits(logits),
        _ => ChunkOutput::Greedy(step.next_token),
    }
}
