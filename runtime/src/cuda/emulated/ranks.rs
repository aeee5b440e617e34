//! Programs run through the emulator: a whole model's (a group of one), or a tensor-parallel
//! group's rank programs together, in one process,
//! as one device would run every rank's kernels in turn (`check-kernels --tensor-parallel`):
//! each rank's launches up to an exchange, then the exchange as kernels in place of NCCL
//! (`group.rs`), and so on. Each rank's nodes are checked against `ir::eval` as a whole
//! program's are; each exchange's output on every rank against the evaluator's collective
//! (`sum_in_rank_order`, `gather_in_rank_order`) over the parts the ranks' kernels wrote.

use smelt_codegen::{Kernel, Program, PRELUDE};
use smelt_emulate::{Arg, Buffer, Checker, Emulator, KernelSource, Launch, Pointer, Step};
use smelt_ir::{Bindings, Graph, NodeId, Sym, Tensor, WeightSource};

use super::super::check::{compare, NodeCheck};
use super::memory::{place, BatchRow, Rows};
use super::{label, value, CheckedRun, EmulationOptions, Part, Steps};
use crate::cuda::decoder::bucket;
use crate::cuda::group::{exchange_kernel, exchange_reference, same_exchanges};
use crate::cuda::CudaError;

/// Every rank's program of a group (one: a whole model's), built for the emulator once, run
/// for any number of steps.
pub struct EmulatedRanks {
    ranks: Vec<(Graph, Program)>,
    /// Per rank, the emulator's index of each of its program's kernels.
    kernel_of: Vec<Vec<usize>>,
    /// Per exchange, the kernel that does it and its index in the emulator.
    exchanges: Vec<(Kernel, usize)>,
    emulator: Emulator,
}

impl EmulatedRanks {
    /// Builds every rank's program (`ranks[r]`: rank r's graph and the program emitted from
    /// it) and the kernels of their exchanges for the host with `checker`. The ranks must
    /// exchange the same values in the same order, as sharding makes them.
    pub fn build(ranks: Vec<(Graph, Program)>, checker: Checker) -> Result<EmulatedRanks, CudaError> {
        same_exchanges(ranks.iter().map(|(g, p)| (g, p)))?;
        let (first_graph, first) = &ranks[0];
        let mut sources: Vec<KernelSource> = Vec::new();
        let mut index_of = |k: &Kernel| match sources.iter().position(|s| s.name == k.name && s.source == k.source) {
            Some(i) => i,
            None => {
                sources.push(KernelSource { name: k.name.clone(), source: k.source.clone() });
                sources.len() - 1
            }
        };
        let kernel_of = ranks.iter().map(|(_, p)| p.kernels.iter().map(&mut index_of).collect()).collect();
        let exchanges = first
            .exchanges
            .iter()
            .map(|x| {
                let kernel = exchange_kernel(first_graph, x)?;
                let index = index_of(&kernel);
                Ok((kernel, index))
            })
            .collect::<Result<Vec<_>, CudaError>>()?;
        let emulator = Emulator::build(&sources, PRELUDE, checker).map_err(|e| CudaError::Emulation(e.to_string()))?;
        Ok(EmulatedRanks { ranks, kernel_of, exchanges, emulator })
    }

    /// Runs `tokens` after `at` cached ones, launch by launch: rank r with `weights[r]` (its
    /// slices) and `caches[r]` (its heads' keys and values, by cache input name, `[at, ...]`
    /// each, as the CPU backend keeps them); each rank's run, in rank order.
    pub fn run(
        &self,
        weights: &[&dyn WeightSource],
        caches: &[std::collections::HashMap<String, Tensor>],
        tokens: &[u32],
        at: usize,
        options: &EmulationOptions,
    ) -> Result<Vec<CheckedRun>, CudaError> {
        let rows: Vec<Rows<'_>> = caches.iter().map(|caches| Rows::One { caches, tokens, at }).collect();
        self.run_rows(weights, &rows, options)
    }

