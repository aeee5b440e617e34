//! Where every value of a decode step lives on the device: weights and constants in one
//! parameter buffer, activations in one arena placed by the memory plan, the KV caches in one
//! paged pool, and the step's run-time values (`smelt_step` and its block table). Resolves
//! each launch's parameter list to device addresses once, so a step only writes a few scalars.

use std::collections::HashMap;

use smelt_codegen::{resolve_view, Params, Program};
use smelt_ir::{Bindings, DType, Data, Graph, NodeId, Op, Tensor, WeightSource};
use smelt_passes::{plan_memory, ARENA_ALIGN};

use super::device::{DeviceBuffer, Gpu};
use super::CudaError;

fn align(n: usize) -> usize {
    n.div_ceil(ARENA_ALIGN) * ARENA_ALIGN
}

/// `values` in `dtype`'s storage, little-endian.
pub(crate) fn storage_bytes(t: &Tensor, dtype: DType) -> Vec<u8> {
    match t.data() {
        Data::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::F32(v) => match dtype {
            DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            DType::BF16 => v.iter().flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes()).collect(),
            DType::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes()).collect(),
            DType::I32 => v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect(),
        },
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

/// One launch, resolved: the function index and its parameters' values (device addresses).
pub(crate) struct ResolvedLaunch {
    pub kernel: usize,
    pub node: NodeId,
    /// Device addresses, the step pointer last.
    pub params: Vec<u64>,
}

/// Device memory of one decode program.
pub struct Layout {
    pub(crate) parameters: DeviceBuffer,
    pub(crate) arena: DeviceBuffer,
    pub(crate) kv: DeviceBuffer,
    pub(crate) scratch: DeviceBuffer,
    /// `smelt_step` at offset 0, the block table at offset 256.
    pub(crate) step: DeviceBuffer,
    pub(crate) kv_shape: KvShape,
    /// Address of each value that has its own storage (weights, constants, arena buffers,
    /// caches), by node index.
    pub(crate) homes: HashMap<usize, u64>,
    pub(crate) launches: Vec<ResolvedLaunch>,
}

pub(crate) const BLOCK_TABLE_OFFSET: u64 = 256;

/// Names a value for errors.
fn label(g: &Graph, id: NodeId) -> String {
    g.node(id).name.clone().unwrap_or_else(|| format!("%{}", id.index()))
}

