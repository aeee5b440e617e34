//! `smelt check-kernels`: every GPU kernel against the CPU reference evaluator, on the data of
//! real decode steps (see `smelt_runtime::cuda::check_step`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use smelt::models::{CausalLm, LoadOptions, Qwen3Config, Qwen3Cpu, Qwen3Cuda};
use smelt::runtime::cuda::NodeCheck;

use super::{at_most, model_dir_arg, numbers, CudaArgs, DTypeArg, MemoryLimit, Numbers};

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model directory.
    #[arg(long)]
    model: PathBuf,
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: DTypeArg,
    /// Context positions at which a step is checked (steps in between run normally).
    #[arg(long, default_value = "0,1,17,300", value_parser = numbers)]
    positions: Numbers,
    /// Also check the prefill kernels on prompt chunks of these lengths, one after another
    /// (the second runs after the first's tokens are cached), e.g. 48,80.
    #[arg(long, value_parser = numbers)]
    prefill: Option<Numbers>,
    /// Also check one batched decode step of this many sequences against the same rows run
    /// one sequence at a time (bf16/f16 models), at most 4096.
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=super::MAX_BATCH))]
    batch: Option<usize>,
    /// Print every node, not only the worst of each kernel.
    #[arg(long)]
    verbose: bool,
    /// Run the kernels on the CPU through the emulator (no GPU needed): the decode program at
    /// --positions, the prefill program on --prefill chunks and a batched step of --batch
    /// sequences, node by node, and their logits against the CPU backend's.
    #[arg(long)]
    emulate: bool,
    /// With --emulate: what the emulated kernels are checked for besides their results.
    #[arg(long, value_enum, default_value = "bounds", requires = "emulate")]
    checker: super::check_ranks::CheckerArg,
    /// With --emulate: decode and batched steps launch with the grids of the CUDA graph that
    /// replays them on the GPU, sized for the context's bucket (a power of two from 256, at
    /// most the KV cache) instead of the step's own context.
    #[arg(long, requires = "emulate")]
    graph_grids: bool,
    /// Split the model over N tensor-parallel ranks and check every rank's kernels, the
    /// exchanges between them as kernels in place of NCCL: in the emulator with --emulate, else
    /// every rank in turn on GPU 0 (decode and --prefill; --batch under --emulate only).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    tensor_parallel: u32,
    #[command(flatten)]
    cuda: CudaArgs,
}

pub fn run(a: Args) -> Result<()> {
    let mut positions = a.positions.0.clone();
    positions.sort_unstable();
    positions.dedup();
    let prefill = a.prefill.as_ref().map(|n| n.0.clone()).unwrap_or_default();
    // The flags against the model, then the GPU: without one this fails in a second, before
    // the weights are read.
    let config = Qwen3Config::from_file(&model_dir_arg(&a.model)?.join("config.json"))?;
    let cuda = a.cuda.options();
    let capacity = cuda.kv_tokens(&config).min(config.max_position_embeddings);
    at_most("--positions", &positions, capacity - 1, "the last position the KV cache holds")?;
    let prefill_total = prefill.iter().map(|&n| n as usize).sum::<usize>();
    if prefill_total > capacity {
        bail!("--prefill chunks of {prefill_total} tokens in all are more than the KV cache holds ({capacity})");
    }
    if a.emulate || a.tensor_parallel > 1 {
        let executor = match a.emulate {
            true => super::check_ranks::Executor::Emulator(a.checker),
            false => {
                MemoryLimit::gpu("smelt check-kernels")?;
                super::check_ranks::Executor::Gpu
            }
        };
        let settings = super::check_ranks::Settings {
            executor,
            pdl: !a.cuda.given().contains(&"--no-pdl"),
            variants: a.cuda.variants.variants(),
            verbose: a.verbose,
            tensor_parallel: a.tensor_parallel,
            graph_grids: a.graph_grids,
        };
        let o = super::check_ranks::run(&a.model, a.dtype.into(), &settings, &positions, &prefill, a.batch)?;
        println!("{} node checks, {} failed; {} logits checks failed", o.checked, o.failed, o.logits_failed);
        if o.failed + o.logits_failed > 0 {
            bail!(
                "{} kernel outputs and {} logits differ from the CPU reference beyond tolerance",
                o.failed,
                o.logits_failed
            );
        }
        return Ok(());
    }
    MemoryLimit::gpu("smelt check-kernels")?;
    cuda.check_fits(&config, a.dtype.into()).map_err(|e| super::load_error(e, &a.model))?;
    let cpu = Qwen3Cpu::load_with(&a.model, LoadOptions::new(a.dtype.into()))
        .with_context(|| format!("loading {}", a.model.display()))?;
    let vocab = cpu.config().vocab_size as u64;
    let prefill_too = smelt::CudaOptions { prefill: cuda.prefill || !prefill.is_empty(), ..cuda };
    let options = prefill_too.decoder_options(&config, a.batch.unwrap_or(0));
    // The reference is a CPU model of its own; the GPU's weights stream from the checkpoint
    // as they do for generation.
    let mut model = Qwen3Cuda::load(&a.model, a.dtype.into(), &options).context("starting the CUDA backend")?;
    let (mut failed, mut checked) = (0, 0);
    for (what, checks) in check_runs(&mut model, &cpu, &positions, &prefill, vocab)? {
        print_checks(&what, &checks, a.verbose);
        checked += checks.len();
        failed += checks.iter().filter(|c| !c.ok).count();
    }
    println!("{checked} node checks, {failed} failed");
    let batch_failed = match a.batch {
        Some(rows) => !report_batch(&model.check_batch(rows)?),
        None => false,
    };
    if batch_failed {
        bail!("the batched decode step differs from the single-sequence step beyond tolerance");
    }
    if failed > 0 {
        bail!("{failed} of {checked} kernel outputs differ from the CPU reference beyond tolerance");
    }
    Ok(())
}