    /// Runs a batched decode step (programs emitted with `rows_are_sequences`): row i is a
    /// sequence's token at its position, its keys and values read through a block table of
    /// its own; `rows[r]` holds rank r's caches of the same sequences. Nodes that read or
    /// write the caches are checked through the logits only (the evaluator would take the
    /// rows for one sequence's tokens); every other node as in [`EmulatedRanks::run`].
    pub fn run_batch(
        &self,
        weights: &[&dyn WeightSource],
        rows: &[Vec<BatchRow>],
        options: &EmulationOptions,
    ) -> Result<Vec<CheckedRun>, CudaError> {
        let rows: Vec<Rows<'_>> = rows.iter().map(|r| Rows::Own(r)).collect();
        self.run_rows(weights, &rows, options)
    }

    fn parts(&self) -> impl Iterator<Item = Part<'_>> {
        self.ranks.iter().map(|(graph, program)| Part { graph, program })
    }

    fn run_rows(
        &self,
        weights: &[&dyn WeightSource],
        rows: &[Rows<'_>],
        options: &EmulationOptions,
    ) -> Result<Vec<CheckedRun>, CudaError> {
        let world = self.ranks.len();
        if weights.len() != world || rows.len() != world {
            let message = format!("{} weights and {} rows for {world} ranks", weights.len(), rows.len());
            return Err(CudaError::Layout(message));
        }
        let b = rows[0].bindings();
        let (mut buffers, mut pointers, mut ranks) = (Vec::<Buffer>::new(), Vec::<Pointer>::new(), Vec::new());
        for (r, part) in self.parts().enumerate() {
            // As a captured graph's, decode (one token) and batched steps' grids cover the
            // context's bucket, which a pool with blocks to spare holds (as a GPU's does).
            let decode = part.graph.pinned(Sym::NewTokens) == Some(1);
            let graphed = options.graph_grids && (decode || matches!(rows[r], Rows::Own(_)));
            let pool_at_least = if graphed { bucket(b.cached_tokens + 1, usize::MAX) } else { 0 };
            let mut memory = place(part, weights[r], &rows[r], options.block_tokens, pool_at_least)?;
            memory.shift(buffers.len());
            let grids = match graphed {
                true => Bindings { cached_tokens: bucket(b.cached_tokens + 1, memory.pool_tokens) - 1, ..b },
                false => b,
            };
            let steps = part.steps(&memory, &b, &grids, options.pdl, &|k| self.kernel_of[r][k])?;
            buffers.append(&mut memory.buffers);
            pointers.append(&mut memory.pointers);
            let buffer_of = |id| memory.home.get(&part.storage_of(id).index()).copied();
            let exchanged = part
                .program
                .exchanges
                .iter()
                .map(|x| buffer_of(x.operand_id).zip(buffer_of(x.node_id)))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| CudaError::Layout(format!("rank {r}: an exchanged value has no buffer")))?;
            ranks.push(RankSteps { steps, exchanged, step: memory.step });
        }
        let script = self.interleave(&ranks, &b);
        let mut dumps = self
            .emulator
            .run_steps(&buffers, &pointers, &script.steps, options.schedule)
            .map_err(|e| CudaError::Emulation(e.to_string()))?;
        let mut runs = Vec::with_capacity(world);
        for (r, part) in self.parts().enumerate() {
            let own: Vec<Vec<u8>> = script.dumps[r].iter().map(|&d| std::mem::take(&mut dumps[d])).collect();
            let own_rows = matches!(rows[r], Rows::Own(_));
            let exchanged: Vec<(NodeId, &[u8])> = (part.program.exchanges.iter().zip(&script.exchanges))
                .map(|(x, (_, outs))| (x.node_id, &dumps[outs[r]][..]))
                .collect();
            runs.push(part.checks(weights[r], &b, &ranks[r].steps.nodes, own, own_rows, &exchanged)?);
        }
        for (k, (kernel, _)) in self.exchanges.iter().enumerate() {
            for (r, check) in self.check_exchange(k, kernel, &script, &dumps, &b)?.into_iter().enumerate() {
                runs[r].checks.push(check);
            }
        }
        Ok(runs)
    }

    /// One script of every rank's steps: up to each exchange rank by rank, then the
    /// exchange (its parts dumped, one launch per rank, each rank's output dumped).
    fn interleave(&self, ranks: &[RankSteps], b: &Bindings) -> Script {
        let world = ranks.len();
        let mut script = Script { steps: Vec::new(), dumps: vec![Vec::new(); world], exchanges: Vec::new() };
        let mut dumps = 0;
        let mut dump = |steps: &mut Vec<Step>, buffer: usize| {
            steps.push(Step::Dump(buffer));
            dumps += 1;
            dumps - 1
        };
        let mut from = vec![0; world];
        for k in 0..=self.exchanges.len() {
            for (r, rank) in ranks.iter().enumerate() {
                let to = rank.steps.exchanges.get(k).copied().unwrap_or(rank.steps.steps.len());
                for step in &rank.steps.steps[from[r]..to] {
                    match step {
                        Step::Dump(buffer) => {
                            let d = dump(&mut script.steps, *buffer);
                            script.dumps[r].push(d);
                        }
                        other => script.steps.push(other.clone()),
                    }
                }
                from[r] = to;
            }
            let Some((kernel, index)) = self.exchanges.get(k) else { break };
            let parts: Vec<usize> = ranks.iter().map(|rank| rank.exchanged[k].0).collect();
            let part_dumps = parts.iter().map(|&p| dump(&mut script.steps, p)).collect();
            let mut out_dumps = Vec::with_capacity(world);
            for rank in ranks {
                let out = rank.exchanged[k].1;
                let args = parts.iter().chain([&out, &rank.step]).map(|&p| Arg::buffer(p)).collect();
                script.steps.push(Step::Launch(Launch {
                    kernel: *index,
                    grid: kernel.launch.grid.blocks(b),
                    block: kernel.launch.block,
                    shared_bytes: kernel.launch.shared_bytes,
                    args,
                    hidden: Vec::new(),
                }));
                out_dumps.push(dump(&mut script.steps, out));
            }
            script.exchanges.push((part_dumps, out_dumps));
        }
        script
    }

    /// Exchange `k`'s output on each rank against the evaluator's collective over the parts.
    fn check_exchange(
        &self,
        k: usize,
        kernel: &Kernel,
        script: &Script,
        dumps: &[Vec<u8>],
        b: &Bindings,
    ) -> Result<Vec<NodeCheck>, CudaError> {
        let (part_dumps, out_dumps) = &script.exchanges[k];
        let parts: Vec<Tensor> = self
            .ranks
            .iter()
            .zip(part_dumps)
            .map(|((g, p), &d)| value(g.node(p.exchanges[k].operand_id), b, &dumps[d]))
            .collect();
        let (g, p) = &self.ranks[0];
        let x = &p.exchanges[k];
        let reference = exchange_reference(g, x, &parts)?;
        Ok(self
            .ranks
            .iter()
            .zip(out_dumps)
            .map(|((g, p), &d)| {
                let id = p.exchanges[k].node_id;
                let node = g.node(id);
                compare(label(g, id), node.op.kind(), vec![kernel.name.clone()], &value(node, b, &dumps[d]), &reference)
            })
            .collect())
    }
}

/// A rank's steps, the buffers of each exchange's part and output, and its `smelt_step`.
struct RankSteps {
    steps: Steps,
    exchanged: Vec<(usize, usize)>,
    step: usize,
}

/// The group's script: its steps, each rank's dumps (indices into the run's dumps, in the
/// order of its own steps) and each exchange's dumps (every rank's part, every rank's output).
struct Script {
    steps: Vec<Step>,
    dumps: Vec<Vec<usize>>,
    exchanges: Vec<(Vec<usize>, Vec<usize>)>,
}
