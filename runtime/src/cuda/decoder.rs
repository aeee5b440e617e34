//! The decode step on the GPU: the program's kernels JIT-compiled with NVRTC (through the
//! on-disk module cache), the device memory of [`Layout`], and the launch schedule, captured
//! once per context bucket as a CUDA graph and replayed. Per step the host writes the token,
//! its position and `smelt_step`, replays, and reads back the greedy token: one sync.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{sys, CudaFunction, CudaGraph, CudaModule};
use cudarc::nvrtc::Ptx;
use smelt_codegen::{emit, ModuleCache, Nvrtc, Program};
use smelt_ir::{Bindings, Graph, NodeId, Sym, WeightSource};

use super::device::{check, Gpu};
use super::layout::{KvShape, Layout};
use super::CudaError;

/// Graph names the decode graph must use (as `models::qwen3` declares them).
pub const TOKEN_IDS: &str = "token_ids";
pub const POSITIONS: &str = "positions";
pub const LOGITS: &str = "logits";
pub const NEXT_TOKEN: &str = "next_token";

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

pub struct CudaDecoder {
    pub(crate) gpu: Gpu,
    pub(crate) graph: Graph,
    pub(crate) program: Program,
    pub(crate) layout: Layout,
    pub(crate) functions: Vec<CudaFunction>,
    _modules: Vec<Arc<CudaModule>>,
    token_ids: u64,
    positions: u64,
    logits: (u64, usize),
    next_token: u64,
    pub(crate) position: usize,
    cuda_graphs: bool,
    pdl: bool,
    graphs: HashMap<usize, CudaGraph>,
    jit: JitReport,
}

/// What one step returns.
pub struct StepOutput {
    pub next_token: u32,
    /// f32 logits of the step's token, when asked for.
    pub logits: Option<Vec<f32>>,
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
        if graph.pinned(Sym::NewTokens) != Some(1) {
            return Err(CudaError::Unsupported(
                "the CUDA backend runs decode graphs (T pinned to 1) only so far".into(),
            ));
        }
        let program = emit(graph).map_err(|e| CudaError::Codegen(e.to_string()))?;
        let t0 = Instant::now();
        let nvrtc = Nvrtc::load().map_err(|e| CudaError::Nvrtc(e.to_string()))?;
        let mut jit = JitReport { kernels: program.kernels.len(), ..JitReport::default() };
        let mut modules = Vec::new();
        let mut functions = Vec::new();
        for k in &program.kernels {
            let ptx = match &options.module_cache {
                Some(cache) => {
                    let (ptx, hit) = cache
                        .compile(&nvrtc, &k.name, &k.source, gpu.arch())
                        .map_err(|e| CudaError::Nvrtc(e.to_string()))?;
                    jit.cached += usize::from(hit);
                    ptx
                }
                None => nvrtc.compile(&k.name, &k.source, gpu.arch()).map_err(|e| CudaError::Nvrtc(e.to_string()))?,
            };
            let module =
                check(&format!("loading the module of kernel {}", k.name), gpu.ctx.load_module(Ptx::from_src(ptx)))?;
            let f = check(&format!("finding kernel {}", k.name), module.load_function(&k.name))?;
            if k.launch.shared_bytes > 48 * 1024 {
                let attr = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
                check(
                    &format!("raising the shared memory of {}", k.name),
                    f.set_attribute(attr, k.launch.shared_bytes as i32),
                )?;
            }
            modules.push(module);
            functions.push(f);
        }
        gpu.synchronize("loading modules")?;
        jit.seconds = t0.elapsed().as_secs_f64();