/// Checks decode steps at `positions`, then the `prefill` chunks from a fresh sequence, on
/// token ids drawn from a fixed sequence (Weyl), so a run is reproducible; returns each run's
/// node checks under what it was.
fn check_runs(
    model: &mut Qwen3Cuda,
    reference: &Qwen3Cpu,
    positions: &[u32],
    prefill: &[u32],
    vocab: u64,
) -> Result<Vec<(String, Vec<NodeCheck>)>> {
    let token = |p: usize| ((p as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % vocab;
    let mut runs: Vec<(String, Vec<NodeCheck>)> = Vec::new();
    for &p in positions {
        let p = p as usize;
        while model.position() < p {
            model.forward_greedy(&[token(model.position()) as u32])?;
        }
        runs.push((format!("decode at position {p}"), model.check_step(reference, token(p) as u32)?));
    }
    model.reset();
    for &n in prefill {
        let at = model.position();
        let chunk: Vec<u32> = (at..at + n as usize).map(|p| token(p) as u32).collect();
        runs.push((format!("prefill of {n} tokens at position {at}"), model.check_prefill(reference, &chunk)?));
    }
    Ok(runs)
}

/// Prints one run's checks: the worst node of each kernel (every layer runs the same kernels),
/// failures first, or with `verbose` every node.
pub(super) fn print_checks(what: &str, checks: &[NodeCheck], verbose: bool) {
    println!("{what}: {} nodes", checks.len());
    println!(
        "  {:<36} {:<32} {:>6} {:>10} {:>10} {:>9}  result",
        "node", "kernels", "dtype", "rel err", "max abs", "tol"
    );
    let score = |c: &NodeCheck| if c.ok { c.rel_err / c.tolerance.max(1e-30) } else { f64::INFINITY };
    let mut shown: Vec<&NodeCheck> = Vec::new();
    for c in checks {
        match shown.iter_mut().find(|s| s.kernels == c.kernels) {
            Some(s) if !verbose => {
                if score(c) > score(s) {
                    *s = c;
                }
            }
            _ => shown.push(c),
        }
    }
    for c in shown {
        let result = if c.ok { "ok".to_string() } else { format!("FAIL ({} non-finite)", c.nonfinite) };
        println!(
            "  {:<36} {:<32} {:>6} {:>10.3e} {:>10.3e} {:>9.1e}  {result}",
            c.node,
            c.kernels.join("+"),
            c.dtype.name(),
            c.rel_err,
            c.max_abs,
            c.tolerance
        );
    }
}

/// The worst row's relative error a batched step may have against the single-sequence step:
/// both round every activation to bf16 in different orders (a few 1e-2 on random weights),
/// while a row that reads another sequence's cache or position is off by about 1.
const BATCH_REL_TOL: f64 = 0.1;

/// Prints a batched-step check; returns whether it passed.
fn report_batch(c: &smelt::models::BatchCheck) -> bool {
    let ok = c.max_rel_err <= BATCH_REL_TOL;
    println!(
        "batched decode step of {} rows vs one sequence at a time: logits rel err max {:.3e} mean {:.3e} \
         (tolerance {BATCH_REL_TOL:.0e}), max abs {:.3e}; top-1 agreement {:.3}, greedy tokens {:.3}: {}",
        c.rows,
        c.max_rel_err,
        c.mean_rel_err,
        c.max_abs,
        c.top1_agreement,
        c.greedy_agreement,
        if ok { "ok" } else { "FAIL" }
    );
    ok
}
