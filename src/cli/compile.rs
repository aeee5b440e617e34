//! `smelt compile`: declare Qwen3 as a graph, verify it, print a summary, optionally dump it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use smelt::codegen::{Arch, Program};
use smelt::ir::cost::{parameter_count, weight_bytes_read};
use smelt::ir::print::{op_histogram, to_dot, to_text_with_notes};
use smelt::ir::{Bindings, DType, Graph, NodeId};
use smelt::models::qwen3::{declare, DeclareOptions, Logits, Phase};
use smelt::models::Qwen3Config;
use smelt::passes::stats::{op_counts, OpCounts};
use smelt::passes::{plan_kv, plan_memory};

use super::outputs::{Dump, Reads};
use super::{decimal_size, plural};

/// A count of plan.json, which wrote it from a count.
fn count(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_default()
}

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model directory; its config.json is used (weights are not read).
    #[arg(long, conflicts_with = "config")]
    model: Option<PathBuf>,
    /// A config.json. With neither --model nor --config, the embedded Qwen3-0.6B config.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write the graphs (text, DOT, after each pass), plan.json, the kernels and kernels.json
    /// here; in decode.txt and prefill.txt each fused op's line ends `=> kernels/<name>.cu`.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Execution dtype; defaults to the config's (bf16 for the published checkpoints).
    #[arg(long, value_enum)]
    dtype: Option<super::DTypeArg>,
    /// Skip the pass pipeline: summarize and dump the primitive graphs.
    #[arg(long)]
    no_fuse: bool,
    /// Print the decode graph as it is after this pass: its name (fuse_rmsnorm), or for dce,
    /// which runs after each fusion, its step as --dump's passes/ numbers it (05-dce).
    #[arg(long, value_name = "PASS")]
    dump_after: Option<String>,
    /// Tokens per KV-cache block, at most max_position_embeddings [default: 16, or the
    /// context if shorter].
    #[arg(long, value_parser = super::at_least_one())]
    kv_block_tokens: Option<usize>,
    /// Memory for the KV cache, in GiB, to size the paged cache from (at most 1024: no GPU
    /// has more memory).
    #[arg(long, default_value_t = 4.0, value_parser = parse_gib)]
    kv_budget_gib: f64,
    /// Prompt length at which the prefill arena is planned, at most max_position_embeddings
    /// [default: 512, or the context if shorter].
    #[arg(long, value_parser = super::at_least_one())]
    prefill_tokens: Option<usize>,
    /// GPU architecture the dumped kernels are compiled for (sm_90, sm_80) [default: sm_90].
    #[arg(long, value_parser = parse_arch, requires = "dump")]
    arch: Option<Arch>,
    #[command(flatten)]
    variants: super::VariantArgs,
    /// Also compile for this many tensor-parallel ranks (Megatron layout): per rank what it
    /// reads and exchanges per decode step, a predicted time per token at 1, 2, 4 and 8 ranks,
    /// and with --dump each rank's graphs, plan and kernels under rank<r>/.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    tensor_parallel: u32,
}

/// The largest `--kv-budget-gib`: more than any GPU has (the largest hold 288 GB).
const MAX_KV_BUDGET_GIB: f64 = 1024.0;

fn parse_gib(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of GiB"))?;
    if !(v.is_finite() && v > 0.0 && v <= MAX_KV_BUDGET_GIB) {
        return Err(format!("must be a number of GiB in (0, {MAX_KV_BUDGET_GIB}], found {s}"));
    }
    Ok(v)
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    Arch::parse(s).ok_or_else(|| format!("unknown architecture {s:?} (known: sm_80, sm_90)"))
}

