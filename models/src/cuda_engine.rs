//! Qwen3 on the GPU: the CPU model's fused decode graph and weights, compiled and uploaded by
//! the CUDA backend. Prompts run through the decode step one token at a time unless the
//! prefill kernels (tensor-core GEMM, prefill attention) are asked for.

use smelt_ir::{DType, Tensor};
use smelt_runtime::cuda::{check_prefill, check_step, CudaDecoder, DecoderOptions, Gpu, NodeCheck};

use smelt_passes::kv::KvPlan;

use crate::batch::{BatchLm, Chunk};
use crate::config::Qwen3Config;
use crate::engine::{check_ids, CausalLm, ModelError, Qwen3Cpu};
use crate::qwen3::Logits;

pub struct Qwen3Cuda {
    /// Keeps the host weights and graphs: the reference for [`Qwen3Cuda::check_step`].
    cpu: Qwen3Cpu,
    decoder: CudaDecoder,
}

impl Qwen3Cuda {
    /// Compiles `cpu`'s decode graph for device 0 and uploads its weights. The graph must be
    /// fused (the CUDA backend has kernels for fused ops only) and in bf16, f16 or f32.
    /// With `options.prefill`, prompts run through the prefill graph's kernels.
    pub fn new(cpu: Qwen3Cpu, options: &DecoderOptions) -> Result<Qwen3Cuda, ModelError> {
        let gpu = Gpu::open(0)?;
        let prefill = options.prefill.then(|| cpu.prefill_graph());
        let decoder = CudaDecoder::with_prefill(gpu, cpu.decode_graph(), prefill, cpu.host_weights(), options)?;
        Ok(Qwen3Cuda { cpu, decoder })
    }

    /// Frees the GPU side and gives back the host model.
    pub fn into_cpu(self) -> Qwen3Cpu {
        self.cpu
    }

    /// Turns programmatic dependent launch on or off (see `CudaDecoder::set_pdl`).
    pub fn set_pdl(&mut self, on: bool) {
        self.decoder.set_pdl(on)
    }

    pub fn decoder(&self) -> &CudaDecoder {
        &self.decoder
    }

    pub fn dtype(&self) -> DType {
        self.cpu.dtype()
    }

    /// Runs one decode step kernel by kernel, checking every node against `ir::eval` on the
    /// same operands (see `smelt_runtime::cuda::check_step`).
    pub fn check_step(&mut self, token: u32) -> Result<Vec<NodeCheck>, ModelError> {
        check_ids(self.cpu.config(), self.decoder.position(), &[token])?;
        Ok(check_step(&mut self.decoder, self.cpu.host_weights(), token)?)
    }

    /// Runs `tokens` through the prefill kernels launch by launch, checking every node against
    /// `ir::eval` on the same operands (see `smelt_runtime::cuda::check_prefill`).
    pub fn check_prefill(&mut self, tokens: &[u32]) -> Result<Vec<NodeCheck>, ModelError> {
        self.check(tokens)?;
        Ok(check_prefill(&mut self.decoder, self.cpu.host_weights(), tokens)?)
    }

    /// One decode step kernel by kernel, timed per launch (see `CudaDecoder::profile_step`).
    pub fn profile_step(&mut self, token: u32) -> Result<Vec<f64>, ModelError> {
        self.check(&[token])?;
        Ok(self.decoder.profile_step(token)?)
    }

    fn check(&self, ids: &[u32]) -> Result<(), ModelError> {
        check_ids(self.cpu.config(), self.decoder.position(), ids)?;
        let needed = self.decoder.position() + ids.len();
        if needed > self.decoder.capacity() {
            return Err(smelt_runtime::cuda::CudaError::KvFull { capacity: self.decoder.capacity() }.into());
        }
        Ok(())
    }
}

impl CausalLm for Qwen3Cuda {
    fn config(&self) -> &Qwen3Config {
        self.cpu.config()
    }

    fn eos_token_ids(&self) -> &[u32] {
        self.cpu.eos_token_ids()
    }

    fn position(&self) -> usize {
        self.decoder.position()
    }

    fn reset(&mut self) {
        self.decoder.reset()
    }

    fn forward(&mut self, ids: &[u32], logits: Logits) -> Result<Tensor, ModelError> {
        self.check(ids)?;
        let vocab = self.cpu.config().vocab_size;
        if logits == Logits::LastPosition && ids.len() > 1 && self.decoder.has_prefill() {
            let row = self.decoder.prefill(ids, true)?.logits.expect("asked for logits");
            return Ok(Tensor::from_stored(DType::F32, vec![1, vocab], row));
        }
        let mut rows = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let want = logits == Logits::AllPositions || i + 1 == ids.len();
            if let Some(row) = self.decoder.step(id, want)?.logits {
                rows.extend(row);
            }
        }
        let n = rows.len() / vocab;
        Ok(Tensor::from_stored(DType::F32, vec![n, vocab], rows))
    }

    fn as_batch(&mut self) -> Option<&mut dyn BatchLm> {
        Some(self)
    }

    fn forward_greedy(&mut self, ids: &[u32]) -> Result<u32, ModelError> {
        self.check(ids)?;
        if ids.len() > 1 && self.decoder.has_prefill() {
            return Ok(self.decoder.prefill(ids, false)?.next_token);
        }
        let mut next = 0;
        for &id in ids {
            next = self.decoder.step(id, false)?.next_token;
        }
        Ok(next)
    }
}

/// The batch engine on the GPU: the pool made at load time holds every sequence's blocks, and
/// each chunk runs with its sequence's block table, one sequence after another. Prompts run
/// through the decode step token by token unless the prefill kernels were compiled, so by
/// default a batched sequence runs exactly the kernels it runs alone.
impl BatchLm for Qwen3Cuda {
    fn config(&self) -> &Qwen3Config {
        self.cpu.config()
    }

    fn eos_token_ids(&self) -> &[u32] {
        self.cpu.eos_token_ids()
    }

    fn kv_plan(&self, block_tokens: usize, budget_bytes: usize) -> Result<KvPlan, ModelError> {
        let shape = self.decoder.kv_shape();
        if block_tokens != shape.block_tokens {
            let message = format!("the GPU's KV pool has blocks of {} tokens, not {block_tokens}", shape.block_tokens);
            return Err(ModelError::BadRequest(message));
        }
        // The pool was sized at load (--kv-tokens); the budget can only use less of it.
        let mut plan = self.cpu.kv_plan(block_tokens, budget_bytes)?;
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

    fn run_chunks(&mut self, chunks: &[Chunk<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut out = Vec::with_capacity(chunks.len());
        for c in chunks {
            check_ids(self.cpu.config(), c.start, c.ids)?;
            self.decoder.set_sequence(c.blocks, c.start)?;
            let logits = if c.ids.len() > 1 && self.decoder.has_prefill() {
                self.decoder.prefill(c.ids, true)?.logits
            } else {
                let mut last = None;
                for (i, &id) in c.ids.iter().enumerate() {
                    last = self.decoder.step(id, i + 1 == c.ids.len())?.logits;
                }
                last
            };
            out.push(logits.ok_or_else(|| ModelError::Internal("a step returned no logits".into()))?);
        }
        Ok(out)
    }
}
