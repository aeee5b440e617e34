//! A model on the GPU: the programs' kernels JIT-compiled with NVRTC (through the on-disk
//! module cache), the weights and the paged KV cache shared by its graphs, and per graph a
//! [`Layout`] and launch schedule. The decode step is captured once per context bucket as a CUDA
//! graph and replayed: per step the host writes the token, its position and `smelt_step`,
//! replays, and reads back the greedy token (one sync). A prefill graph, when given, runs a
//! prompt's tokens in chunks, kernel by kernel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{sys, CudaFunction, CudaGraph, CudaModule};
use cudarc::nvrtc::Ptx;
use smelt_codegen::{emit_with, EmitOptions, Kernel, ModuleCache, Nvrtc, Program};
use smelt_ir::{Bindings, Dim, Graph, NodeId, Role, Sym, WeightSource};

use super::batch::BatchRunner;
use super::device::{check, Gpu};
use super::layout::{DeviceWeights, KvPool, KvShape, Layout};
use super::CudaError;

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

/// One graph's program on the device.
pub(crate) struct Runner {
    pub(crate) graph: Graph,
    pub(crate) program: Program,
    pub(crate) layout: Layout,
    pub(crate) functions: Vec<CudaFunction>,
    pub(crate) token_ids: u64,
    pub(crate) positions: u64,
    pub(crate) logits: (u64, usize),
    pub(crate) next_token: u64,
    /// Whether the outputs have a row per new token (else one row: the last position's).
    row_per_token: bool,
    graphs: HashMap<usize, CudaGraph>,
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
    cuda_graphs: bool,
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

/// Launches `function` (compiled from `kernel`) on `grid` blocks with `params` (device
/// addresses, by value), optionally as a programmatic dependent launch: every kernel waits on
/// its predecessor (SMELT_GRID_WAIT) before touching what it wrote, which makes that safe.
///
/// # Safety
/// `params` must match the kernel's parameter list in order and number, each a device address
/// inside a live buffer of the size the kernel reads or writes there.
pub(crate) unsafe fn launch_raw(
    gpu: &Gpu,
    function: &CudaFunction,
    kernel: &Kernel,
    grid: u32,
    params: &[u64],
    pdl: bool,
    what: &str,
) -> Result<(), CudaError> {
    let mut values = params.to_vec();
    let mut args: Vec<*mut std::ffi::c_void> = values.iter_mut().map(|v| v as *mut u64 as *mut _).collect();
    // SAFETY: a plain C struct; zero is a valid bit pattern for every field.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let config = sys::CUlaunchConfig {
        gridDimX: grid,
        gridDimY: 1,
        gridDimZ: 1,
        blockDimX: kernel.launch.block,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: kernel.launch.shared_bytes,
        hStream: gpu.cu_stream(),
        attrs: &mut attr,
        numAttrs: u32::from(pdl),
    };
    // SAFETY: the caller vouches for the parameters; the config, attribute and argument array
    // outlive the call.
    let r = unsafe {
        sys::cuLaunchKernelEx(&config, function.cu_function(), args.as_mut_ptr(), std::ptr::null_mut()).result()
    };
    check(what, r)
}

/// Loads `kernel`'s compiled `ptx` as a module of its own, allowing the dynamic shared memory
/// it asks for.
pub(crate) fn load_function(gpu: &Gpu, k: &Kernel, ptx: String) -> Result<(Arc<CudaModule>, CudaFunction), CudaError> {
    let module = check(&format!("loading the module of kernel {}", k.name), gpu.ctx.load_module(Ptx::from_src(ptx)))?;
    let f = check(&format!("finding kernel {}", k.name), module.load_function(&k.name))?;
    if k.launch.shared_bytes > 48 * 1024 {
        let attr = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        check(
            &format!("raising the shared memory of {}", k.name),
            f.set_attribute(attr, k.launch.shared_bytes as i32),
        )?;
    }
    Ok((module, f))
}

/// Per program its functions in kernel order; the modules that hold them; how long it took.
type LoadedKernels = (Vec<Vec<CudaFunction>>, Vec<Arc<CudaModule>>, JitReport);