        let blocks = options.kv_tokens.div_ceil(options.block_tokens.max(1)).max(1);
        let kv_shape = KvShape { block_tokens: options.block_tokens.max(1), blocks };
        let layout = Layout::new(&gpu, graph, &program, weights, kv_shape)?;
        layout.write_identity_block_table(&gpu)?;
        let find = |name: &str, list: Vec<(String, NodeId)>| -> Result<u64, CudaError> {
            let id = list.iter().find(|(n, _)| n == name).map(|(_, id)| *id);
            let id = id.ok_or_else(|| CudaError::Layout(format!("the decode graph has no {name:?}")))?;
            layout.address(graph, id)
        };
        let token_ids = find(TOKEN_IDS, graph.inputs())?;
        let positions = find(POSITIONS, graph.inputs())?;
        let outputs = graph.outputs().to_vec();
        let logits = find(LOGITS, outputs.clone())?;
        let next_token = find(NEXT_TOKEN, outputs.clone())?;
        let vocab = outputs
            .iter()
            .find(|(n, _)| n == LOGITS)
            .and_then(|(_, id)| graph.node(*id).shape.last()?.fixed())
            .ok_or_else(|| CudaError::Layout("logits must be [T, vocab] with a fixed vocab".into()))?;
        gpu.synchronize("uploading the weights")?;
        let pdl = options.pdl && gpu.arch() == smelt_codegen::Arch::Sm90;
        Ok(CudaDecoder {
            gpu,
            graph: graph.clone(),
            program,
            layout,
            functions,
            _modules: modules,
            token_ids,
            positions,
            logits: (logits, vocab),
            next_token,
            position: 0,
            cuda_graphs: options.cuda_graphs,
            pdl,
            graphs: HashMap::new(),
            jit,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    pub fn jit(&self) -> &JitReport {
        &self.jit
    }

    /// Device bytes by use.
    pub fn device_bytes(&self) -> [(&'static str, usize); 4] {
        self.layout.device_bytes()
    }

    /// Whether launches use programmatic dependent launch.
    pub fn pdl(&self) -> bool {
        self.pdl
    }

    /// Turns programmatic dependent launch on or off (on needs sm_90); captured graphs are
    /// dropped and recaptured.
    pub fn set_pdl(&mut self, on: bool) {
        self.pdl = on && self.gpu.arch() == smelt_codegen::Arch::Sm90;
        self.graphs.clear();
    }

    /// Tokens in the KV cache.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Tokens the KV cache can hold.
    pub fn capacity(&self) -> usize {
        self.layout.kv_shape.tokens()
    }

    /// Starts a new sequence (the cache's old rows are simply overwritten).
    pub fn reset(&mut self) {
        self.position = 0;
    }

    /// Runs one decode step on `token` at the next position; returns the greedy next token
    /// and, if `want_logits`, the logits.
    pub fn step(&mut self, token: u32, want_logits: bool) -> Result<StepOutput, CudaError> {
        let at = self.position;
        self.write_inputs(token)?;
        if self.cuda_graphs {
            let bucket = bucket(at + 1, self.capacity());
            if !self.graphs.contains_key(&bucket) {
                let graph = self.capture(bucket)?;
                self.graphs.insert(bucket, graph);
            }
            check(&format!("replaying the decode step at position {at}"), self.graphs[&bucket].launch())?;
        } else {
            let b = Bindings { batch: 1, new_tokens: 1, cached_tokens: at };
            for i in 0..self.layout.launches.len() {
                self.launch(i, &b)?;
            }
        }
        self.position += 1;
        self.read_outputs(want_logits, at)
    }

    /// Runs one decode step kernel by kernel with a device event between launches, and returns
    /// each launch's time in milliseconds (in schedule order): the profile of a step, without
    /// the launch gaps a captured graph removes.
    pub fn profile_step(&mut self, token: u32) -> Result<Vec<f64>, CudaError> {
        let at = self.position;
        self.write_inputs(token)?;
        let b = Bindings { batch: 1, new_tokens: 1, cached_tokens: at };
        let n = self.layout.launches.len();
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let events = (0..=n)
            .map(|_| check("creating an event", self.gpu.ctx.new_event(flags)))
            .collect::<Result<Vec<_>, _>>()?;
        check("recording an event", events[0].record(&self.gpu.stream))?;
        for (i, e) in events[1..].iter().enumerate() {
            self.launch(i, &b)?;
            check("recording an event", e.record(&self.gpu.stream))?;
        }
        self.gpu.synchronize(&format!("profiling the decode step at position {at}"))?;
        self.position += 1;
        events.windows(2).map(|w| check("reading an event", w[0].elapsed_ms(&w[1])).map(f64::from)).collect()
    }

    /// Writes the token, its position and `smelt_step` (stream-ordered before the kernels).
    pub(crate) fn write_inputs(&self, token: u32) -> Result<(), CudaError> {
        let at = self.position;
        if at >= self.capacity() {
            return Err(CudaError::KvFull { capacity: self.capacity() });
        }
        self.gpu.upload(self.token_ids, &[token as i32], "writing the token id")?;
        self.gpu.upload(self.positions, &[at as i32], "writing the position")?;
        self.layout.write_step(&self.gpu, at)
    }

    pub(crate) fn read_outputs(&self, want_logits: bool, at: usize) -> Result<StepOutput, CudaError> {
        let mut next = [0i32; 1];
        let what = format!("running the decode step at position {at}");
        self.gpu.download(&mut next, self.next_token, &what)?;
        let logits = if want_logits {
            let mut v = vec![0f32; self.logits.1];
            self.gpu.download(&mut v, self.logits.0, "reading the logits")?;
            Some(v)
        } else {
            None
        };
        Ok(StepOutput { next_token: next[0] as u32, logits })
    }

    /// Launches launch `i` with grids sized for bindings `b`.
    pub(crate) fn launch(&self, i: usize, b: &Bindings) -> Result<(), CudaError> {
        let l = &self.layout.launches[i];
        let kernel = &self.program.kernels[l.kernel];
        let mut values = l.params.clone();
        let mut args: Vec<*mut std::ffi::c_void> = values.iter_mut().map(|v| v as *mut u64 as *mut _).collect();
        let grid = kernel.launch.grid.blocks(b);
        // Every kernel waits on its predecessor (SMELT_GRID_WAIT) before touching what it wrote,
        // which is what makes the programmatic launch safe.
        let mut pdl: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        pdl.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        pdl.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: grid,
            gridDimY: 1,
            gridDimZ: 1,
            blockDimX: kernel.launch.block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: kernel.launch.shared_bytes,
            hStream: self.gpu.cu_stream(),
            attrs: &mut pdl,
            numAttrs: u32::from(self.pdl),
        };
        // SAFETY: every parameter is a device address inside this decoder's live buffers, in
        // the order and number of the kernel's parameter list (the calling convention); the
        // config and attribute outlive the call.
        let r = unsafe {
            sys::cuLaunchKernelEx(
                &config,
                self.functions[l.kernel].cu_function(),
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
            .result()
        };
        check(&format!("launching {} for {}", kernel.name, self.node_name(l.node)), r)
    }

    pub(crate) fn node_name(&self, id: NodeId) -> String {
        self.graph.node(id).name.clone().unwrap_or_else(|| format!("%{}", id.index()))
    }

    /// Captures the whole step with grids sized for contexts up to `bucket`.
    fn capture(&self, bucket: usize) -> Result<CudaGraph, CudaError> {
        let b = Bindings { batch: 1, new_tokens: 1, cached_tokens: bucket - 1 };
        let stream = &self.gpu.stream;
        check(
            "starting graph capture",
            stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
        )?;
        let launched = (0..self.layout.launches.len()).try_for_each(|i| self.launch(i, &b));
        let graph = check("ending graph capture", stream.end_capture(sys::CUgraphInstantiate_flags(0)));
        launched?;
        graph?.ok_or_else(|| CudaError::Unsupported("graph capture recorded nothing".into()))
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
