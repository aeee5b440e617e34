//! The Qwen3-0.6B decode and prefill programs: every kernel the fused graphs need is
//! generated, each compiles with NVRTC (no include paths) for sm_80 and sm_90 in bf16 and f16
//! without local-memory spills, and the decode launches read every weight once. Without NVRTC
//! the compile part says so and is skipped, except under `CI=true`.

use smelt::codegen::{emit, emit_with, EmitOptions, Program, Variants};
use smelt::ir::cost::weight_bytes_read;
use smelt::ir::{Bindings, DType};
use smelt::models::qwen3::{declare, DeclareOptions, Logits, Phase};
use smelt::models::Qwen3Config;
use smelt::passes::pipeline::standard;

/// The codegen crate's kernel checks (NVRTC gate, compile for every arch, no spills).
#[path = "../codegen/tests/common/mod.rs"]
mod kernel_checks;

/// The prefill program with logits at every position (what `smelt compile` shows).
fn prefill_program(dtype: DType) -> Program {
    prefill_program_for(dtype, Logits::AllPositions)
}

/// A prefill program; `LastPosition` is what the GPU backend runs prompts with.
fn prefill_program_for(dtype: DType, logits: Logits) -> Program {
    let cfg = Qwen3Config::qwen3_0_6b();
    let mut g = declare(&cfg, DeclareOptions { phase: Phase::Prefill, dtype, logits }).expect("declares");
    standard().run(&mut g, "qwen3").expect("pipeline");
    emit(&g).expect("every fused prefill op has an emitter")
}

fn decode_program(dtype: DType) -> (Program, usize) {
    let cfg = Qwen3Config::qwen3_0_6b();
    let mut g =
        declare(&cfg, DeclareOptions { phase: Phase::Decode, dtype, logits: Logits::LastPosition }).expect("declares");
    standard().run(&mut g, "qwen3").expect("pipeline");
    let weights = weight_bytes_read(&g, &Bindings { batch: 1, new_tokens: 1, cached_tokens: 0 }).expect("no overflow");
    (emit(&g).expect("every fused op has an emitter"), weights)
}

#[test]
fn decode_program_reads_each_weight_once() {
    let (p, weights) = decode_program(DType::BF16);
    // 6 launches per layer (attention is one kernel, its splits merged; q's norm + RoPE, k's
    // norm + RoPE and append and v's append are one) + 2 outside (the embedding; the lm_head
    // with the greedy token's argmax).
    assert_eq!(p.launches.len(), 28 * 6 + 2);
    assert_eq!(p.kernels.len(), 8, "layers share kernels: {:?}", p.kernels.iter().map(|k| &k.name).collect::<Vec<_>>());
    let launched: u64 = p.launches.iter().map(|l| l.cost.weight_bytes).sum();
    // Every weight once, plus the one embedding row the gather reads (the tied table is
    // also read whole by lm_head).
    assert_eq!(launched, weights as u64 + 1024 * 2);
    let kv: u64 = p.launches.iter().map(|l| l.cost.kv_bytes_per_context_token).sum();
    assert_eq!(kv, 114_688, "attention reads the whole KV cache once");
    let names: Vec<&str> = p.kernels.iter().map(|k| k.name.as_str()).collect();
    assert!(names.contains(&"qkv_gemv_rmsnorm") && names.contains(&"gate_up_swiglu_gemv_rmsnorm"), "{names:?}");
}

