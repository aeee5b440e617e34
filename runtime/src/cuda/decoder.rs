//! A model on the GPU: the programs' kernels JIT-compiled with NVRTC (through the on-disk
//! module cache), the weights and the paged KV cache shared by its graphs, and per graph a
//! [`Layout`](super::layout::Layout) and launch schedule. The decode step is captured once per
//! context bucket as a CUDA graph and replayed: per step the host writes the token, its
//! position and `smelt_step`, replays, and reads back the greedy token (one sync). A prefill
//! graph, when given, runs a prompt's tokens in chunks, kernel by kernel.

mod kernels;
mod runner;

use std::sync::Arc;

use cudarc::driver::{sys, CudaModule};
use smelt_codegen::{emit_with, EmitOptions, ModuleCache, Program, Variants};
use smelt_ir::{Bindings, Graph, Sym};

use super::batch::BatchRunner;
use super::device::{check, Gpu};
use super::device_weights::{DeviceWeights, WeightBytes};
use super::layout::{KvPool, KvShape};
use super::CudaError;
pub(crate) use kernels::{launch_raw, load_function, load_kernels};
pub(crate) use runner::Runner;

/// Smallest context bucket: below it, one captured graph serves every length.
const MIN_BUCKET: usize = 256;

#[derive(Clone, Debug)]
pub struct DecoderOptions {
    /// Tokens the KV cache holds (rounded up to whole blocks).
    pub kv_tokens: usize,
    pub block_tokens: usize,
    /// Replay each step as a captured CUDA graph (else launch kernel by kernel).
    pub cuda_graphs: bool,
    /// Where compiled modules are cached (None: compile every time).
    pub module_cache: Option<ModuleCache>,
    /// Launch with programmatic dependent launch where the device has it (sm_90): a kernel
    /// starts its weight loads while the previous one finishes.
    pub pdl: bool,
    /// Run prompts through a prefill program (when the model provides one) instead of one
    /// decode step per token.
    pub prefill: bool,
    /// Tokens a prefill run takes at most (longer prompts run in chunks).
    pub prefill_chunk: usize,
    /// Sequences a batched decode step takes at most (when the model provides a batch graph);
    /// 0 compiles no batched decode (its GEMMs add to the JIT time of a single-sequence run).
    pub batch_rows: usize,
    /// The kernel variants (each on by default; off is its A/B twin).
    pub variants: Variants,
}

impl DecoderOptions {
    /// The defaults for a cache of `kv_tokens` tokens: blocks of the planner's default size,
    /// CUDA graphs and programmatic dependent launch on, the user's module cache, prompts one
    /// token per step (the prefill kernels are opt-in), chunks of 512 when they are on, no
    /// batched decode (opt-in too).
    pub fn new(kv_tokens: usize) -> DecoderOptions {
        DecoderOptions {
            kv_tokens,
            block_tokens: smelt_passes::DEFAULT_BLOCK_TOKENS,
            cuda_graphs: true,
            module_cache: ModuleCache::default_dir().map(ModuleCache::at),
            pdl: true,
            prefill: false,
            prefill_chunk: 512,
            batch_rows: 0,
            variants: Variants::default(),
        }
    }
}

/// How long loading the kernels took.
#[derive(Clone, Debug, Default)]
pub struct JitReport {
    pub kernels: usize,
    /// Kernels whose PTX came from the on-disk cache.
    pub cached: usize,
    /// NVRTC (or cache reads) plus the driver's module loads, in seconds.
    pub seconds: f64,
}

/// The fused graphs a decoder runs: the decode step (T pinned to 1), and optionally a prefill
/// graph (symbolic T; prompts in chunks) and a batch graph (symbolic T, logits at every row;
/// batched decode steps, each row a sequence of its own).
#[derive(Clone, Copy)]
pub struct DecoderGraphs<'g> {
    pub decode: &'g Graph,
    pub prefill: Option<&'g Graph>,
    pub batch: Option<&'g Graph>,
}

