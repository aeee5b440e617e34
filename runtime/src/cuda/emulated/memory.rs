//! Where an emulated run's values live: a host buffer per value, the paged KV pool of the
//! run's sequences through their block tables, and `smelt_step`.

use std::collections::HashMap;

use smelt_emulate::{Buffer, Pointer};
use smelt_ir::{Bindings, Graph, NodeId, Op, Role, Tensor, WeightSource};

use super::super::layout::{counter_bytes, scratch_bytes, storage_bytes};
use super::super::CudaError;
use super::Part;

/// One sequence of a batched step: its KV caches (by cache input name, `[position, ...]`
/// each, as the CPU backend keeps them), its new token and that token's position.
pub struct BatchRow {
    pub caches: HashMap<String, Tensor>,
    pub token: u32,
    pub position: usize,
}

/// Whose tokens a run's rows are.
pub(super) enum Rows<'a> {
    /// One sequence: `tokens` after `at` cached ones.
    One { caches: &'a HashMap<String, Tensor>, tokens: &'a [u32], at: usize },
    /// Each row a sequence of its own (a batched decode step).
    Own(&'a [BatchRow]),
}

/// A sequence's part of the pool: its caches, the rows they hold, and its block table.
struct Paged<'a> {
    caches: &'a HashMap<String, Tensor>,
    cached: usize,
    table: Vec<u32>,
}

impl Rows<'_> {
    pub(super) fn bindings(&self) -> Bindings {
        match self {
            Rows::One { tokens, at, .. } => Bindings { batch: 1, new_tokens: tokens.len(), cached_tokens: *at },
            Rows::Own(rows) => Bindings {
                batch: 1,
                new_tokens: rows.len(),
                cached_tokens: rows.iter().map(|r| r.position).max().unwrap_or(0),
            },
        }
    }

    fn ids_and_positions(&self) -> (Vec<i32>, Vec<i32>) {
        match self {
            Rows::One { tokens, at, .. } => {
                (tokens.iter().map(|&t| t as i32).collect(), (*at..at + tokens.len()).map(|p| p as i32).collect())
            }
            Rows::Own(rows) => {
                (rows.iter().map(|r| r.token as i32).collect(), rows.iter().map(|r| r.position as i32).collect())
            }
        }
    }

    /// The pool's sequences: one through the identity table; rows of their own each through
    /// its own blocks listed in reverse (so that no table is the identity).
    fn paged(&self, block_tokens: usize) -> Vec<Paged<'_>> {
        match self {
            Rows::One { caches, tokens, at } => {
                let blocks = (at + tokens.len()).div_ceil(block_tokens) as u32;
                vec![Paged { caches, cached: *at, table: (0..blocks).collect() }]
            }
            Rows::Own(rows) => {
                let mut base = 0;
                rows.iter()
                    .map(|r| {
                        let blocks = (r.position + 1).div_ceil(block_tokens) as u32;
                        let table = (base..base + blocks).rev().collect();
                        base += blocks;
                        Paged { caches: &r.caches, cached: r.position, table }
                    })
                    .collect()
            }
        }
    }
}

/// Buffer ids by storage node, and the fixed buffers.
pub(super) struct Memory {
    pub(super) buffers: Vec<Buffer>,
    pub(super) pointers: Vec<Pointer>,
    pub(super) home: HashMap<usize, usize>,
    pub(super) scratch: usize,
    pub(super) counters: usize,
    pub(super) step: usize,
    /// Tokens the KV pool holds (every sequence's blocks): the cache's capacity.
    pub(super) pool_tokens: usize,
}

impl Memory {
    /// Moves every buffer id up by `by` (its buffers then follow `by` others of a run).
    pub(super) fn shift(&mut self, by: usize) {
        for id in self.home.values_mut().chain([&mut self.scratch, &mut self.counters, &mut self.step]) {
            *id += by;
        }
        for p in &mut self.pointers {
            p.buffer += by;
            p.target += by;
        }
    }
}