/// The q, k and v heads' three nodes are one launch of one kernel, its parameters each node's
/// operands and output in the order of the heads in the qkv row; with co-launch off, a launch
/// each.
#[test]
fn the_q_k_and_v_heads_nodes_are_one_launch() {
    let (p, _) = decode_program(DType::BF16);
    let heads: Vec<_> = p.launches.iter().filter(|l| p.kernels[l.kernel].kind == "head_rows").collect();
    assert_eq!(heads.len(), 28);
    let ops: Vec<&str> = heads[0].nodes.iter().map(|n| n.op.as_str()).collect();
    assert_eq!(ops, ["norm_rope[eps=1e-6]", "norm_rope_kv_append[eps=1e-6]", "kv_append[]"]);
    assert_eq!(p.kernels[heads[0].kernel].name, "qkv_norm_rope_kv_append");
    let attention = p.launches.iter().find(|l| l.nodes[0].node == "l00.attn.attention").expect("attention");
    assert_eq!(attention.nodes[0].operand_ids[0], heads[0].nodes[0].node_id, "attention reads q as normed");

    let cfg = Qwen3Config::qwen3_0_6b();
    let options = DeclareOptions { phase: Phase::Decode, dtype: DType::BF16, logits: Logits::LastPosition };
    let mut g = declare(&cfg, options).expect("declares");
    standard().run(&mut g, "qwen3").expect("pipeline");
    let variants = Variants { co_launch: false, ..Variants::default() };
    let apart = emit_with(&g, EmitOptions { variants, ..EmitOptions::default() }).expect("emits");
    assert_eq!(apart.launches.len(), 28 * 8 + 3);
    // The lm_head and the argmax: one launch, the token from its last block.
    let head = p.launches.last().expect("launches");
    let ops: Vec<&str> = head.nodes.iter().map(|n| n.op.as_str()).collect();
    assert_eq!(ops, ["linear_rmsnorm_epilogue[norm_eps=1e-6, epilogue=cast<f32>(acc)]", "argmax[axis=1]"]);
    assert_eq!(p.kernels[head.kernel].name, "lm_head_gemv_rmsnorm_argmax");
    assert!(matches!(head.params, smelt::codegen::Params::SplitK { counters: 1, .. }));
    assert!(apart.launches.iter().all(|l| l.nodes.len() == 1));
}

#[test]
fn decode_kernels_compile_for_sm80_and_sm90_without_spills() {
    let Some(tc) = kernel_checks::toolchain() else { return };
    for dtype in [DType::BF16, DType::F16] {
        tc.check_all(&decode_program(dtype).0.kernels);
    }
}

#[test]
fn prefill_program_uses_tensor_core_gemms_and_flash_attention() {
    let p = prefill_program(DType::BF16);
    let kinds: Vec<&str> = p.launches.iter().map(|l| p.kernels[l.kernel].kind).collect();
    let count = |k: &str| kinds.iter().filter(|&&x| x == k).count();
    // Per layer: qkv, o_proj + residual, gate_up + SwiGLU, down + residual; then the lm_head.
    assert_eq!(count("linear_gemm"), 28 * 4 + 1, "{kinds:?}");
    assert_eq!(count("prefill_attention"), 28, "{kinds:?}");
    assert_eq!(count("linear_gemv"), 0);
    let names: Vec<&str> = p.kernels.iter().map(|k| k.name.as_str()).collect();
    assert!(names.contains(&"gate_up_swiglu_gemm_epilogue") && names.contains(&"lm_head_gemm_epilogue"), "{names:?}");
}

/// Generation needs only the last position's logits: the lm_head is then one GEMV over row
/// T - 1 of the final norm's output, not a GEMM over all T rows (for 2,048 tokens, 637 GFLOP
/// and 1.2 GB of f32 logits saved).
#[test]
fn last_position_prefill_runs_the_lm_head_on_one_row() {
    let p = prefill_program_for(DType::BF16, Logits::LastPosition);
    let kinds: Vec<&str> = p.launches.iter().map(|l| p.kernels[l.kernel].kind).collect();
    let count = |k: &str| kinds.iter().filter(|&&x| x == k).count();
    assert_eq!(count("linear_gemm"), 28 * 4, "{kinds:?}");
    assert_eq!(count("linear_gemv"), 1, "{kinds:?}");
    // (The GEMMs' GEMVs for few rows are kernels of the program too, but no launch's own.)
    let head = p.launches.iter().map(|l| &p.kernels[l.kernel]).find(|k| k.kind == "linear_gemv").unwrap();
    assert!(head.source.contains("(step->new_tokens - 1u) * X_STRIDE"), "{}", head.source);
    // 2 x vocab x hidden FLOPs once, not per token.
    let flops: u64 =
        p.launches.iter().filter(|l| p.kernels[l.kernel].kind == "linear_gemv").map(|l| l.cost.flops).sum();
    assert_eq!(flops, 2 * 151_936 * 1024);
    let Some(tc) = kernel_checks::toolchain() else { return };
    tc.check_all(&p.kernels);
}

