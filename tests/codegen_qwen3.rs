//! The Qwen3-0.6B decode program: every kernel the fused graph needs is generated, each
//! compiles with NVRTC (no include paths) for sm_80 and sm_90 in bf16 and f16 without
//! local-memory spills, and the launches read every weight once. Without NVRTC the compile
//! part says so and is skipped, except under `CI=true`.

use smelt::codegen::ptxas::{find_ptxas, resources};
use smelt::codegen::{emit, Arch, Nvrtc, Program};
use smelt::ir::cost::weight_bytes_read;
use smelt::ir::{Bindings, DType};
use smelt::models::qwen3::{declare, DeclareOptions, Logits, Phase};
use smelt::models::Qwen3Config;
use smelt::passes::pipeline::standard;

fn decode_program(dtype: DType) -> (Program, usize) {
    let cfg = Qwen3Config::qwen3_0_6b();
    let mut g =
        declare(&cfg, DeclareOptions { phase: Phase::Decode, dtype, logits: Logits::LastPosition }).expect("declares");
    standard().run(&mut g, "qwen3").expect("pipeline");
    let weights = weight_bytes_read(&g, &Bindings { batch: 1, new_tokens: 1, cached_tokens: 0 });
    (emit(&g).expect("every fused op has an emitter"), weights)
}

#[test]
fn decode_program_reads_each_weight_once() {
    let (p, weights) = decode_program(DType::BF16);
    // 7 fused ops per layer (attention is a split and a combine kernel) + 3 outside.
    assert_eq!(p.launches.len(), 28 * 8 + 3);
    assert_eq!(
        p.kernels.len(),
        11,
        "layers share kernels: {:?}",
        p.kernels.iter().map(|k| &k.name).collect::<Vec<_>>()
    );
    let launched: u64 = p.launches.iter().map(|l| l.cost.weight_bytes).sum();
    // Every weight once, plus the one embedding row the gather reads (the tied table is
    // also read whole by lm_head).
    assert_eq!(launched, weights as u64 + 1024 * 2);
    let kv: u64 = p.launches.iter().map(|l| l.cost.kv_bytes_per_context_token).sum();
    assert_eq!(kv, 114_688, "attention reads the whole KV cache once");
    let names: Vec<&str> = p.kernels.iter().map(|k| k.name.as_str()).collect();
    assert!(names.contains(&"qkv_gemv_rmsnorm") && names.contains(&"gate_up_swiglu_gemv_rmsnorm"), "{names:?}");
}

#[test]
fn decode_kernels_compile_for_sm80_and_sm90_without_spills() {
    let nvrtc = match Nvrtc::load() {
        Ok(n) => n,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("CI=true but {e}"),
        Err(e) => return eprintln!("skipped: {e}"),
    };
    let ptxas = find_ptxas();
    if ptxas.is_none() {
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "CI=true but ptxas is not on PATH");
        eprintln!("ptxas not found: no spill check");
    }
    for dtype in [DType::BF16, DType::F16] {
        let (p, _) = decode_program(dtype);
        for k in &p.kernels {
            for arch in Arch::ALL {
                let ptx = nvrtc.compile(&k.name, &k.source, arch).unwrap_or_else(|e| panic!("{e}"));
                if let Some(ptxas) = &ptxas {
                    let r = resources(ptxas, &ptx, arch).unwrap_or_else(|e| panic!("{}: {e}", k.name));
                    let r = r
                        .iter()
                        .find(|r| r.kernel == k.name)
                        .unwrap_or_else(|| panic!("{} not in the ptxas report", k.name));
                    assert_eq!(
                        (r.spill_store_bytes, r.spill_load_bytes),
                        (0, 0),
                        "{} spills on {} in {dtype}",
                        k.name,
                        arch.name()
                    );
                }
            }
        }
        eprintln!("{dtype}: {} kernels compiled for sm_80 and sm_90", p.kernels.len());
    }
}
