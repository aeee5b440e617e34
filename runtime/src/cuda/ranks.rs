//! A tensor-parallel group's rank programs on one GPU (`smelt check-kernels --tensor-parallel
//! N` without `--emulate`), as the emulator runs them (`emulated/ranks.rs`): each rank's
//! launches up to an exchange, node by node against `ir::eval` ([`super::check`]), then the
//! exchange as kernels in place of NCCL (`group.rs`: one launch per rank, reading every rank's
//! part on the same device), checked against the evaluator's collective, and so on. Each rank
//! has its own weights (its slices), KV pool and arena; a run starts from the caches the CPU
//! backend made for the tokens before it, so every rank's step sees the same history.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule};
use smelt_codegen::{Kernel, Program};
use smelt_ir::{Bindings, Graph, Role, Tensor, WeightSource};

use super::check::{check_launches, compare, prepare_run, read_value, CheckedRun};
use super::decoder::{launch_raw, load_kernels, Runner};
use super::device::Gpu;
use super::device_weights::{DeviceWeights, WeightBytes};
use super::group::{exchange_kernel, exchange_reference, same_exchanges, segment};
use super::layout::{label, storage_bytes, KvPool, KvShape};
use super::CudaError;

/// One rank's program on the device, with its weights and KV pool.
struct Rank {
    _weights: DeviceWeights,
    kv: KvPool,
    runner: Runner,
}

/// Every rank's program of a group, loaded on one GPU, run for any number of steps.
pub struct GpuRanks {
    gpu: Gpu,
    ranks: Vec<Rank>,
    /// Per exchange, the kernel that does it and its function.
    exchanges: Vec<(Kernel, CudaFunction)>,
    _modules: Vec<Arc<CudaModule>>,
    pdl: bool,
}

/// How a group is laid out on the device.
#[derive(Clone, Copy, Debug)]
pub struct GroupOptions {
    /// Tokens each rank's KV pool holds (rounded up to whole blocks).
    pub kv_tokens: usize,
    pub block_tokens: usize,
    /// Tokens a run takes at most.
    pub max_new_tokens: usize,
    /// Programmatic dependent launch, where the device has it (sm_90).
    pub pdl: bool,
}

impl GpuRanks {
    /// Loads every rank's program (`ranks[r]`: rank r's graph and the program emitted from
    /// it) on `gpu`, rank r's weights from `weights[r]`, and the kernels of their exchanges.
    pub fn build(
        gpu: Gpu,
        ranks: Vec<(Graph, Program)>,
        weights: &[&dyn WeightBytes],
        options: &GroupOptions,
    ) -> Result<GpuRanks, CudaError> {
        same_exchanges(ranks.iter().map(|(g, p)| (g, p)))?;
        if weights.len() != ranks.len() {
            return Err(CudaError::Layout(format!("{} weight sources for {} ranks", weights.len(), ranks.len())));
        }
        let (g0, p0) = &ranks[0];
        let exchange_kernels = p0.exchanges.iter().map(|x| exchange_kernel(g0, x)).collect::<Result<Vec<_>, _>>()?;
        // Every rank's kernels and the exchanges' in one load (kernels the ranks share, once).
        let mut lists: Vec<&[Kernel]> = ranks.iter().map(|(_, p)| &p.kernels[..]).collect();
        lists.push(&exchange_kernels);
        let (mut functions, modules, _) = load_kernels(&gpu, &lists, None)?;
        let exchange_functions = functions.pop().expect("one function list per kernel list");
        let exchanges = exchange_kernels.into_iter().zip(exchange_functions).collect();
        let shape = KvShape {
            block_tokens: options.block_tokens.max(1),
            blocks: options.kv_tokens.div_ceil(options.block_tokens.max(1)).max(1),
        };
        let mut loaded = Vec::new();
        for (((graph, program), functions), source) in ranks.into_iter().zip(functions).zip(weights) {
            let device_weights = DeviceWeights::upload(&gpu, &[&graph], *source)?;
            let kv = KvPool::new(&gpu, &graph, shape)?;
            let runner = Runner::new(&gpu, &graph, program, functions, &device_weights, &kv, options.max_new_tokens)?;
            loaded.push(Rank { _weights: device_weights, kv, runner });
        }
        gpu.synchronize("uploading every rank's weights")?;
        let pdl = options.pdl && gpu.arch() == smelt_codegen::Arch::Sm90;
        Ok(GpuRanks { gpu, ranks: loaded, exchanges, _modules: modules, pdl })
    }