/// A batched decode step (each of T rows its own sequence): the matmuls are the prefill's
/// tensor-core GEMMs over all rows, attention is the decode kernel reading each row's own
/// position and block table, and the logits and greedy token come out per row.
#[test]
fn batched_decode_program_uses_gemms_and_per_row_decode_attention() {
    let cfg = Qwen3Config::qwen3_0_6b();
    let options = DeclareOptions { phase: Phase::Prefill, dtype: DType::BF16, logits: Logits::AllPositions };
    let mut g = declare(&cfg, options).expect("declares");
    standard().run(&mut g, "qwen3").expect("pipeline");
    let p = emit_with(&g, EmitOptions { rows_are_sequences: true, ..EmitOptions::default() }).expect("emits");
    let kinds: Vec<&str> = p.launches.iter().map(|l| p.kernels[l.kernel].kind).collect();
    let count = |k: &str| kinds.iter().filter(|&&x| x == k).count();
    assert_eq!(count("linear_gemm"), 28 * 4 + 1, "{kinds:?}");
    assert_eq!((count("attention_split"), count("attention_combine")), (28, 28), "{kinds:?}");
    assert_eq!(count("prefill_attention"), 0);
    for k in p.kernels.iter().filter(|k| k.kind == "attention_split" || k.kind.contains("append")) {
        assert!(k.source.contains("smelt_row_position(step, t)"), "{}: positions come from the row", k.name);
        assert!(k.source.contains("smelt_row_table(step, t)"), "{}: blocks come from the row's table", k.name);
    }
    let Some(tc) = kernel_checks::toolchain() else { return };
    tc.check_all(&p.kernels);
}

