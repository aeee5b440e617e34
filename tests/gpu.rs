//! The CUDA backend. Without a GPU, what a CPU can check: the decode programs of the fixture
//! models (the ones the GPU check runs) emit and compile with NVRTC. With a GPU: every kernel
//! against the CPU evaluator on real steps, and greedy generation equal to the CPU's. Tests
//! that need a device print why they skip.

mod common;

use common::greedy;
use smelt::codegen::{emit, Arch, Nvrtc};
use smelt::ir::DType;
use smelt::models::{generate, CausalLm, Continuation, LoadOptions, Qwen3Cpu, Qwen3Cuda, SamplingParams};
use smelt::runtime::cuda::{CudaError, DecoderOptions, Gpu};

/// Fixtures whose head dim the decode attention kernel takes in f32 (32 elements per head).
const GPU_FIXTURES: [&str; 2] = ["gqa2-untied-bf16-sharded", "one-token"];

/// The running test's name (libtest names each test's thread after it).
fn current_test() -> String {
    std::thread::current().name().unwrap_or("a GPU test").to_string()
}

/// NVRTC, or None after saying why the test skips (under `CI=true` its absence fails).
fn nvrtc() -> Option<Nvrtc> {
    match Nvrtc::load() {
        Ok(n) => Some(n),
        Err(e) => {
            smelt::codegen::skip::missing_tool(&current_test(), &e.to_string());
            None
        }
    }
}

