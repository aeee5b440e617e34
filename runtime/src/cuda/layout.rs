//! Where every value lives on the device: a model's weights ([`DeviceWeights`]) and paged KV
//! cache with its block table ([`KvPool`]), shared by its graphs; per graph ([`Layout`]) the
//! constants, one activation arena placed by the memory plan, attention scratch and
//! `smelt_step`. Each launch's parameter list is resolved to device addresses once, so a run
//! only writes a few scalars.

use std::collections::HashMap;

use smelt_codegen::{resolve_view, Params, Program, Scheduled};
use smelt_ir::{Bindings, DType, Data, Graph, NodeId, Op, Tensor};
use smelt_passes::{plan_memory, ARENA_ALIGN};

use super::device::{DeviceBuffer, Gpu};
use super::device_weights::DeviceWeights;
use super::CudaError;

pub(crate) fn align(n: usize) -> usize {
    n.div_ceil(ARENA_ALIGN) * ARENA_ALIGN
}

/// `values` in `dtype`'s storage, little-endian.
pub(crate) fn storage_bytes(t: &Tensor, dtype: DType) -> Vec<u8> {
    match (t.data(), dtype) {
        (Data::I32(v), _) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        (Data::Bf16(v), DType::BF16) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        (Data::F16(v), DType::F16) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        _ => {
            let v = t.floats();
            match dtype {
                DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                DType::BF16 => v.iter().flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes()).collect(),
                DType::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes()).collect(),
                DType::I32 => v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect(),
            }
        }
    }
}