    /// Runs `tokens` after `at` cached ones, launch by launch: rank r with `weights[r]` (its
    /// slices, for the evaluator) and `caches[r]` (its heads' keys and values, by cache input
    /// name, `[at, ...]` each, as the CPU backend keeps them); each rank's run, in rank order.
    pub fn run(
        &self,
        weights: &[&dyn WeightSource],
        caches: &[HashMap<String, Tensor>],
        tokens: &[u32],
        at: usize,
    ) -> Result<Vec<CheckedRun>, CudaError> {
        let world = self.ranks.len();
        if weights.len() != world || caches.len() != world {
            let message = format!("{} weights and {} caches for {world} ranks", weights.len(), caches.len());
            return Err(CudaError::Layout(message));
        }
        let longest = self.ranks[0].runner.layout.max_new_tokens;
        if tokens.is_empty() || tokens.len() > longest {
            return Err(CudaError::Unsupported(format!("a run takes 1 to {longest} tokens, not {}", tokens.len())));
        }
        let capacity = self.ranks[0].kv.shape.tokens();
        if at + tokens.len() > capacity {
            return Err(CudaError::KvFull { capacity });
        }
        for (rank, caches) in self.ranks.iter().zip(caches) {
            self.write_caches(rank, caches, at)?;
            prepare_run(&self.gpu, &rank.runner, tokens, at)?;
        }
        let b = Bindings { batch: 1, new_tokens: tokens.len(), cached_tokens: at };
        let mut checks: Vec<Vec<_>> = vec![Vec::new(); world];
        for k in 0..=self.exchanges.len() {
            for (r, rank) in self.ranks.iter().enumerate() {
                let runner = &rank.runner;
                let launches = segment(&runner.program, runner.layout.launches.len(), k);
                checks[r].extend(check_launches(&self.gpu, runner, self.pdl, launches, &b, weights[r])?);
            }
            if k < self.exchanges.len() {
                for (r, check) in self.exchange(k, &b)?.into_iter().enumerate() {
                    checks[r].push(check);
                }
            }
        }
        let mut runs = Vec::with_capacity(world);
        for (rank, checks) in self.ranks.iter().zip(checks) {
            let runner = &rank.runner;
            let (_, logits) = runner
                .graph
                .output_with(Role::Logits)
                .ok_or_else(|| CudaError::Layout("the graph has no logits".into()))?;
            runs.push(CheckedRun { checks, logits: read_value(&self.gpu, runner, logits, &b)? });
        }
        Ok(runs)
    }

    /// Writes a rank's cached keys and values (`[at, ...]` each) to its pool through the
    /// identity block table, where its kernels read them; every other row is poisoned (all
    /// bytes 0xFF: NaN), so a read past the context shows.
    fn write_caches(&self, rank: &Rank, caches: &HashMap<String, Tensor>, at: usize) -> Result<(), CudaError> {
        rank.kv.set_identity(&self.gpu)?;
        rank.kv.poison(&self.gpu)?;
        let graph = &rank.runner.graph;
        for (name, id) in graph.kv_cache_inputs().into_iter().filter(|_| at > 0) {
            let node = graph.node(id);
            let row: Option<usize> = node.shape.dims()[1..].iter().map(|d| d.fixed()).product();
            let width = row.unwrap_or(0) * node.dtype.size_bytes();
            let tensor = caches.get(&name).ok_or_else(|| CudaError::Layout(format!("cache {name}: no rows")))?;
            let bytes = storage_bytes(tensor, node.dtype);
            if bytes.len() != at * width {
                let message = format!("cache {name}: {} bytes for {at} rows of {width}", bytes.len());
                return Err(CudaError::Layout(message));
            }
            let address = rank.kv.address(&name).ok_or_else(|| CudaError::Layout(format!("{name} has no KV slab")))?;
            self.gpu.upload(address, &bytes, &format!("writing the cached rows of {name}"))?;
        }
        Ok(())
    }

    /// Exchange `k` as one kernel launch per rank, reading every rank's part; each rank's
    /// output against the evaluator's collective over the parts.
    fn exchange(&self, k: usize, b: &Bindings) -> Result<Vec<super::NodeCheck>, CudaError> {
        let (kernel, function) = &self.exchanges[k];
        let mut parts = Vec::new();
        let mut part_addresses = Vec::new();
        for rank in &self.ranks {
            let (g, x) = (&rank.runner.graph, &rank.runner.program.exchanges[k]);
            parts.push(read_value(&self.gpu, &rank.runner, x.operand_id, b)?);
            part_addresses.push(rank.runner.layout.address(g, x.operand_id)?);
        }
        for (r, rank) in self.ranks.iter().enumerate() {
            let (g, x) = (&rank.runner.graph, &rank.runner.program.exchanges[k]);
            let mut params = part_addresses.clone();
            params.extend([rank.runner.layout.address(g, x.node_id)?, rank.runner.layout.step_ptr()]);
            let what = || format!("launching {} for rank {r}'s {}", kernel.name, label(g, x.node_id));
            // SAFETY: the parameters are the parts' and this rank's output's device addresses
            // and its `smelt_step`, in the exchange kernels' order `(part_0..part_{w-1}, y,
            // step)`; every rank's buffers live on this device for the group's lifetime.
            unsafe { launch_raw(&self.gpu, function, kernel, kernel.launch.grid.blocks(b), &params, false, &what)? };
        }
        self.gpu.synchronize(&format!("running exchange {k}"))?;
        let mut checks = Vec::new();
        for rank in &self.ranks {
            let (g, x) = (&rank.runner.graph, &rank.runner.program.exchanges[k]);
            let reference = exchange_reference(g, x, &parts)?;
            let got = read_value(&self.gpu, &rank.runner, x.node_id, b)?;
            let op = g.node(x.node_id).op.kind();
            checks.push(compare(label(g, x.node_id), op, vec![kernel.name.clone()], &got, &reference));
        }
        Ok(checks)
    }
}