pub fn run(a: Args) -> Result<()> {
    if a.tensor_parallel > 1 && a.no_fuse {
        bail!("--tensor-parallel compiles each rank's fused graphs, and --no-fuse runs no passes: drop one of them");
    }
    if a.dump_after.is_some() && a.no_fuse {
        bail!("--dump-after shows a pass's output, and --no-fuse runs no passes: drop one of them");
    }
    let arch = a.arch.unwrap_or(Arch::Sm90);
    let config_path = a.model.as_ref().map(|dir| dir.join("config.json")).or(a.config.clone());
    let reads = Reads::new().maybe_file(config_path.as_deref(), "the config");
    // Checked and started before any work; dropped unfinished on an error, it leaves nothing.
    let mut dump = a.dump.as_deref().map(|dir| Dump::begin("--dump", dir, &reads)).transpose()?;
    let (cfg, origin) = config(&a)?;
    let (prefill_tokens, kv_block_tokens) = context_sizes(&a, &cfg)?;
    let dtype = a.dtype.map(DType::from).or(cfg.checkpoint_dtype).unwrap_or(DType::BF16);
    let opts = |phase, logits| DeclareOptions { phase, dtype, logits };
    let mut decode = declare(&cfg, opts(Phase::Decode, Logits::LastPosition)).context("declaring the decode graph")?;
    let mut prefill =
        declare(&cfg, opts(Phase::Prefill, Logits::AllPositions)).context("declaring the prefill graph")?;
    let primitive = (decode.clone(), prefill.clone());
    // Printed at the end, in one write (see `print_stdout`).
    let mut report = summary(&cfg, &origin, dtype, &decode, &prefill)?;
    let mut pass_dumps = Vec::new();
    let (mut program, mut prefill_program) = (None, None);
    if !a.no_fuse {
        pass_dumps = run_passes(&a, &mut decode, &mut prefill, &mut report)?;
        let options = smelt::codegen::EmitOptions { variants: a.variants.variants(), ..Default::default() };
        program = emit_decode(&decode, options, &mut report);
        prefill_program = emit_prefill(&prefill, options, &mut report);
    }
    let plan = Plan::new(&decode, &prefill, prefill_tokens, kv_block_tokens, a.kv_budget_gib)?;
    report += &plan.summary(a.no_fuse);
    if a.tensor_parallel > 1 {
        let options = smelt::codegen::EmitOptions { variants: a.variants.variants(), ..Default::default() };
        let world = a.tensor_parallel;
        let steps = super::compile_tp::decode_steps(&primitive.0, world, options)?;
        let _ = writeln!(report, "tensor parallelism over {world} ranks (Megatron layout), decode step per rank:");
        for (r, step) in steps.iter().enumerate() {
            report += &super::compile_tp::describe(r, step);
        }
        report += &super::compile_tp::prediction(&primitive.0, options)?;
        if let Some(out) = &mut dump {
            let prefill = super::compile_tp::ranks(&primitive.1, world, "prefill")?;
            let plan =
                |d: &Graph, p: &Graph| Ok(Plan::new(d, p, prefill_tokens, kv_block_tokens, a.kv_budget_gib)?.json);
            super::compile_tp::dump_ranks(out, &steps, &prefill, arch, options, &plan)?;
            let _ = writeln!(report, "dumped each rank's graphs, plan.json and kernels to rank<r>/");
        }
    }
    if let Some(out) = &mut dump {
        // The fused graphs' lines name their kernels' files.
        let files = |p: &Option<Program>, phase| p.as_ref().map(|p| super::kernels::node_files(p, phase));
        let graphs = [
            ("decode", &decode, files(&program, None)),
            ("prefill", &prefill, files(&prefill_program, Some("prefill"))),
            ("decode.primitive", &primitive.0, None),
            ("prefill.primitive", &primitive.1, None),
        ];
        write_graphs(out, &graphs)?;
        for (file, text) in pass_dumps {
            out.write(&format!("passes/{file}"), text.unwrap_or_default().as_bytes())?;
        }
        let json = serde_json::to_string_pretty(&plan.json).context("serializing plan.json")?;
        out.write("plan.json", json.as_bytes())?;
        if let Some(program) = &program {
            let _ = writeln!(report, "{}", super::kernels::dump(out, program, arch, None)?);
        }
        if let Some(program) = &prefill_program {
            let _ = writeln!(report, "prefill: {}", super::kernels::dump(out, program, arch, Some("prefill"))?);
        }
    }
    if let Some(out) = dump {
        let dir = out.target().to_path_buf();
        out.finish()?;
        let _ = writeln!(report, "dumped graphs, passes/ and plan.json to {}", dir.display());
    }
    super::print_stdout(&report)
}