/// A host tensor from device storage bytes.
pub(crate) fn tensor_from_storage(dtype: DType, shape: Vec<usize>, bytes: &[u8]) -> Tensor {
    let words = |n: usize| bytes.chunks_exact(n);
    match dtype {
        DType::I32 => Tensor::from_i32(shape, words(4).map(|w| i32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect()),
        DType::F32 => {
            Tensor::from_stored(dtype, shape, words(4).map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect())
        }
        DType::BF16 => Tensor::from_stored(
            dtype,
            shape,
            words(2).map(|w| half::bf16::from_le_bytes([w[0], w[1]]).to_f32()).collect(),
        ),
        DType::F16 => Tensor::from_stored(
            dtype,
            shape,
            words(2).map(|w| half::f16::from_le_bytes([w[0], w[1]]).to_f32()).collect(),
        ),
    }
}

/// The KV pool's shape: `blocks` blocks of `block_tokens` tokens for each of the caches.
#[derive(Clone, Copy, Debug)]
pub struct KvShape {
    pub block_tokens: usize,
    pub blocks: usize,
}

impl KvShape {
    pub fn tokens(&self) -> usize {
        self.block_tokens * self.blocks
    }
}

/// One launch, resolved: each kernel it may run (its own; a GEMM's GEMV at steps of few rows)
/// with its parameters' values (device addresses, the step pointer last).
pub(crate) struct ResolvedLaunch {
    /// The nodes it computes (several when co-launched).
    pub nodes: Vec<NodeId>,
    /// By function index.
    pub kernels: Vec<(usize, Vec<u64>)>,
}

impl ResolvedLaunch {
    /// The parameters of function `kernel`, one this launch may run (as
    /// `Scheduled::kernel_at` chooses).
    pub(crate) fn params(&self, kernel: usize) -> Result<&[u64], CudaError> {
        let found = self.kernels.iter().find(|(k, _)| *k == kernel).map(|(_, p)| &p[..]);
        found.ok_or_else(|| CudaError::Layout(format!("kernel {kernel} is not one this launch runs")))
    }
}

/// Names a value for errors and reports.
pub(crate) fn label(g: &Graph, id: NodeId) -> String {
    g.node(id).name.clone().unwrap_or_else(|| format!("%{}", id.index()))
}

/// Bytes of `smelt_step` (the prelude's struct, on a 64-bit device).
const STEP_BYTES: usize = 48;

/// The paged KV cache of one model: for each KV cache (a graph input with that role, which the
/// graph writes back under its name), a `[blocks, block_tokens, rows...]` slab; and the block table that
/// `smelt_step` points to. Shared by every graph of the model.
pub struct KvPool {
    buffer: DeviceBuffer,
    table: DeviceBuffer,
    pub(crate) shape: KvShape,
    by_name: HashMap<String, u64>,
}

impl KvPool {
    /// A pool of `shape` for the caches `graph` carries.
    pub fn new(gpu: &Gpu, graph: &Graph, shape: KvShape) -> Result<KvPool, CudaError> {
        let mut caches = Vec::new();
        for (name, id) in graph.kv_cache_inputs() {
            let node = graph.node(id);
            let row: Option<usize> = node.shape.dims()[1..].iter().map(|d| d.fixed()).product();
            let row = row.ok_or_else(|| CudaError::Layout(format!("cache {name}: rows are not a fixed size")))?;
            caches.push((name, row * node.dtype.size_bytes()));
        }
        let slab = |row_bytes: usize| align(row_bytes * shape.tokens());
        let bytes: usize = caches.iter().map(|(_, r)| slab(*r)).sum();
        let buffer = gpu.alloc(bytes, &format!("the KV cache ({} tokens)", shape.tokens()))?;
        let mut by_name = HashMap::new();
        let mut at = buffer.ptr();
        for (name, row_bytes) in caches {
            by_name.insert(name, at);
            at += slab(row_bytes) as u64;
        }
        let table = gpu.alloc(4 * shape.blocks, "the KV block table")?;
        let pool = KvPool { buffer, table, shape, by_name };
        pool.set_identity(gpu)?;
        Ok(pool)
    }

    /// One sequence owning the pool: its logical block i is physical block i.
    pub(crate) fn set_identity(&self, gpu: &Gpu) -> Result<(), CudaError> {
        let identity: Vec<u32> = (0..self.shape.blocks as u32).collect();
        gpu.upload(self.table.ptr(), &identity, "writing the block table")
    }

    /// A sequence's blocks, in order. The previous run has finished (every run ends by
    /// reading its token back), so no kernel still reads the old table.
    pub(crate) fn set_table(&self, gpu: &Gpu, table: &[u32]) -> Result<(), CudaError> {
        self.check_table(table).map_err(CudaError::Layout)?;
        gpu.upload(self.table.ptr(), table, "writing the block table")
    }

    /// Whether `table` can be a sequence's block table in this pool; if not, why.
    pub(crate) fn check_table(&self, table: &[u32]) -> Result<(), String> {
        let blocks = self.shape.blocks;
        if table.len() > blocks {
            return Err(format!("a block table of {} blocks for a pool of {blocks}", table.len()));
        }
        match table.iter().find(|&&b| b as usize >= blocks) {
            Some(b) => Err(format!("block {b} is outside the pool of {blocks} blocks")),
            None => Ok(()),
        }
    }

    pub fn bytes(&self) -> usize {
        self.buffer.bytes()
    }

    /// Sets every byte of every cache to 0xFF (NaN in every float type).
    pub(crate) fn poison(&self, gpu: &Gpu) -> Result<(), CudaError> {
        gpu.fill(self.buffer.ptr(), 0xff, self.buffer.bytes(), "poisoning the KV cache")
    }

    /// The device address of KV cache `name`'s slab (block 0, row 0).
    pub(crate) fn address(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).copied()
    }
}

/// Uploads `graph`'s constants (RoPE's inverse frequencies): small, one buffer per graph.
/// Records each one's address in `homes`.
fn upload_constants(gpu: &Gpu, graph: &Graph, homes: &mut HashMap<usize, u64>) -> Result<DeviceBuffer, CudaError> {
    let constants: Vec<NodeId> =
        graph.node_ids().filter(|&id| matches!(graph.node(id).op, Op::Constant { .. })).collect();
    let mut host_bytes: Vec<u8> = Vec::new();
    let mut offsets = Vec::new();
    for &id in &constants {
        let node = graph.node(id);
        let Op::Constant { values } = &node.op else { unreachable!("filtered above") };
        let t = Tensor::from_f32(node.dtype, node.shape.resolve(&Bindings::default()), values.to_vec());
        offsets.push(host_bytes.len());
        host_bytes.extend(storage_bytes(&t, node.dtype));
        host_bytes.resize(align(host_bytes.len()), 0);
    }
    let constants_buffer = gpu.alloc(host_bytes.len(), "constants")?;
    gpu.upload(constants_buffer.ptr(), &host_bytes, "uploading constants")?;
    for (&id, offset) in constants.iter().zip(offsets) {
        homes.insert(id.index(), constants_buffer.ptr() + offset as u64);
    }
    Ok(constants_buffer)
}