#[test]
fn fixture_decode_programs_compile_with_nvrtc() {
    let Some(nvrtc) = nvrtc() else { return };
    for name in GPU_FIXTURES {
        let model = Qwen3Cpu::load_with(&common::fixture_dir(name), LoadOptions::new(DType::F32)).expect(name);
        let program = emit(model.blueprint().decode_graph()).unwrap_or_else(|e| panic!("{name}: {e}"));
        for k in &program.kernels {
            nvrtc.compile(&k.name, &k.source, Arch::Sm90).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        eprintln!("{name}: {} kernels, {} launches compile for sm_90", program.kernels.len(), program.launches.len());
    }
}

/// `smelt bench`'s compute ceiling (its own GEMM at 4096^3) compiles, so the bench can run.
#[test]
fn the_gemm_ceiling_kernel_compiles_with_nvrtc() {
    let Some(nvrtc) = nvrtc() else { return };
    let k = smelt::runtime::cuda::gemm_ceiling_kernel(4096).unwrap();
    for arch in [Arch::Sm80, Arch::Sm90] {
        nvrtc.compile(&k.name, &k.source, arch).unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(smelt::runtime::cuda::gemm_ceiling_kernel(100).is_err());
}

/// A GPU, or why there is none (printed by the caller).
fn gpu() -> Option<Gpu> {
    match Gpu::open(0) {
        Ok(g) => Some(g),
        Err(e @ (CudaError::NoDriver | CudaError::NoDevice { .. })) => {
            smelt::codegen::skip::missing_gpu(&current_test(), &e.to_string());
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
        let dir = common::fixture_dir(name);
        let cpu = Qwen3Cpu::load_with(&dir, LoadOptions::new(DType::F32)).expect(name);
        let mut model = Qwen3Cuda::load(&dir, DType::F32, &options()).expect(name);
        for (p, token) in [3u32, 1, 4, 1, 5, 9, 2, 6].into_iter().enumerate() {
            let checks = model.check_step(&cpu, token).expect(name);
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
        let want = generate(&mut cpu, &prompt, greedy(&prompt, 12), |_, _| {}).expect(name).ids;
        // Weights streamed from the checkpoint, as `smelt generate --device cuda` loads them.
        let mut gpu = Qwen3Cuda::load(&dir, DType::F32, &options()).expect(name);
        let got = generate(&mut gpu, &prompt, greedy(&prompt, 12), |_, _| {}).expect(name).ids;
        assert_eq!(got, want, "{name}: GPU and CPU greedy ids differ");
        assert_eq!(gpu.position(), prompt.len() + got.len() - 1);
    }
}

/// The batch engine on the GPU passes the CPU's engine test: each request of a batch gets
/// exactly its one-at-a-time GPU output, with the prefix cache on and off and under a KV budget
/// that forces preemption. (Prompts run through the decode kernels token by token, so a
/// recomputed or prefix-shared sequence runs the same kernels at the same positions.)
#[test]
fn gpu_batches_give_every_request_its_one_at_a_time_output() {
    use smelt::models::batch::{generate_batch, BatchOptions, Request};
    if gpu().is_none() {
        return;
    }
    let name = GPU_FIXTURES[0];
    let cpu = Qwen3Cpu::load_with(&common::fixture_dir(name), LoadOptions::new(DType::F32)).expect(name);
    let options = DecoderOptions { module_cache: None, ..DecoderOptions::new(1024) };
    let mut model = Qwen3Cuda::from_cpu(&cpu, &options).expect(name);
    let shared: Vec<u32> = (0..40).map(|i| (i * 7 + 1) % 384).collect();
    let requests: Vec<Request> = (0..10u32)
        .map(|i| {
            let own: Vec<u32> = (0..1 + i * 5 % 17).map(|k| (k * 13 + i) % 384).collect();
            let prompt = if i % 2 == 0 { [shared.clone(), own].concat() } else { own };
            let sampling = SamplingParams {
                temperature: if i % 3 == 0 { 0.8 } else { 0.0 },
                seed: i as u64,
                ..Default::default()
            };
            Request { prompt, max_new_tokens: 4 + i as usize % 9, sampling, stop: vec![] }
        })
        .collect();
    let expected: Vec<Vec<u32>> = requests
        .iter()
        .map(|r| generate(&mut model, &r.prompt, Continuation::new(r, None), |_, _| {}).unwrap().ids)
        .collect();
    let block = model.config().kv_bytes_per_token(DType::F32) * 16;
    for (what, batch) in [
        ("cache on", BatchOptions::default()),
        ("cache off", BatchOptions { prefix_cache: false, ..BatchOptions::default() }),
        ("5 blocks", BatchOptions { kv_budget_bytes: 5 * block, ..BatchOptions::default() }),
    ] {
        let (out, stats) = generate_batch(&mut model, &requests, &batch, None, |_| {}).expect(what);
        for (i, (c, want)) in out.iter().zip(&expected).enumerate() {
            assert_eq!(&c.ids, want, "{what}: request {i}");
        }
        eprintln!("{what}: {:?}", stats.scheduler);
        if what == "5 blocks" {
            assert!(stats.scheduler.preemptions > 0, "{:?}", stats.scheduler);
        }
    }
    // The single-sequence path still owns the whole pool afterwards.
    let again =
        generate(&mut model, &requests[0].prompt, Continuation::new(&requests[0], None), |_, _| {}).map(|c| c.ids);
    assert_eq!(again.unwrap(), expected[0]);
}

/// NCCL at world 1 (issue 14): an all-reduce over one rank leaves its values as they were, in
/// each dtype; on a machine with more GPUs, the sum over all of them. (Tensor-parallel programs
/// run their exchanges through this group.)
#[test]
fn nccl_all_reduce_over_the_gpus_of_this_machine() {
    use smelt::runtime::cuda::NcclGroup;
    let Some(gpu0) = gpu() else { return };
    let mut gpus = vec![gpu0];
    while let Ok(g) = Gpu::open(gpus.len()) {
        gpus.push(g);
    }
    let world = gpus.len();
    let group = match NcclGroup::new(&gpus.iter().collect::<Vec<_>>()) {
        Ok(g) => g,
        Err(e) => {
            smelt::codegen::skip::missing_tool(&current_test(), &e.to_string());
            return;
        }
    };
    let values: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) / 8.0).collect();
    let buffers: Vec<_> = gpus
        .iter()
        .map(|g| {
            let b = g.alloc(values.len() * 4, "all-reduce test").unwrap();
            g.upload(b.ptr(), &values, "all-reduce test").unwrap();
            b
        })
        .collect();
    group.all_reduce_sum(&buffers.iter().collect::<Vec<_>>(), values.len(), DType::F32).unwrap();
    for (r, (g, b)) in gpus.iter().zip(&buffers).enumerate() {
        g.synchronize("all-reduce test").unwrap();
        let mut got = vec![0f32; values.len()];
        g.download(&mut got, b.ptr(), "all-reduce test").unwrap();
        let want: Vec<f32> = values.iter().map(|v| v * world as f32).collect();
        assert_eq!(got, want, "rank {r} of {world}");
    }
    eprintln!("NCCL all-reduce over {world} GPU(s): exact");
}

/// `check-kernels --tensor-parallel` on one GPU (issue 14): every rank's decode program in
/// turn, the exchanges as kernels in place of NCCL, each node against the evaluator, after 5
/// cached tokens the CPU backend made; every rank's logits equal rank 0's bit for bit, and the
/// CPU backend's within 1e-4 relative (f32).
#[test]
fn every_ranks_kernels_match_the_evaluator_on_one_gpu() {
    use smelt::codegen::{emit_with, EmitOptions};
    use smelt::ir::WeightSource;
    use smelt::models::qwen3::Logits;
    use smelt::models::GraphKind;
    use smelt::runtime::cuda::{GpuRanks, GroupOptions, WeightBytes};
    let Some(gpu) = gpu() else { return };
    let dir = common::fixture_dir("gqa2-untied-bf16-sharded");
    let mut cpu =
        Qwen3Cpu::load_with(&dir, LoadOptions { tensor_parallel: 2, ..LoadOptions::new(DType::F32) }).unwrap();
    let ranks: Vec<_> = (0..2)
        .map(|r| {
            let g = cpu.blueprint().rank_graph(r, GraphKind::Decode).unwrap().clone();
            let program = emit_with(&g, EmitOptions::default()).unwrap();
            (g, program)
        })
        .collect();
    let bytes: Vec<&dyn WeightBytes> = cpu.rank_weights().map(|w| w as &dyn WeightBytes).collect();
    let options = GroupOptions { kv_tokens: 64, block_tokens: 16, max_new_tokens: 1, pdl: true };
    let group = GpuRanks::build(gpu, ranks, &bytes, &options).unwrap();
    cpu.forward(&[3, 1, 4, 1, 5], Logits::LastPosition).unwrap();
    let caches: Vec<_> = cpu.rank_kv_caches().cloned().collect();
    let want = cpu.forward(&[9], Logits::LastPosition).unwrap().to_f32_vec();
    let weights: Vec<&dyn WeightSource> = cpu.rank_weights().map(|w| w as &dyn WeightSource).collect();
    let runs = group.run(&weights, &caches, &[9], 5).unwrap();
    for (r, run) in runs.iter().enumerate() {
        let failed: Vec<_> = run.checks.iter().filter(|c| !c.ok).map(|c| &c.node).collect();
        assert!(failed.is_empty(), "rank {r}: {failed:?}");
        assert_eq!(run.logits.to_f32_vec(), runs[0].logits.to_f32_vec(), "rank {r}'s logits differ from rank 0's");
    }
    let (rel, max_abs) = common::rel_err(&runs[0].logits.to_f32_vec(), &want);
    assert!(rel <= 1e-4, "logits rel err {rel:e} (max abs {max_abs:e}) against the CPU backend");
    eprintln!("2 ranks on one GPU: {} node checks each, logits rel err {rel:.3e}", runs[0].checks.len());
}

/// Tensor parallelism over GPUs (issue 14): two ranks, one per device, NCCL between them inside
/// each device's captured decode step. Their greedy continuation is the CPU backend's, and the
/// logits of a prompt equal the CPU's within 1e-4 relative (f32), with the prefill program and
/// without. Needs two GPUs and libnccl; says why it skips without them.
#[test]
fn two_gpus_as_a_tensor_parallel_group_generate_what_the_cpu_does() {
    use smelt::models::qwen3::Logits;
    use smelt::models::Qwen3CudaGroup;
    if gpu().is_none() {
        return;
    }
    if let Err(e) = Gpu::open(1) {
        smelt::codegen::skip::missing_gpu(&current_test(), &format!("a group of two GPUs needs a second: {e}"));
        return;
    }
    let dir = common::fixture_dir("gqa2-untied-bf16-sharded");
    let mut cpu = Qwen3Cpu::load_with(&dir, LoadOptions::new(DType::F32)).unwrap();
    let prompt = [5u32, 17, 42, 7];
    let want_ids = generate(&mut cpu, &prompt, greedy(&prompt, 12), |_, _| {}).unwrap().ids;
    cpu.reset();
    let want = cpu.forward(&prompt, Logits::LastPosition).unwrap().to_f32_vec();
    for prefill in [false, true] {
        let options = DecoderOptions { prefill, ..options() };
        let mut group = match Qwen3CudaGroup::load(&dir, DType::F32, 2, &options) {
            Ok(g) => g,
            Err(e) if e.to_string().contains("NCCL") => {
                smelt::codegen::skip::missing_tool(&current_test(), &e.to_string());
                return;
            }
            Err(e) => panic!("loading a group of 2 GPUs: {e}"),
        };
        let ids = generate(&mut group, &prompt, greedy(&prompt, 12), |_, _| {}).unwrap().ids;
        assert_eq!(ids, want_ids, "prefill {prefill}: the group's greedy ids differ from the CPU's");
        group.reset();
        let got = group.forward(&prompt, Logits::LastPosition).unwrap().to_f32_vec();
        let (rel, max_abs) = common::rel_err(&got, &want);
        assert!(rel <= 1e-4, "prefill {prefill}: logits rel err {rel:e} (max abs {max_abs:e}) against the CPU backend");
        eprintln!("2 GPUs (prefill {prefill}): greedy ids equal the CPU's; logits rel err {rel:.3e}");
    }
}