impl Layout {
    /// Allocates and fills the device memory for `program` (emitted from `graph`) with
    /// `weights`, and a KV pool of `kv_shape`.
    pub fn new(
        gpu: &Gpu,
        graph: &Graph,
        program: &Program,
        weights: &dyn WeightSource,
        kv_shape: KvShape,
    ) -> Result<Layout, CudaError> {
        // Parameters: every weight and constant the launches read, in one buffer.
        let mut param_nodes: Vec<NodeId> = Vec::new();
        for id in graph.node_ids() {
            if matches!(graph.node(id).op, Op::Weight { .. } | Op::Constant { .. }) {
                param_nodes.push(id);
            }
        }
        let bytes_of = |id: NodeId| {
            let n = graph.node(id);
            n.shape.fixed_volume().map(|v| v * n.dtype.size_bytes())
        };
        let mut offsets = Vec::new();
        let mut total = 0;
        for &id in &param_nodes {
            let bytes = bytes_of(id)
                .ok_or_else(|| CudaError::Layout(format!("{}: parameter shape is not fixed", label(graph, id))))?;
            offsets.push(total);
            total += align(bytes);
        }
        let parameters = gpu.alloc(total, "weights")?;
        let mut homes = HashMap::new();
        for (&id, &offset) in param_nodes.iter().zip(&offsets) {
            let node = graph.node(id);
            let host = match &node.op {
                Op::Weight { name } => weights
                    .weight(name)
                    .cloned()
                    .ok_or_else(|| CudaError::Layout(format!("weight {name} was not loaded")))?,
                Op::Constant { values } => {
                    let shape = node.shape.resolve(&Bindings::default());
                    Tensor::from_f32(node.dtype, shape, values.to_vec())
                }
                _ => unreachable!("filtered above"),
            };
            let bytes = storage_bytes(&host, node.dtype);
            let addr = parameters.ptr() + offset as u64;
            gpu.upload(addr, &bytes, &format!("uploading {}", label(graph, id)))?;
            homes.insert(id.index(), addr);
        }

        // Activations: the memory plan's arena at T = 1.
        let plan = plan_memory(graph, &Bindings { batch: 1, new_tokens: 1, cached_tokens: 0 });
        let arena = gpu.alloc(plan.arena_bytes, "the activation arena")?;
        for b in &plan.buffers {
            homes.insert(b.node, arena.ptr() + b.offset as u64);
        }

        // KV caches: the state inputs (graph inputs the graph also outputs), each a
        // [blocks, block_tokens, rows...] slab of the pool.
        let outputs: Vec<&str> = graph.outputs().iter().map(|(n, _)| n.as_str()).collect();
        let mut caches = Vec::new();
        for (name, id) in graph.inputs() {
            if outputs.contains(&name.as_str()) {
                let node = graph.node(id);
                let row: Option<usize> = node.shape.dims()[1..].iter().map(|d| d.fixed()).product();
                let row = row.ok_or_else(|| CudaError::Layout(format!("cache {name}: rows are not a fixed size")))?;
                caches.push((id, row * node.dtype.size_bytes()));
            }
        }
        let slab = |row_bytes: usize| align(row_bytes * kv_shape.tokens());
        let kv_bytes: usize = caches.iter().map(|&(_, r)| slab(r)).sum();
        let kv = gpu.alloc(kv_bytes, &format!("the KV cache ({} tokens)", kv_shape.tokens()))?;
        let mut at = kv.ptr();
        for &(id, row_bytes) in &caches {
            homes.insert(id.index(), at);
            at += slab(row_bytes) as u64;
        }

        // Attention scratch, sized for the longest context the pool holds.
        let scratch_bytes = program
            .launches
            .iter()
            .filter_map(|s| match s.params {
                Params::AttentionSplit(spec) => {
                    Some(smelt_codegen::kernels::decode_attention_scratch_bytes(&spec, kv_shape.tokens(), 1))
                }
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let scratch = gpu.alloc(scratch_bytes, "attention scratch")?;
        let step = gpu.alloc(BLOCK_TABLE_OFFSET as usize + 4 * kv_shape.blocks, "the step parameters")?;

        let mut layout = Layout { parameters, arena, kv, scratch, step, kv_shape, homes, launches: Vec::new() };
        for s in &program.launches {
            let addr = |id: NodeId| layout.address(graph, id);
            let out = addr(s.node_id)?;
            let ins = s.operand_ids.iter().map(|&x| addr(x)).collect::<Result<Vec<_>, _>>()?;
            let mut params = match s.params {
                Params::Standard => [ins, vec![out]].concat(),
                Params::AttentionSplit(_) => [ins, vec![out, layout.scratch.ptr()]].concat(),
                Params::AttentionCombine(_) => vec![layout.scratch.ptr(), out],
            };
            params.push(layout.step.ptr());
            layout.launches.push(ResolvedLaunch { kernel: s.kernel, node: s.node_id, params });
        }
        Ok(layout)
    }

    /// The device address a kernel is given for value `id`: the storage under any views (the
    /// kernel applies the view), and for a cache append the cache itself.
    pub(crate) fn address(&self, graph: &Graph, id: NodeId) -> Result<u64, CudaError> {
        let base = self.storage_of(graph, id);
        self.homes
            .get(&base.index())
            .copied()
            .ok_or_else(|| CudaError::Layout(format!("{} has no device storage", label(graph, id))))
    }

    /// The node whose storage holds `id`'s value.
    pub(crate) fn storage_of(&self, graph: &Graph, id: NodeId) -> NodeId {
        let (mut base, _) = resolve_view(graph, id);
        while let Some(k) = graph.node(base).op.kv_cache_operand() {
            base = resolve_view(graph, graph.operands(base)[k]).0;
        }
        base
    }

    /// Writes the block table: one sequence whose logical block `i` is physical block `i`.
    pub(crate) fn write_identity_block_table(&self, gpu: &Gpu) -> Result<(), CudaError> {
        let table: Vec<u32> = (0..self.kv_shape.blocks as u32).collect();
        gpu.upload(self.step.ptr() + BLOCK_TABLE_OFFSET, &table, "writing the block table")
    }

    /// Writes `smelt_step` for one new token after `cached` cached ones.
    pub(crate) fn write_step(&self, gpu: &Gpu, cached: usize) -> Result<(), CudaError> {
        let table = self.step.ptr() + BLOCK_TABLE_OFFSET;
        // struct { u32 batch, new_tokens, cached_tokens, block_tokens; const u32* block_table; }
        let words: [u32; 6] =
            [1, 1, cached as u32, self.kv_shape.block_tokens as u32, table as u32, (table >> 32) as u32];
        gpu.upload(self.step.ptr(), &words, "writing the step parameters")
    }

    /// Bytes on the device: parameters, arena, KV pool, scratch.
    pub fn device_bytes(&self) -> [(&'static str, usize); 4] {
        [
            ("weights", self.parameters.bytes()),
            ("arena", self.arena.bytes()),
            ("kv cache", self.kv.bytes()),
            ("scratch", self.scratch.bytes()),
        ]
    }
}
