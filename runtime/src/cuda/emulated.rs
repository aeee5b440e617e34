//! A whole generated program (or every rank's of a tensor-parallel group: `ranks.rs`) run
//! through the CPU emulator (`smelt-emulate`) as the GPU would run it, node by node against
//! `ir::eval` with the GPU check's tolerances ([`super::check`]).
//!
//! Every value gets a host buffer of exactly its size (AddressSanitizer sees a kernel that
//! reads or writes past one): weights, constants, each activation, the KV caches (a pool of
//! whole blocks: one sequence's through the identity block table, a batched step's rows each
//! through blocks of their own in reverse; rows past a context left unwritten), the attention
//! and split-K scratch, the split-K arrival counters (zero) and `smelt_step` (`memory.rs`).
//! Unwritten memory holds all ones (NaN in every float type; under AddressSanitizer a second
//! run fills it otherwise and reports a dump that changes). Before a node's kernels run its
//! operands are dumped, after them its output, so each node is checked on the operands it saw
//! even when a kernel works in place. With programmatic dependent launch, each launch sees
//! what the launch before it wrote only after its grid-dependency wait.

use std::collections::HashMap;

use smelt_codegen::{Params, Program};
use smelt_emulate::{Arg, Launch, Schedule, Step};
use smelt_ir::{eval, Bindings, Graph, Node, NodeId, Op, Role, Tensor, WeightSource};

use super::check::{compare, concrete, CheckedRun};
use super::layout::{label, storage_of, tensor_from_storage};
use super::CudaError;

mod memory;
mod ranks;

pub use memory::BatchRow;
use memory::Memory;
pub use ranks::EmulatedRanks;

/// How an emulated run is laid out and scheduled.
#[derive(Clone, Copy, Debug)]
pub struct EmulationOptions {
    /// Tokens per block of the paged KV cache.
    pub block_tokens: usize,
    pub schedule: Schedule,
    /// Programmatic dependent launch: each launch sees the previous one's outputs only after
    /// its grid-dependency wait.
    pub pdl: bool,
    /// Decode and batched steps launch with the grids of the CUDA graph that replays them on
    /// the GPU: sized for the context's bucket (a power of two from 256, at most the pool),
    /// not for the step's own context. Prefill runs launch as they do on the GPU, sized for
    /// their own.
    pub graph_grids: bool,
}

/// A program's steps in a run: the launches with a dump of each node's operands before and
/// its output after, each node's dumps, and where each of the program's exchanges falls (an
/// index into `steps`: the exchange runs before that step).
struct Steps {
    steps: Vec<Step>,
    nodes: Vec<NodeRun>,
    exchanges: Vec<usize>,
}

/// One node's kernels in a run: the dumps of its operands' buffers (by storage node) and
/// of its output.
struct NodeRun {
    node: NodeId,
    operands: HashMap<usize, usize>,
    output: usize,
    kernels: Vec<String>,
}

/// One program over its graph: a whole model's, or one rank's of a group.
#[derive(Clone, Copy)]
struct Part<'a> {
    graph: &'a Graph,
    program: &'a Program,
}

