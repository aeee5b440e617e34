//! The CPU backend's paged KV cache: every state cache of a graph (a layer's keys or values)
//! cut into blocks of `block_tokens` tokens, addressed through a sequence's block table, as
//! the GPU's pool is. Sequences share a block by listing it in their tables (prefix caching).
//!
//! `ir::eval` reads a cache as one contiguous tensor, so a step gathers the sequence's cached
//! rows from its blocks, evaluates, and writes the new rows back: a copy per step that the
//! oracle can afford. A block's storage is allocated when first written, so a budget sized
//! for many sequences costs memory only for the blocks in use.

use std::collections::HashMap;

use smelt_ir::{DType, EvalError, Graph, Tensor};

use crate::cpu::{HostWeights, MODEL_EVAL};

#[derive(Debug, thiserror::Error)]
pub enum PagedKvError {
    #[error("state cache {name}: per-token shape {shape} is not fixed")]
    TokenShape { name: String, shape: String },
    #[error("the graph has no KV-cache inputs to page")]
    NoCaches,
    #[error("graph input {0} is not one of the paged caches")]
    UnknownCache(String),
    #[error("the block table covers {have} tokens, the step needs {need}")]
    TableTooShort { have: usize, need: usize },
    #[error("block {block} is outside the pool of {blocks} blocks")]
    BadBlock { block: u32, blocks: usize },
    #[error("block {block} is read before anything was written to it")]
    Unwritten { block: u32 },
    #[error(transparent)]
    Eval(#[from] EvalError),
}

struct PagedCache {
    name: String,
    dtype: DType,
    /// One token's shape (`[kv_heads, head_dim]`) and its element count.
    token_dims: Vec<usize>,
    row: usize,
    /// Per block: `block_tokens * row` values, empty until first written. Grown to the
    /// highest block written so far, so bookkeeping follows use, not the pool's size.
    blocks: Vec<Vec<f32>>,
}

pub struct PagedKv {
    block_tokens: usize,
    blocks: usize,
    caches: Vec<PagedCache>,
}

impl PagedKv {
    /// A pool of `blocks` blocks for the KV caches of `graph` (the inputs of that role).
    pub fn for_graph(graph: &Graph, blocks: usize, block_tokens: usize) -> Result<PagedKv, PagedKvError> {
        let mut caches = Vec::new();
        for (name, id) in graph.kv_cache_inputs() {
            let node = graph.node(id);
            let token_dims: Option<Vec<usize>> = node.shape.dims()[1..].iter().map(|d| d.fixed()).collect();
            let token_dims = token_dims
                .ok_or_else(|| PagedKvError::TokenShape { name: name.clone(), shape: node.shape.to_string() })?;
            let row = token_dims.iter().product();
            caches.push(PagedCache { name, dtype: node.dtype, token_dims, row, blocks: Vec::new() });
        }
        if caches.is_empty() {
            return Err(PagedKvError::NoCaches);
        }
        Ok(PagedKv { block_tokens, blocks, caches })
    }

    pub fn block_tokens(&self) -> usize {
        self.block_tokens
    }

    /// Runs `graph` for one sequence whose first `cached` tokens are in the blocks of `table`:
    /// supplies those rows as the state inputs, writes the step's new rows after them, and
    /// returns the graph's other outputs.
    pub fn run(
        &mut self,
        graph: &Graph,
        weights: &HostWeights,
        inputs: HashMap<String, Tensor>,
        table: &[u32],
        cached: usize,
    ) -> Result<HashMap<String, Tensor>, PagedKvError> {
        self.run_rank(graph, weights, inputs, table, cached, None)
    }

    /// [`PagedKv::run`] of one rank's graph of a tensor-parallel group (each rank keeps a pool
    /// of its own KV heads), exchanging through `collective`.
    pub fn run_rank(
        &mut self,
        graph: &Graph,
        weights: &HostWeights,
        mut inputs: HashMap<String, Tensor>,
        table: &[u32],
        cached: usize,
        collective: Option<&dyn smelt_ir::Collective>,
    ) -> Result<HashMap<String, Tensor>, PagedKvError> {
        for (name, _) in graph.inputs() {
            if inputs.contains_key(&name) {
                continue;
            }
            let cache = self.caches.iter().find(|c| c.name == name).ok_or(PagedKvError::UnknownCache(name))?;
            inputs.insert(cache.name.clone(), self.gather(cache, table, cached)?);
        }
        let mut out = smelt_ir::eval_rank(graph, inputs, weights, MODEL_EVAL, collective, &mut || {})?;
        for c in 0..self.caches.len() {
            let Some(all) = out.remove(&self.caches[c].name) else { continue };
            let values = all.f32s().map(|v| v.to_vec()).unwrap_or_else(|| all.to_f32_vec());
            self.scatter(c, table, cached, &values)?;
        }
        Ok(out)
    }