/// A batched step of few rows (and a prefill chunk of few tokens) runs every GEMM's matmul as
/// a GEMV over the step's rows: each GEMM launch carries one, chosen at steps of at most
/// `Variants::gemv_rows` (4) rows; `--gemv-rows 0` leaves the GEMMs alone. A matmul whose K
/// leaves shared memory (48 KiB) for fewer rows takes fewer: Qwen3-4B's down_proj (K = 9728
/// in bf16: 19,456 bytes a row) two.
#[test]
fn steps_of_few_rows_run_each_gemm_as_a_gemv() {
    let program = |cfg: &Qwen3Config, variants: Variants| {
        let options = DeclareOptions { phase: Phase::Prefill, dtype: DType::BF16, logits: Logits::AllPositions };
        let mut g = declare(cfg, options).expect("declares");
        standard().run(&mut g, "qwen3").expect("pipeline");
        emit_with(&g, EmitOptions { rows_are_sequences: true, variants }).expect("emits")
    };
    let p = program(&Qwen3Config::qwen3_0_6b(), Variants::default());
    let gemms: Vec<_> = p.launches.iter().filter(|l| p.kernels[l.kernel].kind == "linear_gemm").collect();
    assert_eq!(gemms.len(), 28 * 4 + 1);
    for l in &gemms {
        let f = l.few_rows.as_ref().unwrap_or_else(|| panic!("{}: no GEMV for few rows", l.node_names()));
        assert_eq!(f.rows, 4, "{}", l.node_names());
        let gemv = &p.kernels[f.kernel];
        assert_eq!(gemv.kind, "linear_gemv");
        assert!(gemv.source.contains("step->new_tokens < ROWS ? step->new_tokens : ROWS"), "{}", gemv.name);
        // The GEMV at 1 to 4 rows, the GEMM from 5 on.
        assert_eq!((l.kernel_at(1).0, l.kernel_at(4).0, l.kernel_at(5).0), (f.kernel, f.kernel, l.kernel));
    }
    assert!(p.launches.iter().filter(|l| p.kernels[l.kernel].kind != "linear_gemm").all(|l| l.few_rows.is_none()));
    // One GEMV per distinct GEMM: q/k/v, o, gate/up, down and the lm_head.
    let names: Vec<&str> = p.kernels.iter().filter(|k| k.name.contains("gemv_rows")).map(|k| k.name.as_str()).collect();
    assert_eq!(names.len(), 5, "{names:?}");
    let off = program(&Qwen3Config::qwen3_0_6b(), Variants { gemv_rows: 0, ..Variants::default() });
    assert!(off.launches.iter().all(|l| l.few_rows.is_none()));
    assert_eq!(off.kernels.len() + 5, p.kernels.len());

    let cfg_4b = Qwen3Config { hidden_size: 2560, intermediate_size: 9728, num_layers: 2, ..Qwen3Config::qwen3_0_6b() };
    let p = program(&cfg_4b, Variants::default());
    let rows = |what: &str| {
        let l = p
            .launches
            .iter()
            .find(|l| p.kernels[l.kernel].name.starts_with(what))
            .unwrap_or_else(|| panic!("no {what}"));
        l.few_rows.as_ref().map(|f| f.rows)
    };
    assert_eq!(
        (rows("down_residual"), rows("gate_up"), rows("o_proj"), rows("qkv")),
        (Some(2), Some(4), Some(4), Some(4))
    );
    let Some(tc) = kernel_checks::toolchain() else { return };
    tc.check_all(&p.kernels);
}

#[test]
fn prefill_kernels_compile_for_sm80_and_sm90_without_spills() {
    let Some(tc) = kernel_checks::toolchain() else { return };
    for dtype in [DType::BF16, DType::F16] {
        tc.check_all(&prefill_program(dtype).kernels);
    }
}

/// The kernel kinds the codegen crate's own tests do not snapshot (its tests hold the GEMV,
/// GEMM, decode and prefill attention, the q, k and v heads' kernel, norm+RoPE with the K
/// append, argmax), as generated for Qwen3-0.6B in bf16: the embedding gather and the
/// standalone RMSNorm (prefill).
#[test]
fn remaining_kernel_kinds_source_snapshot() {
    let decode = decode_program(DType::BF16).0;
    let prefill = prefill_program(DType::BF16);
    let mut text = String::new();
    for kind in ["gather", "rmsnorm"] {
        let k = decode
            .kernels
            .iter()
            .chain(&prefill.kernels)
            .find(|k| k.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} kernel"));
        let body = k.source.strip_prefix(smelt::codegen::PRELUDE).expect("every kernel starts with the prelude");
        text.push_str(&format!("// {} ({}): {:?}\n{body}\n", k.name, k.kind, k.launch));
    }
    insta::assert_snapshot!(text);
}

