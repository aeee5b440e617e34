//! `smelt compile --tensor-parallel N`: each rank's graphs (sharded by `passes::shard`, then
//! fused), plan and kernels; what a rank reads and exchanges per decode step; and a predicted
//! decode time per token at 1, 2, 4 and 8 ranks from stated hardware figures.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use smelt::codegen::{Arch, EmitOptions, Program};
use smelt::ir::Graph;
use smelt::passes::shard;

use super::kernels::{step_bytes, FLOOR_BYTES_PER_S, FLOOR_GPU, TABLE_CONTEXT};
use super::outputs::Dump;
use super::{decimal_size, plural};

/// The hardware figures the prediction uses, stated where it is printed. The launch cost is what
/// a kernel boundary costs inside a CUDA graph with PDL on an H100/H200 (issue 17: 1.3-1.5 µs);
/// the all-reduce is NCCL's small-message latency inside a CUDA graph over NVLink/NVSwitch
/// (nccl-tests: 6-12 µs on 2-8 H100s), plus a ring's 2(N-1)/N of the bytes at one GPU's NVLink 4
/// bandwidth (450 GB/s each way). Assumptions, not measurements: no multi-GPU run has been made.
const LAUNCH_S: f64 = 1.4e-6;
const ALL_REDUCE_S: f64 = 8e-6;
const NVLINK_BYTES_PER_S: f64 = 450e9;

/// One rank's compiled decode step.
pub(super) struct RankStep {
    pub graph: Graph,
    /// The kernels, or why the emitters cannot make them.
    pub program: Result<Program, String>,
}

/// Shards and fuses `primitive` for `world` ranks (rank 0 first).
pub(super) fn ranks(primitive: &Graph, world: u32, what: &str) -> Result<Vec<Graph>> {
    let mut graphs = shard(primitive, world).with_context(|| format!("sharding the {what} graph"))?;
    let pipeline = smelt::passes::pipeline::standard();
    for (r, g) in graphs.iter_mut().enumerate() {
        pipeline
            .run(g, &format!("qwen3.{what}.rank{r}"))
            .with_context(|| format!("compiling rank {r}'s {what} graph"))?;
    }
    Ok(graphs)
}

/// Each rank's decode step, its kernels emitted (none, and why, when the emitters cannot).
pub(super) fn decode_steps(primitive: &Graph, world: u32, options: EmitOptions) -> Result<Vec<RankStep>> {
    Ok(ranks(primitive, world, "decode")?
        .into_iter()
        .map(|graph| {
            let program = smelt::codegen::emit_with(&graph, options).map_err(|e| e.to_string());
            RankStep { graph, program }
        })
        .collect())
}

