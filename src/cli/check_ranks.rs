//! The checks of programs that one device runs in turn: a whole model's (a group of one) or
//! every rank's of a tensor-parallel group, the exchanges as kernels between them. Through the
//! CPU emulator (`smelt check-kernels --emulate`: `smelt-emulate`, as a GPU would run them;
//! no GPU needed), or on one GPU (`smelt check-kernels --tensor-parallel N`); either way node
//! by node against `ir::eval`, and the logits against the CPU backend's.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use smelt::codegen::{emit_with, EmitOptions, Variants};
use smelt::emulate::{BlockOrder, Checker, Landing, Schedule};
use smelt::ir::{Tensor, WeightSource};
use smelt::models::qwen3::Logits;
use smelt::models::{Blueprint, GraphKind, LoadOptions, Qwen3Cpu};
use smelt::runtime::cuda::{
    CheckedRun, EmulatedRanks, EmulatedRow, EmulationOptions, Gpu, GpuRanks, GroupOptions, WeightBytes,
};

/// Which checker the emulated kernels are built with.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum CheckerArg {
    /// Out-of-bounds reads and writes, and reads of the previous kernel's output before the
    /// grid-dependency wait (AddressSanitizer); reads of memory nothing wrote (every run twice,
    /// such memory holding other bytes the second time).
    Bounds,
    /// Shared- and global-memory races between CUDA threads (ThreadSanitizer); blocks run
    /// four at a time in a seeded order and cp.async copies land at a seeded moment.
    Races,
    /// None (fastest).
    Plain,
}

/// The logits' relative error allowed against the CPU backend, per dtype: every layer's
/// kernels round as the evaluator does but sum in another order, and the differences grow
/// through the layers.
fn logits_tolerance(dtype: smelt::ir::DType) -> f64 {
    match dtype {
        smelt::ir::DType::BF16 => 5e-2,
        smelt::ir::DType::F16 => 1e-2,
        _ => 1e-4,
    }
}

/// What the emulated checks found: node checks (and failures), logits failures.
#[derive(Default)]
pub struct Outcome {
    pub checked: usize,
    pub failed: usize,
    pub logits_failed: usize,
}

impl Outcome {
    /// Prints a run's node checks (every rank's, named by rank in a group) and its logits
    /// against the CPU backend's `want`; counts them. A group's ranks must hold the same
    /// logits, bit for bit, as NCCL leaves them.
    fn record(&mut self, what: &str, runs: Vec<CheckedRun>, want: &Tensor, dtype: smelt::ir::DType, verbose: bool) {
        let group = runs.len() > 1;
        let bits = |t: &Tensor| t.to_f32_vec().into_iter().map(f32::to_bits).collect::<Vec<_>>();
        let mut checks = Vec::new();
        let mut logits = Vec::new();
        for (r, run) in runs.into_iter().enumerate() {
            checks.extend(run.checks.into_iter().map(|mut c| {
                if group {
                    c.node = format!("rank {r}: {}", c.node);
                }
                c
            }));
            logits.push(run.logits);
        }
        super::check::print_checks(what, &checks, verbose);
        self.checked += checks.len();
        self.failed += checks.iter().filter(|c| !c.ok).count();
        let (rel, max_abs, same_top) = logits_error(&logits[0], want);
        let tol = logits_tolerance(dtype);
        let ok = rel <= tol;
        self.logits_failed += usize::from(!ok);
        println!(
            "  logits vs the CPU backend: rel err {rel:.3e} (tolerance {tol:.0e}), max abs {max_abs:.3e}, same argmax: {same_top}: {}",
            if ok { "ok" } else { "FAIL" }
        );
        if group {
            let differ: Vec<String> =
                (1..logits.len()).filter(|&r| bits(&logits[r]) != bits(&logits[0])).map(|r| r.to_string()).collect();
            self.logits_failed += usize::from(!differ.is_empty());
            match differ.is_empty() {
                true => println!("  every rank's logits equal rank 0's, bit for bit: ok"),
                false => println!("  the logits of rank(s) {} differ from rank 0's: FAIL", differ.join(", ")),
            }
        }
    }
}

/// Where the programs run.
#[derive(Clone, Copy, Debug)]
pub enum Executor {
    /// The CPU emulator, its kernels built with this checker.
    Emulator(CheckerArg),
    /// GPU 0, every rank's kernels in turn.
    Gpu,
}

/// How the programs are made, run and shown.
pub struct Settings {
    pub executor: Executor,
    /// Programmatic dependent launch (`--no-pdl` turns it off).
    pub pdl: bool,
    /// The kernel variants (`--no-split-k`, `--no-merged-attention`, `--no-co-launch` turn
    /// them off).
    pub variants: Variants,
    pub verbose: bool,
    /// Ranks of a tensor-parallel group (1: the whole model).
    pub tensor_parallel: u32,
    /// In the emulator, decode and batched steps launch with the grids of the CUDA graph that
    /// replays them (`--graph-grids`; see `EmulationOptions::graph_grids`).
    pub graph_grids: bool,
}

