//! CPU reference backend: time per decoded token for Qwen3-0.6B (the real config, seeded
//! random weights, f32 compute) after a prompt of `PROMPT` tokens.
//!
//!     cargo bench --bench cpu_decode
//!
//! Set `SMELT_BENCH_MODEL=DIR` to load a checkpoint directory instead of random weights.
//! The CPU backend is the correctness oracle, not the fast path: this number says how long
//! the CPU checks take, and is the baseline the CUDA backend is measured against.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use smelt::ir::DType;
use smelt::models::qwen3::Logits;
use smelt::models::{LoadOptions, Qwen3Config, Qwen3Cpu};

const PROMPT: usize = 64;

fn load() -> Qwen3Cpu {
    match std::env::var_os("SMELT_BENCH_MODEL") {
        Some(dir) => Qwen3Cpu::load(std::path::Path::new(&dir), DType::F32).expect("loading SMELT_BENCH_MODEL"),
        None => Qwen3Cpu::with_random_weights(Qwen3Config::qwen3_0_6b(), LoadOptions::new(DType::F32), 0)
            .expect("random 0.6B"),
    }
}

fn decode(c: &mut Criterion) {
    let mut model = load();
    let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| (i * 7919) % 151_000).collect();
    model.forward(&prompt, Logits::LastPosition).expect("prefill");
    let mut group = c.benchmark_group("qwen3-0.6b-cpu-f32");
    group.sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(20));
    // Each iteration appends one token, so the context grows from PROMPT over the run.
    group.bench_function(format!("decode_step_ctx{PROMPT}+"), |b| {
        b.iter(|| model.forward(&[42], Logits::LastPosition).expect("decode step"))
    });
    group.finish();
    eprintln!("context after the benchmark: {} tokens", model.position());
}

criterion_group!(benches, decode);
criterion_main!(benches);
