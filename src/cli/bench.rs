//! `smelt bench`: decode on the GPU at batch 1 (and optionally batched, and prefill), each
//! figure next to its floor measured in the same run: bytes the step must move over the
//! device-to-device copy bandwidth, or FLOPs over the rate of smelt's own bf16 GEMM at 4096^3.
//! Plus JIT time cold and cached and device memory. Writes the figures as JSON for
//! `bench/results/`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use smelt::codegen::ModuleCache;
use smelt::models::{CausalLm, LoadOptions, Qwen3Config, Qwen3Cpu, Qwen3Cuda};
use smelt::runtime::cuda::DecoderOptions;
use smelt::runtime::cuda::Gpu;
use smelt::runtime::progress::{Task, Unit};

use super::outputs::{write_atomically, Reads};
use super::{at_most, numbers, DTypeArg, Numbers};

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model directory; without it, seeded random weights with the embedded
    /// Qwen3-0.6B config.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: DTypeArg,
    /// Contexts (tokens already in the KV cache) at which decode is timed.
    #[arg(long, default_value = "128,1024,4096", value_parser = numbers)]
    contexts: Numbers,
    /// Timed decode steps per context.
    #[arg(long, default_value_t = 64, value_parser = super::at_least_one())]
    steps: usize,
    /// Write the figures to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Launch kernel by kernel instead of replaying CUDA graphs (decode and batched steps).
    #[arg(long)]
    no_cuda_graphs: bool,
    /// Launch without programmatic dependent launch.
    #[arg(long)]
    no_pdl: bool,
    /// Also time prefill of these prompt lengths through the prefill kernels (tensor-core GEMM,
    /// flash attention; experimental), e.g. 512,2048.
    #[arg(long, value_parser = numbers)]
    prefill: Option<Numbers>,
    /// Also time every kernel of one step at the largest context (device events between
    /// launches) and print where the step's time goes.
    #[arg(long)]
    profile: bool,
    /// Also time batched decode steps of these many sequences at once, each at context 128
    /// (as the PyTorch baseline's batched decode), e.g. 8,32,64.
    #[arg(long, value_parser = numbers)]
    batch: Option<Numbers>,
    #[command(flatten)]
    variants: super::VariantArgs,
}