pub struct CudaDecoder {
    pub(crate) gpu: Gpu,
    weights: DeviceWeights,
    pub(crate) kv: KvPool,
    pub(crate) decode: Runner,
    pub(crate) prefill: Option<Runner>,
    pub(crate) batch: Option<BatchRunner>,
    _modules: Vec<Arc<CudaModule>>,
    pub(crate) position: usize,
    /// The block table: the identity (one sequence owning the pool) or a batch sequence's.
    table: Table,
    pub(crate) cuda_graphs: bool,
    pub(crate) pdl: bool,
    jit: JitReport,
}

/// Which sequence the KV block table describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    /// Block i is block i: one sequence owns the whole pool.
    Identity,
    /// A batch sequence's blocks, covering this many tokens.
    Sequence { tokens: usize },
    /// Back to one sequence; the identity is rewritten before the next run.
    IdentityPending,
}

/// What one step returns.
pub struct StepOutput {
    pub next_token: u32,
    /// f32 logits of the step's last token, when asked for.
    pub logits: Option<Vec<f32>>,
}

impl CudaDecoder {
    /// Compiles `graph` (a fused decode graph, `T` pinned to 1) for `gpu`, uploads `weights`
    /// and allocates the KV cache.
    pub fn new(
        gpu: Gpu,
        graph: &Graph,
        weights: &dyn WeightBytes,
        options: &DecoderOptions,
    ) -> Result<CudaDecoder, CudaError> {
        let graphs = DecoderGraphs { decode: graph, prefill: None, batch: None };
        CudaDecoder::with_graphs(gpu, graphs, weights, options)
    }