    /// The first `tokens` rows of `cache` along `table`, as one tensor.
    fn gather(&self, cache: &PagedCache, table: &[u32], tokens: usize) -> Result<Tensor, PagedKvError> {
        let b = self.block_tokens;
        self.check_table(table, tokens)?;
        let mut values = Vec::with_capacity(tokens * cache.row);
        for start in (0..tokens).step_by(b) {
            let block = table[start / b];
            let data = cache.blocks.get(block as usize).map_or(&[][..], Vec::as_slice);
            if data.is_empty() {
                return Err(PagedKvError::Unwritten { block });
            }
            let n = (tokens - start).min(b);
            values.extend_from_slice(&data[..n * cache.row]);
        }
        let mut shape = vec![tokens];
        shape.extend_from_slice(&cache.token_dims);
        Ok(Tensor::from_f32(cache.dtype, shape, values))
    }

    /// Writes rows `from..` of `all` (a whole `[P + T, ..]` cache) into their blocks.
    fn scatter(&mut self, c: usize, table: &[u32], from: usize, all: &[f32]) -> Result<(), PagedKvError> {
        let (b, row) = (self.block_tokens, self.caches[c].row);
        let tokens = all.len() / row.max(1);
        self.check_table(table, tokens)?;
        for p in from..tokens {
            let blocks = &mut self.caches[c].blocks;
            let block = table[p / b] as usize;
            if block >= blocks.len() {
                blocks.resize_with(block + 1, Vec::new);
            }
            let data = &mut blocks[block];
            if data.is_empty() {
                data.resize(b * row, 0.0);
            }
            let at = (p % b) * row;
            data[at..at + row].copy_from_slice(&all[p * row..(p + 1) * row]);
        }
        Ok(())
    }

    fn check_table(&self, table: &[u32], tokens: usize) -> Result<(), PagedKvError> {
        let have = table.len() * self.block_tokens;
        if have < tokens {
            return Err(PagedKvError::TableTooShort { have, need: tokens });
        }
        match table[..tokens.div_ceil(self.block_tokens)].iter().find(|&&id| id as usize >= self.blocks) {
            Some(&block) => Err(PagedKvError::BadBlock { block, blocks: self.blocks }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use smelt_ir::{shape, Builder, KvPart, Op, Role, Sym};

    use super::*;

    /// One key cache `c` of `[P, 1, 2]` that appends `x` (`[T, 1, 2]`) and outputs the sum of all its rows.
    fn graph() -> Graph {
        let mut b = Builder::new();
        let x = b.input("x", DType::F32, shape![Sym::NewTokens, 1, 2]);
        let role = Role::KvCache { layer: 0, part: KvPart::Key };
        let cache = b.input_as("c", DType::F32, shape![Sym::CachedTokens, 1, 2], role);
        let all = b.op("append", Op::KvAppend, &[cache, x]).unwrap();
        let sum = b.reduce("sum", smelt_ir::ReduceOp::Sum, all, 0).unwrap();
        b.output("c", all).unwrap();
        b.output("sum", sum).unwrap();
        b.finish().unwrap()
    }

    fn step(kv: &mut PagedKv, table: &[u32], cached: usize, rows: &[f32]) -> Result<Vec<f32>, PagedKvError> {
        let x = Tensor::from_f32(DType::F32, vec![rows.len() / 2, 1, 2], rows.to_vec());
        let out = kv.run(&graph(), &HostWeights::default(), HashMap::from([("x".to_string(), x)]), table, cached)?;
        Ok(out["sum"].to_f32_vec())
    }

    #[test]
    fn rows_written_through_one_table_are_read_back_through_another_sharing_blocks() {
        let mut kv = PagedKv::for_graph(&graph(), 4, 2).unwrap();
        // Sequence A: tokens 0..3 in blocks 2 (full) and 0.
        assert_eq!(step(&mut kv, &[2, 0], 0, &[1., 1., 2., 2., 3., 3.]).unwrap(), [6., 6.]);
        assert_eq!(step(&mut kv, &[2, 0], 3, &[4., 4.]).unwrap(), [10., 10.]);
        // Sequence B shares A's full first block and continues in block 3.
        assert_eq!(step(&mut kv, &[2, 3], 2, &[10., 20.]).unwrap(), [13., 23.]);
        // A is untouched by B's write.
        assert_eq!(step(&mut kv, &[2, 0, 1], 4, &[0., 0.]).unwrap(), [10., 10.]);
    }

    #[test]
    fn bad_tables_are_errors() {
        let mut kv = PagedKv::for_graph(&graph(), 2, 2).unwrap();
        assert!(matches!(step(&mut kv, &[0], 0, &[1., 1., 2., 2., 3., 3.]), Err(PagedKvError::TableTooShort { .. })));
        assert!(matches!(step(&mut kv, &[5], 0, &[1., 1.]), Err(PagedKvError::BadBlock { block: 5, .. })));
        assert!(matches!(step(&mut kv, &[1], 1, &[1., 1.]), Err(PagedKvError::Unwritten { block: 1 })));
    }
}