/// Places every value `part`'s launches touch (their storage nodes), with a KV pool of the
/// rows' blocks, and unused ones after them up to `pool_at_least` tokens.
pub(super) fn place(
    part: Part<'_>,
    weights: &dyn WeightSource,
    rows: &Rows<'_>,
    block_tokens: usize,
    pool_at_least: usize,
) -> Result<Memory, CudaError> {
    let (graph, program, storages) = (part.graph, part.program, &part.storages());
    let bt = block_tokens.max(1);
    let b = rows.bindings();
    let (ids, positions) = rows.ids_and_positions();
    let paged = rows.paged(bt);
    let used_blocks = paged.iter().map(|p| p.table.len()).sum::<usize>();
    let pool_tokens = used_blocks.max(pool_at_least.div_ceil(bt)) * bt;
    let (mut buffers, mut home) = (Vec::new(), HashMap::new());
    let words = |v: &[i32]| Buffer::Bytes(v.iter().flat_map(|x| x.to_le_bytes()).collect());
    for &id in storages {
        let node = graph.node(id);
        let buffer = match &node.op {
            Op::Weight { name } => {
                let t =
                    weights.weight(name).ok_or_else(|| CudaError::Layout(format!("weight {name} was not loaded")))?;
                Buffer::Bytes(storage_bytes(t, node.dtype))
            }
            Op::Constant { values } => {
                let t = Tensor::from_f32(node.dtype, node.shape.resolve(&Bindings::default()), values.to_vec());
                Buffer::Bytes(storage_bytes(&t, node.dtype))
            }
            Op::Input { name } => match graph.role(name) {
                Role::TokenIds => words(&ids),
                Role::Positions => words(&positions),
                role if role.is_kv_cache() => cache_pool(graph, id, name, &paged, bt, pool_tokens)?,
                role => return Err(CudaError::Layout(format!("input {name} ({role}) has no emulated value"))),
            },
            _ => Buffer::Unwritten(node.shape.resolve(&b).iter().product::<usize>() * node.dtype.size_bytes()),
        };
        home.insert(id.index(), buffers.len());
        buffers.push(buffer);
    }
    let (scratch_bytes, counter_bytes) = (scratch_bytes(program, pool_tokens, b.new_tokens), counter_bytes(program));
    let (scratch, counters, table, step) = (buffers.len(), buffers.len() + 1, buffers.len() + 2, buffers.len() + 3);
    buffers.push(Buffer::Unwritten(scratch_bytes.max(4)));
    // Split-K arrival counters: zero before the first launch, left zero by each.
    buffers.push(Buffer::Bytes(vec![0; counter_bytes.max(4)]));
    // The tables, each padded to the longest (the stride), one spare entry.
    let stride = paged.iter().map(|p| p.table.len()).max().unwrap_or(0);
    let mut table_words: Vec<u32> = Vec::new();
    for p in &paged {
        table_words.extend(p.table.iter().copied().chain(std::iter::repeat(0)).take(stride));
    }
    table_words.push(0);
    buffers.push(Buffer::Bytes(table_words.iter().flat_map(|w| w.to_le_bytes()).collect()));
    // smelt_step: {batch, new_tokens, cached_tokens, block_tokens, block_table, row_positions,
    // row_tables, table_stride, reserved}; a batched step points at the row arrays.
    let own = matches!(rows, Rows::Own(_));
    let mut step_bytes: Vec<u8> =
        [1, b.new_tokens as u32, b.cached_tokens as u32, bt as u32].iter().flat_map(|w| w.to_le_bytes()).collect();
    step_bytes.extend([0u8; 24]);
    step_bytes.extend((if own { stride as u32 } else { 0 }).to_le_bytes());
    step_bytes.extend(0u32.to_le_bytes());
    buffers.push(Buffer::Bytes(step_bytes));
    let at = |offset, target| Pointer { buffer: step, offset, target, target_offset: 0 };
    let mut pointers = vec![at(16, table)];
    if own {
        let row_positions = buffers.len();
        buffers.push(words(&positions));
        pointers.extend([at(24, row_positions), at(32, table)]);
    }
    Ok(Memory { buffers, pointers, home, scratch, counters, step, pool_tokens })
}

/// A KV cache input's pool of `pool_tokens` rows: each sequence's cached rows (as the CPU
/// backend holds them) through its table; every other row unwritten (all ones).
fn cache_pool(
    graph: &Graph,
    id: NodeId,
    name: &str,
    paged: &[Paged<'_>],
    block_tokens: usize,
    pool_tokens: usize,
) -> Result<Buffer, CudaError> {
    let node = graph.node(id);
    let row: usize = node.shape.dims()[1..].iter().map(|d| d.fixed().unwrap_or(0)).product();
    let width = row * node.dtype.size_bytes();
    let mut bytes = vec![0xffu8; pool_tokens * width];
    for p in paged.iter().filter(|p| p.cached > 0) {
        let t = p.caches.get(name);
        let t = t.ok_or_else(|| CudaError::Layout(format!("cache {name}: no rows for {} cached tokens", p.cached)))?;
        let rows = storage_bytes(t, node.dtype);
        if rows.len() != p.cached * width {
            return Err(CudaError::Layout(format!(
                "cache {name}: {} bytes for {} rows of {width}",
                rows.len(),
                p.cached
            )));
        }
        for (pos, r) in rows.chunks(width).enumerate() {
            let at = (p.table[pos / block_tokens] as usize * block_tokens + pos % block_tokens) * width;
            bytes[at..at + width].copy_from_slice(r);
        }
    }
    Ok(Buffer::Bytes(bytes))
}