/// Every decode GEMV of every published Qwen3 size keeps at least 8 16-byte weight loads in
/// flight per lane (batch x parts), or all of K when K is shorter; read off the emitted
/// kernels' constants. Qwen3-4B's down_proj (K = 9728: 38 steps, whose largest divisor up
/// to 16 is 2) used to get 2. Its GEMVs compile without spills.
#[test]
fn decode_gemvs_keep_eight_loads_in_flight_for_every_qwen3_size() {
    let constant = |source: &str, name: &str| -> usize {
        let at = source.find(&format!(" {name} = ")).unwrap_or_else(|| panic!("no {name} in the kernel"));
        let digits: String = source[at + name.len() + 4..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse().unwrap()
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/assets/qwen3/configs");
    for size in ["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b"] {
        let cfg = Qwen3Config::from_file(&root.join(format!("{size}.json"))).unwrap();
        let options = DeclareOptions { phase: Phase::Decode, dtype: DType::BF16, logits: Logits::LastPosition };
        let mut g = declare(&cfg, options).unwrap();
        standard().run(&mut g, "qwen3").unwrap();
        let p = emit(&g).unwrap();
        let gemvs: Vec<_> = p.kernels.iter().filter(|k| k.kind == "linear_gemv").collect();
        assert_eq!(gemvs.len(), 5, "{size}: qkv, o_proj, gate_up, down, lm_head");
        for k in &gemvs {
            let (steps, batch, parts) =
                (constant(&k.source, "STEPS"), constant(&k.source, "BATCH"), constant(&k.source, "PARTS"));
            assert!(batch * parts >= 8 || batch == steps, "{size} {}: {batch} x {parts} of {steps} steps", k.name);
        }
        if size == "qwen3-4b" {
            let down = gemvs.iter().find(|k| k.name.starts_with("down")).unwrap();
            assert_eq!((constant(&down.source, "STEPS"), constant(&down.source, "BATCH")), (38, 16));
            if let Some(tc) = kernel_checks::toolchain() {
                tc.check_all(&gemvs.iter().map(|k| (*k).clone()).collect::<Vec<_>>());
            }
        }
    }
}

/// Split-K is on by default and `EmitOptions::split_k` (`--no-split-k`) turns it off, in the
/// real prefill programs of every published Qwen3 size: each GEMM of at most 132 column tiles
/// takes a scratch and counters (Params::SplitK) and launches a block per (tile, split); off,
/// the standard parameters and a block per tile; every other kernel (and a GEMM that never
/// splits) is the same source either way.
#[test]
fn prefill_gemms_split_k_unless_switched_off() {
    use smelt::codegen::Params;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/assets/qwen3/configs");
    for size in ["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b"] {
        let cfg = Qwen3Config::from_file(&root.join(format!("{size}.json"))).unwrap();
        let options = DeclareOptions { phase: Phase::Prefill, dtype: DType::BF16, logits: Logits::LastPosition };
        let mut g = declare(&cfg, options).unwrap();
        standard().run(&mut g, "qwen3").unwrap();
        let on = emit(&g).unwrap();
        let off = emit_with(
            &g,
            EmitOptions { variants: Variants { split_k: false, ..Variants::default() }, ..EmitOptions::default() },
        )
        .unwrap();
        assert_eq!(on.launches.len(), off.launches.len());
        let mut split_gemms = 0;
        for (a, b) in on.launches.iter().zip(&off.launches) {
            let (ka, kb) = (&on.kernels[a.kernel], &off.kernels[b.kernel]);
            if ka.kind != "linear_gemm" {
                assert_eq!((&ka.source, &a.params), (&kb.source, &b.params), "{size} {}", ka.name);
                continue;
            }
            let blocks = |k: &smelt::codegen::Kernel, t| {
                k.launch.grid.blocks(&Bindings { batch: 1, new_tokens: t, cached_tokens: 0 })
            };
            // A GEMM takes a scratch and counters exactly when it splits (at T = 1, if ever).
            let splits = blocks(ka, 1) > blocks(kb, 1);
            assert_eq!(matches!(a.params, Params::SplitK { .. }), splits, "{size} {}: {:?}", ka.name, a.params);
            assert!(splits || ka.source == kb.source, "{size} {}: unsplit, the same source", ka.name);
            assert_eq!(b.params, Params::Standard, "{size} {}", kb.name);
            for t in [1, 16, 128, 512] {
                assert!(blocks(ka, t) >= blocks(kb, t), "{size} {} at T = {t}", ka.name);
            }
            split_gemms += usize::from(splits);
        }
        // qkv, o_proj, down per layer; gate_up too, except past 132 column tiles (4B, 8B).
        let want = if size.ends_with("4b") || size.ends_with("8b") { 3 } else { 4 };
        assert_eq!(split_gemms, cfg.num_layers * want, "{size}");
    }
}
