//! The CUDA backend. Without a GPU, what a CPU can check: the decode programs of the fixture
//! models (the ones the GPU check runs) emit and compile with NVRTC. With a GPU: every kernel
//! against the CPU evaluator on real steps, and greedy generation equal to the CPU's. Tests
//! that need a device print why they skip.

mod common;

use smelt::codegen::{emit, Arch, Nvrtc};
use smelt::ir::DType;
use smelt::models::{generate, CausalLm, LoadOptions, Qwen3Cpu, Qwen3Cuda, SamplingParams};
use smelt::runtime::cuda::{CudaError, DecoderOptions, Gpu};

/// Fixtures whose head dim the decode attention kernel takes in f32 (32 elements per head).
const GPU_FIXTURES: [&str; 2] = ["gqa2-untied-bf16-sharded", "one-token"];

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

#[test]
fn fixture_decode_programs_compile_with_nvrtc() {
    let nvrtc = match Nvrtc::load() {
        Ok(n) => n,
        Err(e) if in_ci() => panic!("CI=true but {e}"),
        Err(e) => return eprintln!("skipped: {e}"),
    };
    for name in GPU_FIXTURES {
        let model = Qwen3Cpu::load_with(&common::fixture_dir(name), LoadOptions::new(DType::F32)).expect(name);
        let program = emit(model.decode_graph()).unwrap_or_else(|e| panic!("{name}: {e}"));
        for k in &program.kernels {
            nvrtc.compile(&k.name, &k.source, Arch::Sm90).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        eprintln!("{name}: {} kernels, {} launches compile for sm_90", program.kernels.len(), program.launches.len());
    }
}

/// A GPU, or why there is none (printed by the caller).
fn gpu() -> Option<Gpu> {
    match Gpu::open(0) {
        Ok(g) => Some(g),
        Err(e @ (CudaError::NoDriver | CudaError::NoDevice { .. })) => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("a GPU is present but unusable: {e}"),
    }
}

fn options() -> DecoderOptions {
    DecoderOptions { module_cache: None, prefill_chunk: 32, ..DecoderOptions::new(64) }
}

#[test]
fn every_kernel_matches_the_evaluator_on_the_gpu() {
    if gpu().is_none() {
        return;
    }
    for name in GPU_FIXTURES {
        let cpu = Qwen3Cpu::load_with(&common::fixture_dir(name), LoadOptions::new(DType::F32)).expect(name);
        let mut model = Qwen3Cuda::new(cpu, &options()).expect(name);
        for (p, token) in [3u32, 1, 4, 1, 5, 9, 2, 6].into_iter().enumerate() {
            let checks = model.check_step(token).expect(name);
            let bad: Vec<_> = checks.iter().filter(|c| !c.ok).collect();
            assert!(bad.is_empty(), "{name} position {p}: {bad:#?}");
        }
    }
}

#[test]
fn gpu_greedy_generation_matches_the_cpu() {
    if gpu().is_none() {
        return;
    }
    for name in GPU_FIXTURES {
        let dir = common::fixture_dir(name);
        let mut cpu = Qwen3Cpu::load_with(&dir, LoadOptions::new(DType::F32)).expect(name);
        let prompt = [5u32, 17, 42, 7];
        let want = generate(&mut cpu, &prompt, 12, &SamplingParams::default(), |_| true).expect(name);
        let mut gpu = Qwen3Cuda::new(cpu, &options()).expect(name);
        let got = generate(&mut gpu, &prompt, 12, &SamplingParams::default(), |_| true).expect(name);
        assert_eq!(got, want, "{name}: GPU and CPU greedy ids differ");
        assert_eq!(gpu.position(), prompt.len() + got.len() - 1);
    }
}