/// Compiles and loads every distinct kernel of `programs`; returns per program the functions
/// in its kernel order.
fn load_kernels(gpu: &Gpu, programs: &[&Program], cache: Option<&ModuleCache>) -> Result<LoadedKernels, CudaError> {
    let t0 = Instant::now();
    let nvrtc = Nvrtc::load().map_err(|e| CudaError::Nvrtc(e.to_string()))?;
    let mut jit = JitReport::default();
    let mut modules = Vec::new();
    let mut loaded: HashMap<&str, CudaFunction> = HashMap::new();
    let mut per_program = Vec::new();
    for p in programs {
        let mut functions = Vec::new();
        for k in &p.kernels {
            if let Some(f) = loaded.get(k.source.as_str()) {
                functions.push(f.clone());
                continue;
            }
            let ptx = match cache {
                Some(cache) => {
                    let (ptx, hit) = cache
                        .compile(&nvrtc, &k.name, &k.source, gpu.arch())
                        .map_err(|e| CudaError::Nvrtc(e.to_string()))?;
                    jit.cached += usize::from(hit);
                    ptx
                }
                None => nvrtc.compile(&k.name, &k.source, gpu.arch()).map_err(|e| CudaError::Nvrtc(e.to_string()))?,
            };
            let (module, f) = load_function(gpu, k, ptx)?;
            jit.kernels += 1;
            modules.push(module);
            loaded.insert(k.source.as_str(), f.clone());
            functions.push(f);
        }
        per_program.push(functions);
    }
    gpu.synchronize("loading modules")?;
    jit.seconds = t0.elapsed().as_secs_f64();
    Ok((per_program, modules, jit))
}

impl Runner {
    fn new(
        gpu: &Gpu,
        graph: &Graph,
        program: Program,
        functions: Vec<CudaFunction>,
        weights: &DeviceWeights,
        kv: &KvPool,
        max_new_tokens: usize,
    ) -> Result<Runner, CudaError> {
        let layout = Layout::new(gpu, graph, &program, weights, kv, max_new_tokens)?;
        let find = |role: Role, found: Option<(String, NodeId)>| -> Result<NodeId, CudaError> {
            found.map(|(_, id)| id).ok_or_else(|| CudaError::Layout(format!("the graph has no {role} (a graph role)")))
        };
        let input = |role: Role| find(role, graph.input_with(role));
        let output = |role: Role| find(role, graph.output_with(role));
        let logits = graph.node(output(Role::Logits)?);
        let vocab = logits
            .shape
            .last()
            .and_then(|d| d.fixed())
            .ok_or_else(|| CudaError::Layout("logits must be [T, vocab] with a fixed vocab".into()))?;
        let row_per_token = logits.shape.dims().first() == Some(&Dim::Sym(Sym::NewTokens));
        let address = |id: NodeId| layout.address(graph, id);
        Ok(Runner {
            row_per_token,
            token_ids: address(input(Role::TokenIds)?)?,
            positions: address(input(Role::Positions)?)?,
            logits: (address(output(Role::Logits)?)?, vocab),
            next_token: address(output(Role::NextToken)?)?,
            graph: graph.clone(),
            program,
            layout,
            functions,
            graphs: HashMap::new(),
        })
    }

    /// Writes `tokens`, their positions from `at`, and `smelt_step` (stream-ordered before the
    /// kernels).
    pub(crate) fn write_inputs(&self, gpu: &Gpu, tokens: &[u32], at: usize) -> Result<(), CudaError> {
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        let positions: Vec<i32> = (at..at + tokens.len()).map(|p| p as i32).collect();
        gpu.upload(self.token_ids, &ids, "writing the token ids")?;
        gpu.upload(self.positions, &positions, "writing the positions")?;
        self.layout.write_step(gpu, tokens.len(), at)
    }