/// The context of every sequence in a timed batched decode step.
const BATCH_CONTEXT: usize = 128;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(a: Args) -> Result<()> {
    let plan = Plan::check(&a)?;
    let dtype = a.dtype.into();
    super::MemoryLimit::gpu("smelt bench")?;
    // A checkpoint streams to the device; random weights are made on the host first.
    let random = match &a.model {
        Some(_) => None,
        None => Some(Qwen3Cpu::with_random_weights(plan.config.clone(), LoadOptions::new(dtype), 0)?),
    };
    let start = |options: DecoderOptions| match (&a.model, &random) {
        (Some(dir), _) => Qwen3Cuda::load(dir, dtype, &options).with_context(|| format!("loading {}", dir.display())),
        (None, cpu) => {
            Qwen3Cuda::from_cpu(cpu.as_ref().expect("made above"), &options).context("starting the CUDA backend")
        }
    };
    let device = Device::measure()?;

    // JIT: cold into an empty module cache, then again from it.
    // A folder of its own, removed when `cache_dir` drops.
    let cache_dir =
        tempfile::Builder::new().prefix("smelt-bench-cache-").tempdir().context("creating a temporary module cache")?;
    let options = |cache_dir: &Path| DecoderOptions {
        cuda_graphs: !a.no_cuda_graphs,
        module_cache: Some(ModuleCache::at(cache_dir)),
        pdl: !a.no_pdl,
        prefill: a.prefill.is_some(),
        prefill_chunk: 2048,
        batch_rows: plan.batch_rows,
        variants: a.variants.variants(),
        ..DecoderOptions::new(plan.max_context(a.steps))
    };
    let cold = start(options(cache_dir.path()))?;
    let jit_cold = cold.decoder().jit().seconds;
    drop(cold);
    let mut model = start(options(cache_dir.path()))?;
    let jit_cached = model.decoder().jit().seconds;
    drop(cache_dir);
    tracing::info!(
        "JIT of {} kernels: {jit_cold:.2}s cold, {jit_cached:.2}s from the module cache",
        model.decoder().jit().kernels
    );

    let vocab = model.config().vocab_size as u64;
    let token = |p: usize| (((p as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % vocab) as u32;
    let mut json = serde_json::Map::new();
    let pdl = model.decoder().pdl();
    let rows = bench_decode(&mut model, &plan.contexts, a.steps, device.bandwidth, &token, &mut json)?;
    bench_prefill(&mut model, &plan.prefill_lengths, device.gemm, &token, &mut json)?;
    bench_batched(&mut model, &plan.batch_sizes, a.steps, (device.bandwidth, dtype), &token, &mut json);
    // The same step without programmatic dependent launch, for what it buys.
    if pdl {
        if let Some(&context) = plan.contexts.iter().find(|&&c| c == 1024).or(plan.contexts.first()) {
            model.set_pdl(false);
            let (ms, _) = time_decode(&mut model, context as usize, a.steps, &token)?;
            tracing::info!("context {context} without programmatic dependent launch: {ms:.3} ms/token");
            json.insert(format!("decode_ms_per_token_ctx{}_no_pdl", label(context as usize)), ms.into());
            model.set_pdl(true);
        }
    }
    if a.profile {
        let context = model.position();
        let times = model.profile_step(token(context))?;
        print_profile(model.decoder().program(), &times, context as u64, device.bandwidth);
    }
    let (free_after, _) = model.decoder().gpu().memory()?;
    let used = device.free_before.saturating_sub(free_after);
    print_summary(&a, &device, (jit_cold, jit_cached), used, &rows);
    json.insert("device".into(), device.name.clone().into());
    json.insert("dtype".into(), dtype_name(a.dtype).into());
    json.insert("copy_bandwidth_gb_s".into(), (device.bandwidth / 1e9).into());
    if let Some(rate) = device.gemm {
        json.insert("gemm_4096_tflops".into(), (rate / 1e12).into());
    }
    json.insert("jit_cold_s".into(), jit_cold.into());
    json.insert("jit_cached_s".into(), jit_cached.into());
    json.insert("device_memory_used_bytes".into(), used.into());
    json.insert("decode_steps_timed".into(), a.steps.into());
    json.insert("cuda_graphs".into(), (!a.no_cuda_graphs).into());
    json.insert("programmatic_dependent_launch".into(), pdl.into());
    json.insert("variants".into(), serde_json::json!(a.variants.variants()));
    if let Some(path) = &a.json {
        write_atomically(path, serde_json::to_string_pretty(&serde_json::Value::Object(json))?.as_bytes())?;
        tracing::info!("wrote {}", path.display());
    }
    Ok(())
}

/// The flags, checked against the model before anything runs: without a GPU the command
/// fails in a second, before the host model is built.
struct Plan {
    config: Qwen3Config,
    contexts: Vec<u32>,
    prefill_lengths: Vec<u32>,
    batch_sizes: Vec<u32>,
    /// The widest batched step.
    batch_rows: usize,
}

impl Plan {
    fn check(a: &Args) -> Result<Plan> {
        if let Some(path) = &a.json {
            let reads = match &a.model {
                Some(dir) => Reads::new().model_dir(dir),
                None => Reads::new(),
            };
            reads.check_output("--json", path)?;
        }
        let contexts = a.contexts.0.clone();
        let prefill_lengths = a.prefill.as_ref().map(|n| n.0.clone()).unwrap_or_default();
        let batch_sizes = a.batch.as_ref().map(|n| n.0.clone()).unwrap_or_default();
        let config = match &a.model {
            Some(dir) => Qwen3Config::from_file(&super::model_dir_arg(dir)?.join("config.json"))?,
            None => Qwen3Config::qwen3_0_6b(),
        };
        let room = config.max_position_embeddings.saturating_sub(a.steps + 1);
        at_most("--contexts", &contexts, room, "the model's context less --steps and one")?;
        at_most("--prefill", &prefill_lengths, config.max_position_embeddings, "the model's context")?;
        at_most("--batch", &batch_sizes, super::MAX_BATCH as usize, "the most sequences a step runs")?;
        if batch_sizes.contains(&0) || prefill_lengths.contains(&0) {
            bail!("--batch and --prefill take counts of at least 1");
        }
        let batch_rows = batch_sizes.iter().max().copied().unwrap_or(0) as usize;
        Ok(Plan { config, contexts, prefill_lengths, batch_sizes, batch_rows })
    }

    /// The KV cache's tokens: one sequence at the longest context, or every batched sequence
    /// in blocks of its own.
    fn max_context(&self, steps: usize) -> usize {
        let longest = self.contexts.iter().chain(&self.prefill_lengths).max().copied().unwrap_or(1) as usize;
        let block = smelt::passes::DEFAULT_BLOCK_TOKENS;
        let batch_tokens = self.batch_rows * (BATCH_CONTEXT + steps + 3).div_ceil(block) * block;
        (longest + steps + 1).max(batch_tokens)
    }
}

/// The GPU and its ceilings, measured before the model is on it.
struct Device {
    name: String,
    free_before: usize,
    total: usize,
    /// Device-to-device copy bandwidth, bytes/s (read + write).
    bandwidth: f64,
    /// smelt's own bf16 GEMM at 4096^3, FLOP/s (None if it failed).
    gemm: Option<f64>,
}

impl Device {
    fn measure() -> Result<Device> {
        let gpu = Gpu::open(0)?;
        let name = gpu.name().to_string();
        let (free_before, total) = gpu.memory()?;
        let bandwidth = gpu.copy_bandwidth(1 << 30, 20)?;
        tracing::info!("{name}: copy bandwidth {:.0} GB/s (read + write)", bandwidth / 1e9);
        // The compute ceiling for prefill: smelt's own tensor-core GEMM at 4096^3 (no cuBLAS
        // here). New and not yet run on a GPU: a failure costs the floors, not the other figures.
        let gemm = match smelt::runtime::cuda::gemm_rate(&gpu, 4096, 10) {
            Ok(rate) => {
                tracing::info!("{name}: smelt's bf16 GEMM at 4096^3: {:.0} TFLOP/s", rate / 1e12);
                Some(rate)
            }
            Err(e) => {
                tracing::warn!("the GEMM ceiling failed, prefill has no FLOP floor: {e}");
                None
            }
        };
        Ok(Device { name, free_before, total, bandwidth, gemm })
    }
}

/// Decode at batch 1 at each context: (context, ms/token, floor ms, bytes per step) rows.
fn bench_decode(
    model: &mut Qwen3Cuda,
    contexts: &[u32],
    steps: usize,
    bandwidth: f64,
    token: &dyn Fn(usize) -> u32,
    json: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<(usize, f64, f64, u64)>> {
    let program = model.decoder().program().clone();
    let mut rows = Vec::new();
    for &context in contexts {
        let context = context as usize;
        let (ms, fill_s) = time_decode(model, context, steps, token)?;
        let bytes: u64 = program.launches.iter().map(|s| s.cost.bytes_at(context as u64 + steps as u64 / 2)).sum();
        let floor_ms = bytes as f64 / bandwidth * 1e3;
        tracing::info!(
            "context {context}: {ms:.3} ms/token (floor {floor_ms:.3} ms, {:.0}% of bandwidth); filled in {fill_s:.1}s",
            floor_ms / ms * 100.0
        );
        json.insert(format!("decode_ms_per_token_ctx{}", label(context)), ms.into());
        json.insert(format!("decode_floor_ms_ctx{}", label(context)), floor_ms.into());
        rows.push((context, ms, floor_ms, bytes));
    }
    Ok(rows)
}

/// Prefill throughput: a fresh sequence of n tokens each time, median of 5 after a warm-up.
fn bench_prefill(
    model: &mut Qwen3Cuda,
    lengths: &[u32],
    gemm: Option<f64>,
    token: &dyn Fn(usize) -> u32,
    json: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    for &n in lengths {
        let prompt: Vec<u32> = (0..n as usize).map(token).collect();
        let mut times = Vec::new();
        for i in 0..6 {
            model.reset();
            let t = Instant::now();
            model.forward_greedy(&prompt)?;
            if i > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        let s = median(&mut times);
        let floor = gemm.map(|rate| prefill_flops(model.config(), n as usize) / rate * 1e3);
        let floor_text = floor.map_or(String::new(), |ms| {
            format!(" (floor {ms:.2} ms at the GEMM's rate, {:.0}% of it)", ms / (s * 1e3) * 100.0)
        });
        tracing::info!("prefill of {n} tokens: {:.2} ms, {:.0} tokens/s{floor_text}", s * 1e3, n as f64 / s);
        json.insert(format!("prefill_tokens_per_s_{n}"), (n as f64 / s).into());
        if let Some(ms) = floor {
            json.insert(format!("prefill_floor_ms_{n}"), ms.into());
        }
    }
    Ok(())
}

/// Batched decode: every sequence at BATCH_CONTEXT, each weight read once per step. New and
/// not yet run on a GPU: a failure costs its figure (a warning), not the others.
fn bench_batched(
    model: &mut Qwen3Cuda,
    sizes: &[u32],
    steps: usize,
    (bandwidth, dtype): (f64, smelt::ir::DType),
    token: &dyn Fn(usize) -> u32,
    json: &mut serde_json::Map<String, serde_json::Value>,
) {
    let weights: u64 = model.decoder().program().launches.iter().map(|s| s.cost.weight_bytes).sum();
    for &n in sizes {
        let ms = match time_batched(model.decoder_mut(), n as usize, steps, token) {
            Ok(ms) => ms,
            Err(e) => {
                tracing::warn!("batched decode of {n} sequences failed: {e:#}");
                continue;
            }
        };
        let rate = n as f64 / (ms / 1e3);
        // Every weight once, and each sequence's KV.
        let kv = n as u64 * (BATCH_CONTEXT as u64 + steps as u64 / 2) * model.config().kv_bytes_per_token(dtype) as u64;
        let floor_ms = (weights + kv) as f64 / bandwidth * 1e3;
        tracing::info!(
            "batched decode of {n} sequences at context {BATCH_CONTEXT}: {ms:.3} ms/step, {rate:.0} tokens/s \
             (floor {floor_ms:.3} ms/step, {:.0}% of bandwidth)",
            floor_ms / ms * 100.0
        );
        json.insert(format!("batched_decode_floor_ms_per_step_{n}"), floor_ms.into());
        json.insert(format!("batched_decode_ms_per_step_{n}"), ms.into());
        json.insert(format!("batched_decode_tokens_per_s_{n}"), rate.into());
    }
}

/// The closing table on stdout.
fn print_summary(
    a: &Args,
    device: &Device,
    (jit_cold, jit_cached): (f64, f64),
    used: usize,
    rows: &[(usize, f64, f64, u64)],
) {
    println!(
        "smelt bench on {} ({} dtype, CUDA graphs {})",
        device.name,
        dtype_name(a.dtype),
        if a.no_cuda_graphs { "off" } else { "on" }
    );
    println!("  copy bandwidth (read+write)      {:>10.0} GB/s", device.bandwidth / 1e9);
    if let Some(rate) = device.gemm {
        println!("  smelt's bf16 GEMM at 4096^3      {:>10.0} TFLOP/s", rate / 1e12);
    }
    println!("  JIT, empty cache / cached         {jit_cold:>8.2} s / {jit_cached:.2} s");
    println!(
        "  device memory used               {:>10.1} MiB of {:.0} GiB",
        used as f64 / 1048576.0,
        device.total as f64 / 1073741824.0
    );
    println!("  {:<10} {:>12} {:>12} {:>10} {:>14}", "context", "ms/token", "floor ms", "of floor", "bytes/step");
    for (context, ms, floor, bytes) in rows {
        println!("  {context:<10} {ms:>12.3} {floor:>12.3} {:>9.0}% {bytes:>14}", floor / ms * 100.0);
    }
}

/// Fills the cache to `context` tokens, then times `steps` greedy steps: (median ms per step,
/// seconds the fill took).
fn time_decode(
    model: &mut Qwen3Cuda,
    context: usize,
    steps: usize,
    token: &dyn Fn(usize) -> u32,
) -> Result<(f64, f64)> {
    model.reset();
    let t = Instant::now();
    let fill = Task::begin(&format!("filling the KV cache to context {context}"), context as u64, Unit::Items);
    for p in 0..context {
        model.forward_greedy(&[token(p)])?;
        fill.advance(1);
    }
    drop(fill);
    let fill_s = t.elapsed().as_secs_f64();
    let mut next = token(context);
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t = Instant::now();
        next = model.forward_greedy(&[next])?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((median(&mut times), fill_s))
}

/// FLOPs of a prefill of `n` tokens: the layers' matmuls for every token, causal attention
/// (q.k and p.v over n(n+1)/2 pairs per head), and the lm_head for the last token only.
fn prefill_flops(c: &Qwen3Config, n: usize) -> f64 {
    let (d, q, kv) = (c.hidden_size as f64, (c.num_heads * c.head_dim) as f64, (c.num_kv_heads * c.head_dim) as f64);
    let per_token = 2.0 * (d * q + 2.0 * d * kv + q * d + 3.0 * d * c.intermediate_size as f64);
    let n = n as f64;
    let attention = 4.0 * q * n * (n + 1.0) / 2.0;
    c.num_layers as f64 * (n * per_token + attention) + 2.0 * c.vocab_size as f64 * d
}

/// Times `steps` batched decode steps of `rows` sequences, each in blocks of its own from
/// context BATCH_CONTEXT on, after two untimed ones: median ms per step. The KV rows before
/// BATCH_CONTEXT are left as they are (what they hold does not change the time).
fn time_batched(
    decoder: &mut smelt::runtime::cuda::CudaDecoder,
    rows: usize,
    steps: usize,
    token: &dyn Fn(usize) -> u32,
) -> Result<f64> {
    let bt = decoder.kv_shape().block_tokens;
    let per_seq = (BATCH_CONTEXT + steps + 3).div_ceil(bt);
    let tables: Vec<Vec<u32>> = (0..rows).map(|i| (0..per_seq).map(|j| (i * per_seq + j) as u32).collect()).collect();
    let mut times = Vec::with_capacity(steps);
    for s in 0..steps + 2 {
        let batch: Vec<smelt::runtime::cuda::BatchRow<'_>> = (0..rows)
            .map(|i| smelt::runtime::cuda::BatchRow {
                token: token(i * 7919 + s),
                position: BATCH_CONTEXT + s,
                table: &tables[i],
            })
            .collect();
        let t = Instant::now();
        decoder.decode_batch(&batch, false)?;
        if s >= 2 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(median(&mut times))
}

/// Time, bytes and achieved bandwidth per kernel, summed over a step's launches of it.
fn print_profile(program: &smelt::codegen::Program, times_ms: &[f64], context: u64, bandwidth: f64) {
    let mut rows: Vec<(String, usize, f64, u64)> = Vec::new();
    for (s, &ms) in program.launches.iter().zip(times_ms) {
        let name = &program.kernels[s.kernel].name;
        let bytes = s.cost.bytes_at(context);
        match rows.iter_mut().find(|r| &r.0 == name) {
            Some(r) => {
                r.1 += 1;
                r.2 += ms;
                r.3 += bytes;
            }
            None => rows.push((name.clone(), 1, ms, bytes)),
        }
    }
    let total: f64 = times_ms.iter().sum();
    println!("profile of one step at context {context} (kernel by kernel, no graph; sum {total:.3} ms):");
    println!(
        "  {:<30} {:>6} {:>10} {:>8} {:>14} {:>9} {:>9}",
        "kernel", "calls", "ms", "share", "bytes", "GB/s", "of copy"
    );
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    for (name, calls, ms, bytes) in rows {
        let gbs = bytes as f64 / (ms / 1e3) / 1e9;
        println!(
            "  {name:<30} {calls:>6} {ms:>10.4} {:>7.1}% {bytes:>14} {gbs:>9.0} {:>8.0}%",
            ms / total * 100.0,
            gbs * 1e9 / bandwidth * 100.0
        );
    }
}

/// `1024` → `1k`, `128` → `128`.
fn label(context: usize) -> String {
    if context >= 1024 && context % 1024 == 0 {
        format!("{}k", context / 1024)
    } else {
        context.to_string()
    }
}

fn dtype_name(d: DTypeArg) -> &'static str {
    match d {
        DTypeArg::F32 => "f32",
        DTypeArg::Bf16 => "bf16",
        DTypeArg::F16 => "f16",
    }
}