impl Part<'_> {
    fn storage_of(&self, id: NodeId) -> NodeId {
        storage_of(self.graph, id)
    }

    /// Every node whose buffer a launch reads or writes.
    fn storages(&self) -> Vec<NodeId> {
        let mut storages: Vec<NodeId> = Vec::new();
        for n in self.program.launches.iter().flat_map(|s| &s.nodes) {
            for &x in n.operand_ids.iter().chain([&n.node_id]) {
                let base = self.storage_of(x);
                if !storages.contains(&base) {
                    storages.push(base);
                }
            }
        }
        storages
    }

    /// The launches with a dump of each node's operands before and its output after (each
    /// launch's kernel is `kernel_of` its index in the program; its grid sized for
    /// `grids`). An exchange's output is what the first launch after it waits for.
    fn steps(
        &self,
        memory: &Memory,
        b: &Bindings,
        grids: &Bindings,
        pdl: bool,
        kernel_of: &dyn Fn(usize) -> usize,
    ) -> Result<Steps, CudaError> {
        let g = self.graph;
        let buffer_of = |id: NodeId| {
            let base = self.storage_of(id);
            memory
                .home
                .get(&base.index())
                .copied()
                .ok_or_else(|| CudaError::Layout(format!("{} has no buffer", label(g, id))))
        };
        let (mut steps, mut node_runs) = (Vec::new(), Vec::new());
        let mut dumps = 0;
        let mut previous_writes: Vec<usize> = Vec::new();
        let launches = &self.program.launches;
        let mut exchanges = Vec::new();
        let mut i = 0;
        while i < launches.len() {
            for x in self.program.exchanges.iter().skip(exchanges.len()).take_while(|x| x.after == i) {
                exchanges.push(steps.len());
                previous_writes = vec![buffer_of(x.node_id)?];
            }
            // The launches of one node, or of nodes co-launched in one kernel.
            let ids: Vec<NodeId> = launches[i].node_ids().collect();
            let end = i + launches[i..].iter().take_while(|l| l.node_ids().eq(ids.iter().copied())).count();
            // An operand that a node of this launch computes (the lm_head's logits, for the
            // argmax) is that node's output dump.
            let mut operand_dumps = HashMap::new();
            for x in ids.iter().flat_map(|&id| g.operands(id)) {
                let base = self.storage_of(x);
                if !matches!(g.node(base).op, Op::Weight { .. } | Op::Constant { .. })
                    && !ids.contains(&base)
                    && !operand_dumps.contains_key(&base.index())
                {
                    steps.push(Step::Dump(buffer_of(base)?));
                    operand_dumps.insert(base.index(), dumps);
                    dumps += 1;
                }
            }
            let mut kernels = Vec::new();
            for s in &launches[i..end] {
                let (index, params) = s.kernel_at(b.new_tokens);
                let kernel = &self.program.kernels[index];
                let mut args = Vec::new();
                let mut writes = Vec::new();
                for n in &s.nodes {
                    let out = buffer_of(n.node_id)?;
                    for &x in &n.operand_ids {
                        args.push(Arg::buffer(buffer_of(x)?));
                    }
                    args.push(Arg::buffer(out));
                    writes.push(out);
                }
                match params {
                    Params::Standard => {}
                    Params::WritesScratch(_) => {
                        args.push(Arg::buffer(memory.scratch));
                        writes.push(memory.scratch);
                    }
                    Params::ReadsScratch => {
                        args = vec![Arg::buffer(memory.scratch), Arg::buffer(writes[0])];
                    }
                    Params::SplitK { .. } => {
                        args.extend([Arg::buffer(memory.scratch), Arg::buffer(memory.counters)]);
                        writes.extend([memory.scratch, memory.counters]);
                    }
                }
                args.push(Arg::buffer(memory.step));
                let previous = std::mem::replace(&mut previous_writes, writes);
                let hidden = if pdl { previous } else { Vec::new() };
                steps.push(Step::Launch(Launch {
                    kernel: kernel_of(index),
                    grid: kernel.launch.grid.blocks(grids),
                    block: kernel.launch.block,
                    shared_bytes: kernel.launch.shared_bytes,
                    args,
                    hidden,
                }));
                kernels.push(kernel.name.clone());
            }
            for (k, &id) in ids.iter().enumerate() {
                steps.push(Step::Dump(buffer_of(id)?));
                operand_dumps.insert(id.index(), dumps + k);
            }
            for (k, &id) in ids.iter().enumerate() {
                node_runs.push(NodeRun {
                    node: id,
                    operands: operand_dumps.clone(),
                    output: dumps + k,
                    kernels: kernels.clone(),
                });
            }
            dumps += ids.len();
            i = end;
        }
        exchanges.extend(std::iter::repeat_n(steps.len(), self.program.exchanges.len() - exchanges.len()));
        Ok(Steps { steps, nodes: node_runs, exchanges })
    }

    /// Each node of `nodes` against `ir::eval` on the operands dumped before it, and the
    /// logits: written by a node's kernels, or by an exchange (`exchanged`: the nodes the
    /// group's exchanges wrote, with their bytes).
    fn checks(
        &self,
        weights: &dyn WeightSource,
        b: &Bindings,
        nodes: &[NodeRun],
        dumps: Vec<Vec<u8>>,
        rows_own: bool,
        exchanged: &[(NodeId, &[u8])],
    ) -> Result<CheckedRun, CudaError> {
        let g = self.graph;
        let mut checks = Vec::new();
        for NodeRun { node: id, operands: operand_dumps, output: out_dump, kernels } in nodes {
            let node = g.node(*id);
            let touches_cache =
                g.operands(*id).into_iter().chain([*id]).any(
                    |x| matches!(&g.node(self.storage_of(x)).op, Op::Input { name } if g.role(name).is_kv_cache()),
                );
            if rows_own && touches_cache {
                continue;
            }
            let mut sub = Graph::new();
            let mut inputs = HashMap::new();
            let operands = g
                .operands(*id)
                .into_iter()
                .map(|x| {
                    self.import(x, b, &mut sub, &mut inputs, &|base: NodeId| {
                        operand_dumps.get(&base.index()).map(|&d| &dumps[d][..])
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let got = value(node, b, &dumps[*out_dump]);
            let copy = Node { shape: concrete(&node.shape, b), ..node.clone() };
            let out = sub.add_node(copy, &operands);
            sub.set_output("out", out);
            let reference = eval(&sub, inputs, weights)
                .map_err(|e| CudaError::Layout(format!("evaluating {} on the CPU: {e}", label(g, *id))))?
                .remove("out")
                .expect("output named out");
            checks.push(compare(label(g, *id), node.op.kind(), kernels.clone(), &got, &reference));
        }
        let (_, logits_id) =
            g.output_with(Role::Logits).ok_or_else(|| CudaError::Layout("the graph has no logits".into()))?;
        let logits_storage = self.storage_of(logits_id);
        let by_kernel = nodes.iter().find(|n| self.storage_of(n.node) == logits_storage).map(|n| &dumps[n.output][..]);
        let by_exchange = || exchanged.iter().find(|(id, _)| self.storage_of(*id) == logits_storage).map(|(_, d)| *d);
        let logits = match by_kernel.or_else(by_exchange) {
            Some(bytes) => value(g.node(logits_id), b, bytes),
            None => return Err(CudaError::Layout("no kernel or exchange writes the logits".into())),
        };
        Ok(CheckedRun { checks, logits })
    }

    /// Adds operand `x` to `sub` as the GPU check does: weights and constants as they are,
    /// views over their imported operand, anything else an input holding the dumped value.
    fn import<'d>(
        &self,
        x: NodeId,
        b: &Bindings,
        sub: &mut Graph,
        inputs: &mut HashMap<String, Tensor>,
        dumped: &dyn Fn(NodeId) -> Option<&'d [u8]>,
    ) -> Result<NodeId, CudaError> {
        let g = self.graph;
        let node = g.node(x);
        let copy = Node { shape: concrete(&node.shape, b), ..node.clone() };
        match &node.op {
            Op::Weight { .. } | Op::Constant { .. } => Ok(sub.add_node(copy, &[])),
            op if op.is_view() => {
                let inner = self.import(g.operands(x)[0], b, sub, inputs, dumped)?;
                Ok(sub.add_node(copy, &[inner]))
            }
            _ => {
                let bytes = dumped(self.storage_of(x))
                    .ok_or_else(|| CudaError::Layout(format!("{} was not dumped", label(g, x))))?;
                let name = format!("v{}", x.index());
                inputs.insert(name.clone(), value(node, b, bytes));
                Ok(sub.add_node(Node { op: Op::Input { name }, ..copy }, &[]))
            }
        }
    }
}

/// A node's value from its buffer's bytes: the first elements (a cache's first rows: with the
/// identity block table the pages lie in order).
fn value(node: &Node, b: &Bindings, bytes: &[u8]) -> Tensor {
    let shape = node.shape.resolve(b);
    let n = shape.iter().product::<usize>() * node.dtype.size_bytes();
    tensor_from_storage(node.dtype, shape, &bytes[..n.min(bytes.len())])
}