    /// The greedy token and (if `want_logits`) the logits of output row `row` (the graph's
    /// outputs have one row per new token, or one in all), the token at `position`. A greedy
    /// token of -1 means non-finite logits: an error, found with no extra transfer.
    fn read_outputs(
        &self,
        gpu: &Gpu,
        want_logits: bool,
        row: usize,
        position: usize,
        what: &str,
    ) -> Result<StepOutput, CudaError> {
        let mut next = [0i32; 1];
        gpu.download(&mut next, self.next_token + 4 * row as u64, what)?;
        let next_token = u32::try_from(next[0]).map_err(|_| CudaError::NonFiniteLogits { position })?;
        let logits = if want_logits {
            let mut v = vec![0f32; self.logits.1];
            let at = self.logits.0 + (4 * self.logits.1 * row) as u64;
            gpu.download(&mut v, at, "reading the logits")?;
            Some(v)
        } else {
            None
        };
        Ok(StepOutput { next_token, logits })
    }

    /// Launches launch `i` with grids sized for bindings `b`.
    pub(crate) fn launch(&self, gpu: &Gpu, i: usize, b: &Bindings, pdl: bool) -> Result<(), CudaError> {
        let l = &self.layout.launches[i];
        let kernel = &self.program.kernels[l.kernel];
        let what = format!("launching {} for {}", kernel.name, self.node_name(l.node));
        // SAFETY: every parameter is a device address inside live buffers of this model, in the
        // order and number of the kernel's parameter list (the calling convention).
        unsafe {
            launch_raw(gpu, &self.functions[l.kernel], kernel, kernel.launch.grid.blocks(b), &l.params, pdl, &what)
        }
    }

    pub(crate) fn node_name(&self, id: NodeId) -> String {
        self.graph.node(id).name.clone().unwrap_or_else(|| format!("%{}", id.index()))
    }

    /// Captures the whole step with grids sized for contexts up to `bucket`.
    fn capture(&self, gpu: &Gpu, bucket: usize, pdl: bool) -> Result<CudaGraph, CudaError> {
        let b = Bindings { batch: 1, new_tokens: 1, cached_tokens: bucket - 1 };
        let stream = &gpu.stream;
        check(
            "starting graph capture",
            stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
        )?;
        let launched = (0..self.layout.launches.len()).try_for_each(|i| self.launch(gpu, i, &b, pdl));
        let graph = check("ending graph capture", stream.end_capture(sys::CUgraphInstantiate_flags(0)));
        launched?;
        graph?.ok_or_else(|| CudaError::Unsupported("graph capture recorded nothing".into()))
    }
}

impl CudaDecoder {
    /// Compiles `graph` (a fused decode graph, `T` pinned to 1) for `gpu`, uploads `weights`
    /// and allocates the KV cache.
    pub fn new(
        gpu: Gpu,
        graph: &Graph,
        weights: &dyn WeightSource,
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
        weights: &dyn WeightSource,
        options: &DecoderOptions,
    ) -> Result<CudaDecoder, CudaError> {
        let DecoderGraphs { decode, prefill, batch } = graphs;
        if decode.pinned(Sym::NewTokens) != Some(1) {
            return Err(CudaError::Unsupported("the decode graph must pin T to 1".into()));
        }
        let batch = batch.filter(|_| options.batch_rows > 0);
        let codegen = |g: &Graph, options| emit_with(g, options).map_err(|e| CudaError::Codegen(e.to_string()));
        let decode_program = codegen(decode, EmitOptions::default())?;
        let prefill_program = prefill.map(|g| codegen(g, EmitOptions::default())).transpose()?;
        let batch_program = batch.map(|g| codegen(g, EmitOptions { rows_are_sequences: true })).transpose()?;
        let mut programs = vec![&decode_program];
        programs.extend(prefill_program.as_ref());
        programs.extend(batch_program.as_ref());
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
            if !self.decode.graphs.contains_key(&bucket) {
                let graph = self.decode.capture(&self.gpu, bucket, self.pdl)?;
                self.decode.graphs.insert(bucket, graph);
            }
            check(&format!("replaying the decode step at position {at}"), self.decode.graphs[&bucket].launch())?;
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
fn bucket(context: usize, capacity: usize) -> usize {
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