/// What rank `r`'s decode step reads and exchanges, and what follows each exchange of layer 0.
pub(super) fn describe(r: usize, step: &RankStep) -> String {
    let p = match &step.program {
        Ok(p) => p,
        Err(why) => return format!("  rank {r}: decode kernels not generated: {why}\n"),
    };
    let (sent, whole): (u64, u64) =
        p.exchanges.iter().map(|e| (e.part_bytes, e.whole_bytes)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let weights: u64 = p.launches.iter().map(|l| l.cost.weight_bytes).sum();
    let mut s = format!(
        "  rank {r}: {} launches of {} kernels, {}; reads {} per step at context {TABLE_CONTEXT} ({} of weights); \
         exchanges {} per step ({} whole)\n",
        p.launches.len(),
        p.kernels.len(),
        plural(p.exchanges.len() as u64, "exchange"),
        decimal_size(step_bytes(p, TABLE_CONTEXT)),
        decimal_size(weights),
        decimal_size(sent),
        decimal_size(whole),
    );
    if r == 0 {
        for e in p.exchanges.iter().filter(|e| e.layer.is_none_or(|l| l == 0)) {
            let before = e.after.checked_sub(1).map(|i| p.kernels[p.launches[i].kernel].name.as_str()).unwrap_or("-");
            let next = p.launches.get(e.after).map(|l| p.kernels[l.kernel].name.as_str()).unwrap_or("(the output)");
            let _ = writeln!(s, "    {}: {} after {before}, then {next}", e.node, e.op);
        }
    }
    s
}

/// Predicted decode time per token at context 1024 for 1, 2, 4 and 8 ranks (those the heads
/// allow): the largest rank's bytes at the HBM floor, its launches, and its all-reduces.
pub(super) fn prediction(primitive: &Graph, options: EmitOptions) -> Result<String> {
    let mut s = format!(
        "predicted decode time per token (batch 1, context {TABLE_CONTEXT}) on {FLOOR_GPU}s: bytes at {:.2} TB/s, \
         {:.1} µs per launch, {:.0} µs + 2(N-1)/N of the bytes at {:.0} GB/s (NVLink 4) per all-reduce \
         (assumed, not measured):\n",
        FLOOR_BYTES_PER_S / 1e12,
        LAUNCH_S * 1e6,
        ALL_REDUCE_S * 1e6,
        NVLINK_BYTES_PER_S / 1e9
    );
    let mut single = None;
    for world in [1u32, 2, 4, 8] {
        let steps = match decode_steps(primitive, world, options) {
            Ok(steps) => steps,
            Err(e) => {
                let _ = writeln!(s, "  N={world}: {:#}", e);
                continue;
            }
        };
        let Ok(p) = &steps[0].program else { continue };
        let (bytes, launches) = (step_bytes(p, TABLE_CONTEXT) as f64, p.launches.len() as f64);
        let share = 2.0 * (world as f64 - 1.0) / world as f64;
        let exchange =
            p.exchanges.iter().fold(0.0, |t, e| t + ALL_REDUCE_S + share * e.whole_bytes as f64 / NVLINK_BYTES_PER_S);
        let (memory, launch) = (bytes / FLOOR_BYTES_PER_S, launches * LAUNCH_S);
        let total = memory + launch + exchange;
        let base = *single.get_or_insert(total);
        let _ = writeln!(
            s,
            "  N={world}: {:.3} ms = {:.3} bytes + {:.3} launches + {:.3} exchanges ({}); {:.2}x one GPU",
            total * 1e3,
            memory * 1e3,
            launch * 1e3,
            exchange * 1e3,
            plural(p.exchanges.len() as u64, "exchange"),
            base / total,
        );
    }
    Ok(s)
}

/// Dumps each rank's decode and prefill graphs, plan and kernels under `rank<r>/`.
pub(super) fn dump_ranks(
    out: &mut Dump,
    decode: &[RankStep],
    prefill: &[Graph],
    arch: Arch,
    options: EmitOptions,
    plan: &dyn Fn(&Graph, &Graph) -> Result<serde_json::Value>,
) -> Result<()> {
    for (r, (step, prefill)) in decode.iter().zip(prefill).enumerate() {
        let root = format!("rank{r}/");
        let prefill_program = smelt::codegen::emit_with(prefill, options).ok();
        let files = |p: Option<&Program>, phase| p.map(|p| super::kernels::node_files(p, phase));
        let graphs = [
            ("decode", &step.graph, files(step.program.as_ref().ok(), None)),
            ("prefill", prefill, files(prefill_program.as_ref(), Some("prefill"))),
        ];
        for (name, g, notes) in graphs {
            let title = format!("qwen3.{name}.rank{r}");
            let note = |id| notes.as_ref().and_then(|n| n.get(&id).cloned());
            out.write(&format!("{root}{name}.txt"), smelt::ir::print::to_text_with_notes(g, &title, &note).as_bytes())?;
        }
        let json = serde_json::to_string_pretty(&plan(&step.graph, prefill)?).context("serializing plan.json")?;
        out.write(&format!("{root}plan.json"), json.as_bytes())?;
        if let Ok(p) = &step.program {
            super::kernels::dump_under(out, &root, p, arch, None)?;
        }
        if let Some(p) = &prefill_program {
            super::kernels::dump_under(out, &root, p, arch, Some("prefill"))?;
        }
    }
    Ok(())
}