/// The config `--model` or `--config` names, or the embedded Qwen3-0.6B one; and where it
/// came from.
fn config(a: &Args) -> Result<(Qwen3Config, String)> {
    Ok(match (&a.model, &a.config) {
        (Some(dir), _) => {
            let dir = super::model_dir_arg(dir)?;
            let path = dir.join("config.json");
            (Qwen3Config::from_file(&path)?, path.display().to_string())
        }
        (None, Some(path)) => (Qwen3Config::from_file(path)?, path.display().to_string()),
        (None, None) => (Qwen3Config::qwen3_0_6b(), "embedded Qwen3-0.6B config".to_string()),
    })
}

/// `--prefill-tokens` and `--kv-block-tokens`, or their defaults, checked against the model's
/// context.
fn context_sizes(a: &Args, cfg: &Qwen3Config) -> Result<(usize, usize)> {
    let prefill_tokens = a.prefill_tokens.unwrap_or(512.min(cfg.max_position_embeddings));
    let kv_block_tokens =
        a.kv_block_tokens.unwrap_or(smelt::passes::DEFAULT_BLOCK_TOKENS.min(cfg.max_position_embeddings));
    for (flag, value) in [("--prefill-tokens", prefill_tokens), ("--kv-block-tokens", kv_block_tokens)] {
        if value > cfg.max_position_embeddings {
            bail!(
                "{flag} {value} is more than the model's context ({} tokens, max_position_embeddings)",
                cfg.max_position_embeddings
            );
        }
    }
    Ok((prefill_tokens, kv_block_tokens))
}

/// Runs the pass pipeline on both graphs and prints what each pass did to the decode graph
/// (and the decode graph after the `--dump-after` pass); returns the decode graph's text after
/// each pass, by dump file name (kept only when dumped).
fn run_passes(
    a: &Args,
    decode: &mut Graph,
    prefill: &mut Graph,
    report: &mut String,
) -> Result<Vec<(String, Option<String>)>> {
    let keep = a.dump.is_some() || a.dump_after.is_some();
    let pipeline = smelt::passes::pipeline::standard().keep_text(keep);
    let shown =
        a.dump_after.as_deref().map(|name| pipeline.find_step(name).map_err(|e| anyhow!("--dump-after {name}: {e}")));
    let shown = shown.transpose()?;
    let labels = pipeline.step_labels();
    let runs = pipeline.run(decode, "qwen3.decode").context("compiling the decode graph")?;
    pipeline.run(prefill, "qwen3.prefill").context("compiling the prefill graph")?;
    let _ = writeln!(report, "pass pipeline (decode graph):");
    for (i, r) in runs.iter().enumerate() {
        let _ = writeln!(
            report,
            "  {:02} {:<20} matched {:>4}  changed {:>4}  nodes {:>5}  {:>8.2} ms  {}",
            i + 1,
            r.name,
            r.report.matched,
            r.report.changed,
            r.nodes,
            r.elapsed.as_secs_f64() * 1e3,
            r.report.notes.join("; ")
        );
    }
    if let Some(r) = shown.and_then(|step| runs.get(step)) {
        *report += r.text.as_deref().unwrap_or_default();
    }
    Ok(labels.into_iter().zip(runs).map(|(label, r)| (format!("{label}.txt"), r.text)).collect())
}