/// The scratch buffer the program's kernels share, sized for the longest context the pool
/// holds.
pub(crate) fn scratch_bytes(program: &Program, pool_tokens: usize, max_new_tokens: usize) -> usize {
    program
        .launches
        .iter()
        .filter_map(|s| match &s.params {
            Params::WritesScratch(scratch) | Params::SplitK { scratch, .. } => {
                Some(scratch.bytes(pool_tokens, max_new_tokens))
            }
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Bytes of the arrival counters the program's split-K GEMMs and merged attention share
/// (launches run one after another, and each leaves its counters at zero).
pub(crate) fn counter_bytes(program: &Program) -> usize {
    let words = program.launches.iter().filter_map(|s| match &s.params {
        Params::SplitK { counters, .. } => Some(*counters),
        _ => None,
    });
    words.max().unwrap_or(0) * 4
}

/// The node whose storage holds `id`'s value: the one under any views, and for a cache
/// append the cache itself.
pub(crate) fn storage_of(graph: &Graph, id: NodeId) -> NodeId {
    let (mut base, _) = resolve_view(graph, id);
    while let Some(k) = graph.node(base).op.kv_cache_operand() {
        base = resolve_view(graph, graph.operands(base)[k]).0;
    }
    base
}

/// Device memory of one graph's program: its constants, its activation arena (planned for up
/// to `max_new_tokens` new tokens), attention scratch and `smelt_step`; weights and the KV
/// cache come from the model's shared [`DeviceWeights`] and [`KvPool`].
pub struct Layout {
    _constants: DeviceBuffer,
    pub(crate) arena: DeviceBuffer,
    pub(crate) scratch: DeviceBuffer,
    /// Split-K arrival counters: zeroed once here, left zero by every launch; nothing else
    /// writes them (the check poisons the scratch buffer, not these).
    counters: DeviceBuffer,
    step: DeviceBuffer,
    table: u64,
    pub(crate) kv_shape: KvShape,
    pub(crate) max_new_tokens: usize,
    /// Address of each value that has its own storage (weights, constants, arena buffers,
    /// caches), by node index.
    pub(crate) homes: HashMap<usize, u64>,
    pub(crate) launches: Vec<ResolvedLaunch>,
}

impl Layout {
    /// Places `program` (emitted from `graph`) for up to `max_new_tokens` new tokens a run.
    pub fn new(
        gpu: &Gpu,
        graph: &Graph,
        program: &Program,
        weights: &DeviceWeights,
        kv: &KvPool,
        max_new_tokens: usize,
    ) -> Result<Layout, CudaError> {
        let mut homes = HashMap::new();
        let constants_buffer = upload_constants(gpu, graph, &mut homes)?;
        for (name, id) in graph.weights() {
            let addr =
                weights.address(&name).ok_or_else(|| CudaError::Layout(format!("weight {name} was not uploaded")))?;
            homes.insert(id.index(), addr);
        }
        for (name, id) in graph.inputs() {
            if let Some(addr) = kv.by_name.get(&name) {
                homes.insert(id.index(), *addr);
            }
        }

        // Activations: the memory plan's arena at the largest T.
        let plan = plan_memory(graph, &Bindings { batch: 1, new_tokens: max_new_tokens, cached_tokens: 0 });
        let arena = gpu.alloc(plan.arena_bytes, "the activation arena")?;
        for b in &plan.buffers {
            homes.insert(b.node, arena.ptr() + b.offset as u64);
        }

        let scratch =
            gpu.alloc(scratch_bytes(program, kv.shape.tokens(), max_new_tokens), "attention and split-K scratch")?;
        let counters = gpu.alloc(counter_bytes(program), "split-K counters")?;
        if counters.bytes() > 0 {
            gpu.fill(counters.ptr(), 0, counters.bytes(), "zeroing the split-K counters")?;
        }
        let step = gpu.alloc(STEP_BYTES, "the step parameters")?;

        let mut layout = Layout {
            _constants: constants_buffer,
            arena,
            scratch,
            counters,
            step,
            table: kv.table.ptr(),
            kv_shape: kv.shape,
            max_new_tokens,
            homes,
            launches: Vec::new(),
        };
        layout.launches = layout.resolve_launches(graph, program)?;
        Ok(layout)
    }

    /// Every launch of `program` with its parameters resolved to device addresses, the step
    /// pointer last.
    fn resolve_launches(&self, graph: &Graph, program: &Program) -> Result<Vec<ResolvedLaunch>, CudaError> {
        let mut launches = Vec::new();
        for s in &program.launches {
            let mut kernels = vec![(s.kernel, self.resolve_params(graph, s, &s.params)?)];
            if let Some(f) = &s.few_rows {
                kernels.push((f.kernel, self.resolve_params(graph, s, &f.params)?));
            }
            launches.push(ResolvedLaunch { nodes: s.node_ids().collect(), kernels });
        }
        Ok(launches)
    }

    /// The device addresses of a kernel of launch `s` with parameter list `list`.
    fn resolve_params(&self, graph: &Graph, s: &Scheduled, list: &Params) -> Result<Vec<u64>, CudaError> {
        let addr = |id: NodeId| self.address(graph, id);
        // Each node's operands, then its output.
        let mut params = Vec::new();
        for n in &s.nodes {
            for &x in &n.operand_ids {
                params.push(addr(x)?);
            }
            params.push(addr(n.node_id)?);
        }
        match list {
            Params::Standard => {}
            Params::WritesScratch(_) => params.push(self.scratch.ptr()),
            Params::ReadsScratch => params = vec![self.scratch.ptr(), params[params.len() - 1]],
            Params::SplitK { .. } => params.extend([self.scratch.ptr(), self.counters.ptr()]),
        }
        params.push(self.step.ptr());
        Ok(params)
    }

    /// The device address a kernel is given for value `id`: the storage under any views (the
    /// kernel applies the view), and for a cache append the cache itself.
    pub(crate) fn address(&self, graph: &Graph, id: NodeId) -> Result<u64, CudaError> {
        let base = storage_of(graph, id);
        self.homes
            .get(&base.index())
            .copied()
            .ok_or_else(|| CudaError::Layout(format!("{} has no device storage", label(graph, id))))
    }

    /// Writes `smelt_step` for `new_tokens` new tokens of one sequence after `cached` cached ones.
    pub(crate) fn write_step(&self, gpu: &Gpu, new_tokens: usize, cached: usize) -> Result<(), CudaError> {
        self.write_step_words(gpu, new_tokens, cached, None)
    }

    /// Writes `smelt_step` for a batched decode step: `rows` sequences, the longest at
    /// `max_position`, each row's position at `row_positions` and its block table at
    /// `row_tables + row * stride` (device addresses of u32 arrays).
    pub(crate) fn write_rows_step(
        &self,
        gpu: &Gpu,
        rows: usize,
        max_position: usize,
        row_positions: u64,
        row_tables: u64,
        stride: usize,
    ) -> Result<(), CudaError> {
        self.write_step_words(gpu, rows, max_position, Some((row_positions, row_tables, stride)))
    }

    fn write_step_words(
        &self,
        gpu: &Gpu,
        new_tokens: usize,
        cached: usize,
        rows: Option<(u64, u64, usize)>,
    ) -> Result<(), CudaError> {
        let (positions, tables, stride) = rows.unwrap_or((0, 0, 0));
        let lo_hi = |p: u64| [p as u32, (p >> 32) as u32];
        // struct { u32 batch, new_tokens, cached_tokens, block_tokens; const u32* block_table;
        //          const u32* row_positions; const u32* row_tables; u32 table_stride, reserved; }
        let mut words: Vec<u32> = vec![1, new_tokens as u32, cached as u32, self.kv_shape.block_tokens as u32];
        words.extend(lo_hi(self.table));
        words.extend(lo_hi(positions));
        words.extend(lo_hi(tables));
        words.extend([stride as u32, 0]);
        debug_assert_eq!(words.len() * 4, STEP_BYTES);
        gpu.upload(self.step.ptr(), &words, "writing the step parameters")
    }

    /// The device address of `smelt_step`, every launch's last parameter.
    pub(crate) fn step_ptr(&self) -> u64 {
        self.step.ptr()
    }

    /// Bytes of this graph's own device memory (arena, scratch, counters).
    pub fn own_bytes(&self) -> usize {
        self.arena.bytes() + self.scratch.bytes() + self.counters.bytes()
    }
}