    /// As [`CudaDecoder::new`], with the optional graphs: a prefill graph that runs prompts in
    /// chunks of `options.prefill_chunk` tokens, and a batch graph for batched decode steps of
    /// up to `options.batch_rows` sequences.
    pub fn with_graphs(
        gpu: Gpu,
        graphs: DecoderGraphs<'_>,
        weights: &dyn WeightBytes,
        options: &DecoderOptions,
    ) -> Result<CudaDecoder, CudaError> {
        let DecoderGraphs { decode, prefill, batch } = graphs;
        if decode.pinned(Sym::NewTokens) != Some(1) {
            return Err(CudaError::Unsupported("the decode graph must pin T to 1".into()));
        }
        let batch = batch.filter(|_| options.batch_rows > 0);
        let codegen = |g: &Graph, options| emit_with(g, options).map_err(|e| CudaError::Codegen(e.to_string()));
        let emit_options = EmitOptions { variants: options.variants, ..EmitOptions::default() };
        let decode_program = codegen(decode, emit_options)?;
        let prefill_program = prefill.map(|g| codegen(g, emit_options)).transpose()?;
        let batch_options = EmitOptions { rows_are_sequences: true, ..emit_options };
        let batch_program = batch.map(|g| codegen(g, batch_options)).transpose()?;
        let mut programs = vec![&decode_program.kernels[..]];
        programs.extend(prefill_program.as_ref().map(|p| &p.kernels[..]));
        programs.extend(batch_program.as_ref().map(|p| &p.kernels[..]));
        let (functions, modules, jit) = load_kernels(&gpu, &programs, options.module_cache.as_ref())?;
        let mut functions = functions.into_iter();
        let mut all_graphs = vec![decode];
        all_graphs.extend(prefill);
        all_graphs.extend(batch);
        let device_weights = DeviceWeights::upload(&gpu, &all_graphs, weights)?;
        let blocks = options.kv_tokens.div_ceil(options.block_tokens.max(1)).max(1);
        let kv = KvPool::new(&gpu, decode, KvShape { block_tokens: options.block_tokens.max(1), blocks })?;
        let mut next_functions = || functions.next().expect("one function list per program");
        let decode_runner = Runner::new(&gpu, decode, decode_program, next_functions(), &device_weights, &kv, 1)?;
        let prefill_runner = match (prefill, prefill_program) {
            (Some(g), Some(p)) => {
                Some(Runner::new(&gpu, g, p, next_functions(), &device_weights, &kv, options.prefill_chunk.max(1))?)
            }
            _ => None,
        };
        let batch_runner = match (batch, batch_program) {
            (Some(g), Some(p)) => {
                let runner = Runner::new(&gpu, g, p, next_functions(), &device_weights, &kv, options.batch_rows)?;
                Some(BatchRunner::new(&gpu, runner, &kv)?)
            }
            _ => None,
        };
        gpu.synchronize("uploading the weights")?;
        let pdl = options.pdl && gpu.arch() == smelt_codegen::Arch::Sm90;
        Ok(CudaDecoder {
            gpu,
            weights: device_weights,
            kv,
            decode: decode_runner,
            prefill: prefill_runner,
            batch: batch_runner,
            _modules: modules,
            position: 0,
            table: Table::Identity,
            cuda_graphs: options.cuda_graphs,
            pdl,
            jit,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The decode program.
    pub fn program(&self) -> &Program {
        &self.decode.program
    }

    /// Whether prompts run through a prefill program.
    pub fn has_prefill(&self) -> bool {
        self.prefill.is_some()
    }

    pub fn jit(&self) -> &JitReport {
        &self.jit
    }

    /// Device bytes by use.
    pub fn device_bytes(&self) -> [(&'static str, usize); 3] {
        let own = self.decode.layout.own_bytes() + self.prefill.as_ref().map_or(0, |p| p.layout.own_bytes());
        [("weights", self.weights.bytes()), ("kv cache", self.kv.bytes()), ("activations", own)]
    }

    /// Whether launches use programmatic dependent launch.
    pub fn pdl(&self) -> bool {
        self.pdl
    }

    /// Turns programmatic dependent launch on or off (on needs sm_90); captured graphs are
    /// dropped and recaptured.
    pub fn set_pdl(&mut self, on: bool) {
        self.pdl = on && self.gpu.arch() == smelt_codegen::Arch::Sm90;
        self.decode.graphs.clear();
        if let Some(batch) = &mut self.batch {
            batch.runner.graphs.clear();
        }
    }

    /// Tokens in the KV cache.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Tokens the KV cache can hold.
    pub fn capacity(&self) -> usize {
        self.kv.shape.tokens()
    }

    /// The KV pool's shape.
    pub fn kv_shape(&self) -> KvShape {
        self.kv.shape
    }

    /// Starts a new sequence that owns the whole pool (the cache's old rows are simply
    /// overwritten).
    pub fn reset(&mut self) {
        self.position = 0;
        if self.table != Table::Identity {
            self.table = Table::IdentityPending;
        }
    }

    /// Continues the sequence whose KV is in the pool's blocks `table` (in order) after
    /// `position` tokens: how the batch engine runs many sequences through one pool. Until
    /// [`CudaDecoder::reset`], steps and prefills read and write through this table.
    pub fn set_sequence(&mut self, table: &[u32], position: usize) -> Result<(), CudaError> {
        self.kv.set_table(&self.gpu, table)?;
        self.position = position;
        self.table = Table::Sequence { tokens: table.len() * self.kv.shape.block_tokens };
        Ok(())
    }

    /// Makes the block table current and checks that `tokens` more fit the sequence.
    pub(crate) fn prepare(&mut self, tokens: usize) -> Result<(), CudaError> {
        if self.table == Table::IdentityPending {
            self.kv.set_identity(&self.gpu)?;
            self.table = Table::Identity;
        }
        let capacity = match self.table {
            Table::Sequence { tokens } => tokens,
            _ => self.capacity(),
        };
        if self.position + tokens > capacity {
            return Err(CudaError::KvFull { capacity });
        }
        Ok(())
    }

    /// Runs one decode step on `token` at the next position; returns the greedy next token
    /// and, if `want_logits`, the logits.
    pub fn step(&mut self, token: u32, want_logits: bool) -> Result<StepOutput, CudaError> {
        let at = self.position;
        self.write_inputs(token)?;
        if self.cuda_graphs {
            let bucket = bucket(at + 1, self.capacity());
            let graph = self.decode.captured(&self.gpu, (1, bucket), self.pdl)?;
            check(&format!("replaying the decode step at position {at}"), graph.launch())?;
        } else {
            let b = Bindings { batch: 1, new_tokens: 1, cached_tokens: at };
            for i in 0..self.decode.layout.launches.len() {
                self.decode.launch(&self.gpu, i, &b, self.pdl)?;
            }
        }
        self.position += 1;
        self.decode.read_outputs(&self.gpu, want_logits, 0, at, &format!("running the decode step at position {at}"))
    }

    /// Runs `tokens` through the prefill program (in chunks), kernel by kernel; returns the
    /// greedy token after the last one and, if `want_logits`, its logits.
    pub fn prefill(&mut self, tokens: &[u32], want_logits: bool) -> Result<StepOutput, CudaError> {
        if tokens.is_empty() {
            return Err(CudaError::Unsupported("prefill of no tokens".into()));
        }
        self.prepare(tokens.len())?;
        let Some(runner) = &self.prefill else {
            return Err(CudaError::Unsupported("no prefill program was compiled".into()));
        };
        let mut last = None;
        for (i, chunk) in tokens.chunks(runner.layout.max_new_tokens).enumerate() {
            let at = self.position;
            runner.write_inputs(&self.gpu, chunk, at)?;
            let b = Bindings { batch: 1, new_tokens: chunk.len(), cached_tokens: at };
            for l in 0..runner.layout.launches.len() {
                runner.launch(&self.gpu, l, &b, self.pdl)?;
            }
            self.position += chunk.len();
            let is_last = (i + 1) * runner.layout.max_new_tokens >= tokens.len();
            if is_last {
                let what = format!("running the prefill of positions {at}..{}", self.position);
                // The chunk's last row is wanted: the only one, unless the graph makes a row per token.
                let row = if runner.row_per_token { chunk.len() - 1 } else { 0 };
                last = Some(runner.read_outputs(&self.gpu, want_logits, row, self.position - 1, &what)?);
            }
        }
        Ok(last.expect("at least one chunk"))
    }

    /// Runs one decode step kernel by kernel with a device event between launches, and returns
    /// each launch's time in milliseconds (in schedule order): the profile of a step, without
    /// the launch gaps a captured graph removes.
    pub fn profile_step(&mut self, token: u32) -> Result<Vec<f64>, CudaError> {
        let at = self.position;
        self.write_inputs(token)?;
        let b = Bindings { batch: 1, new_tokens: 1, cached_tokens: at };
        let n = self.decode.layout.launches.len();
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let events = (0..=n)
            .map(|_| check("creating an event", self.gpu.ctx.new_event(flags)))
            .collect::<Result<Vec<_>, _>>()?;
        check("recording an event", events[0].record(&self.gpu.stream))?;
        for (i, e) in events[1..].iter().enumerate() {
            self.decode.launch(&self.gpu, i, &b, self.pdl)?;
            check("recording an event", e.record(&self.gpu.stream))?;
        }
        self.gpu.synchronize(&format!("profiling the decode step at position {at}"))?;
        self.position += 1;
        events.windows(2).map(|w| check("reading an event", w[0].elapsed_ms(&w[1])).map(f64::from)).collect()
    }

    /// Writes the decode step's inputs for `token` at the next position.
    pub(crate) fn write_inputs(&mut self, token: u32) -> Result<(), CudaError> {
        self.prepare(1)?;
        self.decode.write_inputs(&self.gpu, &[token], self.position)
    }
}

/// The context bucket a step at `context` tokens replays: powers of two from [`MIN_BUCKET`],
/// at most the cache's capacity. Attention's split count follows the bucket's grid.
pub(crate) fn bucket(context: usize, capacity: usize) -> usize {
    context.next_power_of_two().max(MIN_BUCKET).min(capacity.max(1))
}

#[cfg(test)]
mod tests {
    use super::bucket;

    #[test]
    fn buckets_are_powers_of_two_capped_by_capacity() {
        assert_eq!(bucket(1, 4096), 256);
        assert_eq!(bucket(256, 4096), 256);
        assert_eq!(bucket(257, 4096), 512);
        assert_eq!(bucket(1000, 4096), 1024);
        assert_eq!(bucket(3000, 3000), 3000);
        assert_eq!(bucket(10, 100), 100);
    }
}