/// The decode kernels, their table printed; none (and why, printed) for a model the emitters
/// cannot handle yet, which still compiles to a graph and a plan.
fn emit_decode(decode: &Graph, options: smelt::codegen::EmitOptions, report: &mut String) -> Option<Program> {
    match smelt::codegen::emit_with(decode, options) {
        Ok(program) => {
            *report += &super::kernels::table(&program);
            Some(program)
        }
        Err(e) => {
            let _ = writeln!(report, "decode kernels: not generated: {e}");
            None
        }
    }
}

/// The prefill kernels, counted on one line; none (and why, printed) if they cannot be
/// generated.
fn emit_prefill(prefill: &Graph, options: smelt::codegen::EmitOptions, report: &mut String) -> Option<Program> {
    match smelt::codegen::emit_with(prefill, options) {
        Ok(p) => {
            let gemms = p.launches.iter().filter(|l| p.kernels[l.kernel].kind == "linear_gemm").count();
            // The GEMMs with a GEMV for steps of few tokens, and how many (by their K).
            let mut few_rows: Vec<usize> =
                p.launches.iter().filter_map(|l| l.few_rows.as_ref().map(|f| f.rows)).collect();
            let with = few_rows.len();
            few_rows.sort_unstable();
            few_rows.dedup();
            let which = if with == gemms { "each".to_string() } else { format!("{with} with") };
            let gemvs = match few_rows[..] {
                [] => String::new(),
                [rows] => format!(", {which} a GEMV at steps of at most {rows} tokens"),
                [least, .., most] => format!(", {which} a GEMV at steps of at most {least}-{most} tokens (by K)"),
            };
            let _ = writeln!(
                report,
                "prefill kernels: {} launches of {} kernels ({gemms} tensor-core GEMMs{gemvs})",
                p.launches.len(),
                p.kernels.len()
            );
            Some(p)
        }
        Err(e) => {
            let _ = writeln!(report, "prefill kernels: not generated: {e}");
            None
        }
    }
}

/// The figures of `plan.json` (a contract for outside checks) and of the printed summary.
struct Plan {
    json: serde_json::Value,
    decode: OpCounts,
}

impl Plan {
    fn new(decode: &Graph, prefill: &Graph, prefill_tokens: usize, block: usize, budget_gib: f64) -> Result<Plan> {
        let graph_figures = |g: &Graph, t: usize| -> Result<(OpCounts, serde_json::Value)> {
            let b = Bindings { batch: 1, new_tokens: t, cached_tokens: 0 };
            let counts = op_counts(g);
            let mem = plan_memory(g, &b);
            if mem.overflowed() {
                bail!("the activation arena of {t} new tokens overflows a 64-bit byte count");
            }
            let weight_bytes =
                weight_bytes_read(g, &b).context("the weight bytes read per step overflow a 64-bit count")?;
            let json = serde_json::json!({
                "ops": counts.ops,
                "ops_per_layer": counts.ops_per_layer,
                "ops_outside_layers": counts.ops_outside_layers,
                "ops_by_kind": counts.by_kind,
                "arena_bytes": mem.arena_bytes,
                "arena_bytes_without_reuse": mem.naive_bytes,
                "new_tokens": t,
                "weight_bytes_read": weight_bytes,
            });
            Ok((counts, json))
        };
        let (decode_counts, decode_json) = graph_figures(decode, 1)?;
        let (_, prefill_json) = graph_figures(prefill, prefill_tokens).context("--prefill-tokens")?;
        // At most 2^40 bytes (parse_gib).
        let budget = (budget_gib * (1u64 << 30) as f64) as usize;
        let kv = plan_kv(decode, block, budget).with_context(|| {
            format!("planning the KV cache (--kv-budget-gib {budget_gib}, --kv-block-tokens {block})")
        })?;
        let json = serde_json::json!({ "decode": decode_json, "prefill": prefill_json, "kv": kv });
        Ok(Plan { json, decode: decode_counts })
    }