/// Checks decode steps at `positions`, prefill chunks of `prefill` tokens and a batched step
/// of `batch` sequences, each on the caches the CPU backend made for the tokens before it.
pub fn run(
    model: &std::path::Path,
    dtype: smelt::ir::DType,
    settings: &Settings,
    positions: &[u32],
    prefill: &[u32],
    batch: Option<usize>,
) -> Result<Outcome> {
    let &Settings { executor, pdl, variants, verbose, tensor_parallel, graph_grids } = settings;
    if matches!(executor, Executor::Gpu) && batch.is_some() {
        bail!("--batch with --tensor-parallel runs under --emulate only (the GPU check of a group's batched step is not built yet)");
    }
    let load = LoadOptions { tensor_parallel, ..LoadOptions::new(dtype) };
    let mut cpu = Qwen3Cpu::load_with(model, load).with_context(|| format!("loading {}", model.display()))?;
    let longest_chunk = prefill.iter().copied().max().unwrap_or(1) as usize;
    let kv_tokens = positions.iter().map(|&p| p as usize + 1).chain([prefill.iter().map(|&n| n as usize).sum()]).max();
    let layout = |max_new_tokens| GroupOptions {
        kv_tokens: kv_tokens.unwrap_or(1).max(1),
        block_tokens: BLOCK_TOKENS,
        max_new_tokens,
        pdl,
    };
    let blueprint = cpu.blueprint().clone();
    // The GPU's ranks take their weights from the CPU model's slices.
    let build = |kind, max_new_tokens, cpu: &Qwen3Cpu| match executor {
        Executor::Emulator(checker) => emulated(&blueprint, kind, checker, (pdl, graph_grids), variants),
        Executor::Gpu => on_gpu(&blueprint, kind, variants, cpu, &layout(max_new_tokens)),
    };
    let place = match executor {
        Executor::Emulator(_) => "emulated",
        Executor::Gpu => "GPU",
    };
    let vocab = cpu.config().vocab_size as u64;
    let token = |p: usize| (((p as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % vocab) as u32;
    let mut outcome = Outcome::default();
    let mut check = |what: String, runs, want: &Tensor| outcome.record(&what, runs, want, dtype, verbose);
    if !positions.is_empty() {
        let decode = build(GraphKind::Decode, 1, &cpu)?;
        for &p in positions {
            let p = p as usize;
            let (caches, want) = cpu_step(&mut cpu, &(0..p).map(token).collect::<Vec<_>>(), &[token(p)])?;
            let runs = decode.run(&rank_weights(&cpu), &caches, &[token(p)], p)?;
            check(format!("{place} decode at position {p}"), runs, &want);
        }
    }
    if !prefill.is_empty() {
        let program = build(GraphKind::Prefill, longest_chunk, &cpu)?;
        let mut at = 0;
        for &n in prefill {
            let chunk: Vec<u32> = (at..at + n as usize).map(token).collect();
            let (caches, want) = cpu_step(&mut cpu, &(0..at).map(token).collect::<Vec<_>>(), &chunk)?;
            let runs = program.run(&rank_weights(&cpu), &caches, &chunk, at)?;
            check(format!("{place} prefill of {n} tokens at position {at}"), runs, &want);
            at += n as usize;
        }
    }
    if let Some(rows) = batch {
        let Group::Emulated(program, options) = build(GraphKind::Batch, rows, &cpu)? else {
            bail!("a batched step is checked under --emulate only");
        };
        let (runs, want) = batched_step(&mut cpu, &program, rows, &options, &token)?;
        let what = format!("emulated batched decode step of {rows} sequences (cache nodes checked through the logits)");
        check(what, runs, &want);
    }
    Ok(outcome)
}

/// Every rank's program of one kind, ready to run: in the emulator (with how its runs are
/// scheduled), or on the GPU.
enum Group {
    Emulated(EmulatedRanks, EmulationOptions),
    Gpu(GpuRanks),
}

impl Group {
    /// `tokens` after `at` cached ones: rank r with `weights[r]` and `caches[r]`.
    fn run(
        &self,
        weights: &[&dyn WeightSource],
        caches: &[HashMap<String, Tensor>],
        tokens: &[u32],
        at: usize,
    ) -> Result<Vec<CheckedRun>> {
        Ok(match self {
            Group::Emulated(ranks, options) => ranks.run(weights, caches, tokens, at, options)?,
            Group::Gpu(ranks) => ranks.run(weights, caches, tokens, at)?,
        })
    }
}

/// Every rank's program of `kind` (one rank: the whole model's), emitted. A batched step's
/// rows are sequences of their own.
fn rank_programs(
    blueprint: &Blueprint,
    kind: GraphKind,
    variants: Variants,
) -> Result<Vec<(smelt::ir::Graph, smelt::codegen::Program)>> {
    let emit = EmitOptions { rows_are_sequences: kind == GraphKind::Batch, variants };
    (0..blueprint.tensor_parallel() as usize)
        .map(|r| {
            let g = blueprint.rank_graph(r, kind).context("a rank of the group has no graph")?;
            let program = emit_with(g, emit).with_context(|| format!("generating rank {r}'s kernels"))?;
            Ok((g.clone(), program))
        })
        .collect()
}

/// The programs of `kind` built for the emulator with `checker`.
fn emulated(
    blueprint: &Blueprint,
    kind: GraphKind,
    checker: CheckerArg,
    (pdl, graph_grids): (bool, bool),
    variants: Variants,
) -> Result<Group> {
    let (checker, schedule) = match checker {
        CheckerArg::Bounds => (Checker::Bounds, Schedule::default()),
        CheckerArg::Races => {
            (Checker::Races, Schedule { landing: Landing::Random(0x5eed), block_order: BlockOrder::Seeded(0x5eed) })
        }
        CheckerArg::Plain => (Checker::Plain, Schedule::default()),
    };
    let options = EmulationOptions { block_tokens: BLOCK_TOKENS, schedule, pdl, graph_grids };
    let ranks = rank_programs(blueprint, kind, variants)?;
    Ok(Group::Emulated(EmulatedRanks::build(ranks, checker).context("building the kernels for the emulator")?, options))
}

/// The programs of `kind` loaded on GPU 0, each rank's weights from the CPU model's slices.
fn on_gpu(
    blueprint: &Blueprint,
    kind: GraphKind,
    variants: Variants,
    cpu: &Qwen3Cpu,
    layout: &GroupOptions,
) -> Result<Group> {
    let gpu = Gpu::open(0).context("opening GPU 0")?;
    let weights: Vec<&dyn WeightBytes> = cpu.rank_weights().map(|w| w as &dyn WeightBytes).collect();
    let ranks = rank_programs(blueprint, kind, variants)?;
    Ok(Group::Gpu(
        GpuRanks::build(gpu, ranks, &weights, layout).context("loading every rank's kernels and weights on the GPU")?,
    ))
}

fn rank_weights(cpu: &Qwen3Cpu) -> Vec<&dyn WeightSource> {
    cpu.rank_weights().map(|w| w as &dyn WeightSource).collect()
}

/// A batched decode step of `rows` sequences, row i of 1 + 37 i mod 61 tokens (within the
/// context) then its new token, each in blocks of its own; the emulated runs and the CPU
/// backend's logits of each sequence alone.
fn batched_step(
    cpu: &mut Qwen3Cpu,
    program: &EmulatedRanks,
    rows: usize,
    options: &EmulationOptions,
    token: &dyn Fn(usize) -> u32,
) -> Result<(Vec<CheckedRun>, Tensor)> {
    let context = cpu.config().max_position_embeddings;
    let row_token = |i: usize, p: usize| token(i * 1000 + p);
    let mut batch_rows: Vec<Vec<EmulatedRow>> = (0..cpu.blueprint().tensor_parallel()).map(|_| Vec::new()).collect();
    let mut want = Vec::new();
    for i in 0..rows {
        let len = (1 + (i * 37) % 61).min(context.saturating_sub(1));
        let prefix: Vec<u32> = (0..len).map(|p| row_token(i, p)).collect();
        let (caches, logits) = cpu_step(cpu, &prefix, &[row_token(i, len)])?;
        want.extend(logits.to_f32_vec());
        for (rank_rows, caches) in batch_rows.iter_mut().zip(caches) {
            rank_rows.push(EmulatedRow { caches, token: row_token(i, len), position: len });
        }
    }
    let runs = program.run_batch(&rank_weights(cpu), &batch_rows, options)?;
    let want = Tensor::from_stored(smelt::ir::DType::F32, vec![rows, want.len() / rows.max(1)], want);
    Ok((runs, want))
}

/// The paged cache's block size in the emulated runs (the GPU's default).
const BLOCK_TOKENS: usize = smelt::passes::DEFAULT_BLOCK_TOKENS;

/// Runs `before` on the CPU from an empty cache; returns each rank's caches, then the
/// last-position logits of `tokens` after it.
fn cpu_step(cpu: &mut Qwen3Cpu, before: &[u32], tokens: &[u32]) -> Result<(Vec<HashMap<String, Tensor>>, Tensor)> {
    cpu.reset();
    if !before.is_empty() {
        cpu.forward(before, Logits::LastPosition)?;
    }
    let caches = cpu.rank_kv_caches().cloned().collect();
    let logits = cpu.forward(tokens, Logits::LastPosition)?;
    Ok((caches, logits))
}

/// ‖got − want‖ / ‖want‖, the largest absolute difference, and whether the argmax agrees.
fn logits_error(got: &Tensor, want: &Tensor) -> (f64, f64, bool) {
    let (g, w) = (got.to_f32_vec(), want.to_f32_vec());
    let (mut d2, mut w2, mut max_abs) = (0f64, 0f64, 0f64);
    for (&x, &y) in g.iter().zip(&w) {
        let d = (x as f64 - y as f64).abs();
        d2 += if d.is_finite() { d * d } else { f64::INFINITY };
        w2 += (y as f64).powi(2);
        max_abs = max_abs.max(d);
    }
    let rel = if g.len() == w.len() { (d2 / w2.max(f64::MIN_POSITIVE)).sqrt() } else { f64::INFINITY };
    let argmax = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
    (rel, max_abs, argmax(&g) == argmax(&w))
}