    fn summary(&self, unfused: bool) -> String {
        let d = &self.json["decode"];
        let kv = &self.json["kv"];
        let mut s = String::new();
        let what = if unfused { "primitive ops (--no-fuse)" } else { "fused ops" };
        let _ = writeln!(
            s,
            "decode step (batch 1): {} {what}, at most {} per layer, {} outside the layers",
            self.decode.ops, self.decode.ops_per_layer, self.decode.ops_outside_layers
        );
        let kinds: Vec<String> = self.decode.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(s, "  by kind: {}", kinds.join(", "));
        let _ = writeln!(
            s,
            "  activation arena: {} bytes (decode), {} bytes (prefill of {} tokens)",
            d["arena_bytes"], self.json["prefill"]["arena_bytes"], self.json["prefill"]["new_tokens"]
        );
        let _ = writeln!(
            s,
            "  KV cache: {} bytes per token in {}, blocks of {}; {} ({}) in {} bytes",
            kv["bytes_per_token"],
            kv["dtype"].as_str().unwrap_or("?"),
            plural(count(&kv["block_tokens"]), "token"),
            plural(count(&kv["blocks"]), "block"),
            plural(count(&kv["capacity_tokens"]), "token"),
            kv["budget_bytes"]
        );
        s
    }
}

fn summary(cfg: &Qwen3Config, origin: &str, dtype: DType, decode: &Graph, prefill: &Graph) -> Result<String> {
    let mut s = String::new();
    let _ = writeln!(s, "Qwen3 from {origin}, dtype {dtype}");
    let _ = writeln!(
        s,
        "  {}, hidden {}, {} / {} x head_dim {}, intermediate {}, vocab {}, tied embeddings: {}",
        plural(cfg.num_layers as u64, "layer"),
        cfg.hidden_size,
        plural(cfg.num_heads as u64, "head"),
        plural(cfg.num_kv_heads as u64, "KV head"),
        cfg.head_dim,
        cfg.intermediate_size,
        cfg.vocab_size,
        cfg.tie_word_embeddings
    );
    let params = parameter_count(decode).context("the parameter count overflows a 64-bit count")?;
    let param_bytes = params.saturating_mul(dtype.size_bytes());
    let _ = writeln!(s, "  parameters: {params} ({} in {dtype})", decimal_size(param_bytes as u64));
    for (name, g) in [("decode", decode), ("prefill", prefill)] {
        let hist = op_histogram(g);
        let kinds: Vec<String> = hist.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(s, "  {name} graph: {} ops: {}", g.node_count(), kinds.join(", "));
    }
    let step = Bindings { batch: 1, new_tokens: 1, cached_tokens: 0 };
    let weights = weight_bytes_read(decode, &step).context("the weight bytes read per step overflow a 64-bit count")?;
    let kv = cfg.kv_bytes_per_token(dtype);
    let _ = writeln!(
        s,
        "  bytes read per decode step: {weights} of weights ({}) + {kv} of KV cache per context token",
        decimal_size(weights as u64)
    );
    let at_1k = weights.saturating_add(kv.saturating_mul(1024));
    let _ = writeln!(s, "    at context 1024: {}", decimal_size(at_1k as u64));
    Ok(s)
}

/// A graph to dump: its file name, the graph, and a note for some of its nodes' lines.
type DumpedGraph<'g> = (&'g str, &'g Graph, Option<HashMap<NodeId, String>>);

/// Each graph's text and DOT; a text line whose node has a note in `notes` ends with it.
fn write_graphs(out: &mut Dump, graphs: &[DumpedGraph<'_>]) -> Result<()> {
    for (name, g, notes) in graphs {
        let title = format!("qwen3.{name}");
        let note = |id| notes.as_ref().and_then(|n| n.get(&id).cloned());
        for (ext, text) in [("txt", to_text_with_notes(g, &title, &note)), ("dot", to_dot(g, &title))] {
            out.write(&format!("{name}.{ext}"), text.as_bytes())?;
        }
    }
    Ok(())
}
