//! The pass pipeline on Qwen3: how far the real 0.6B decode graph fuses, its memory plans,
//! and, over random small Qwen3 shapes, that every pass keeps the graph's meaning.

mod common;

use std::collections::HashMap;

use proptest::prelude::*;
use smelt::ir::print::to_text;
use smelt::ir::{eval, Bindings, DType, Graph, KvPart, Tensor};
use smelt::models::qwen3::{declare, kv_name, DeclareOptions, Logits, Phase, LOGITS};
use smelt::models::Qwen3Config;
use smelt::passes::pipeline::{standard, standard_passes};
use smelt::passes::stats::op_counts;
use smelt::passes::{check_plan, plan_kv, plan_memory, PassManager, DEFAULT_BLOCK_TOKENS};
use smelt::runtime::{weight_specs, HostWeights};

fn fused(cfg: &Qwen3Config, phase: Phase, dtype: DType) -> Graph {
    let mut g = declare(cfg, DeclareOptions { phase, dtype, logits: Logits::LastPosition }).expect("declares");
    standard().run(&mut g, "qwen3").expect("pipeline runs");
    g
}

#[test]
fn qwen3_0_6b_decode_fuses_to_eight_ops_per_layer() {
    let g = fused(&Qwen3Config::qwen3_0_6b(), Phase::Decode, DType::BF16);
    let c = op_counts(&g);
    // QKV matmul with the norm as prologue; q-norm + RoPE; k-norm + RoPE + K-cache write;
    // V-cache write (those three are one kernel, codegen's co-launch); attention; o_proj +
    // residual; gate/up with the norm as prologue and SwiGLU as epilogue; down + residual.
    assert!(c.ops_per_layer <= 8, "{} ops in a layer: {:?}", c.ops_per_layer, c.by_kind);
    assert!(c.by_layer.values().all(|&n| n == 8), "{:?}", c.by_layer);
    // Embedding gather; final norm + lm_head + cast to f32; greedy argmax.
    assert!(c.ops_outside_layers <= 4, "{} ops outside the layers", c.ops_outside_layers);
    assert_eq!(c.ops, 28 * 8 + 3);
    let kinds: Vec<(&str, usize)> = c.by_kind.iter().map(|(k, n)| (*k, *n)).collect();
    assert_eq!(
        kinds,
        [
            ("argmax", 1),
            ("attention", 28),
            ("gather", 1),
            ("kv_append", 28),
            ("linear_epilogue", 56),
            ("linear_rmsnorm", 28),
            ("linear_rmsnorm_epilogue", 29),
            ("norm_rope", 28),
            ("norm_rope_kv_append", 28),
        ]
    );
}

#[test]
fn qwen3_0_6b_memory_plans() {
    let cfg = Qwen3Config::qwen3_0_6b();
    let g = fused(&cfg, Phase::Decode, DType::BF16);
    let plan = plan_memory(&g, &Bindings { batch: 1, new_tokens: 1, cached_tokens: 4096 });
    check_plan(&plan).expect("no two live buffers overlap");
    assert!(plan.arena_bytes <= 2 << 20, "decode arena {} bytes", plan.arena_bytes);
    for (dtype, bytes) in [(DType::BF16, 114_688), (DType::F16, 114_688), (DType::F32, 229_376)] {
        let g = fused(&cfg, Phase::Decode, dtype);
        let kv = plan_kv(&g, DEFAULT_BLOCK_TOKENS, 1 << 30).expect("plans");
        assert_eq!(kv.bytes_per_token, bytes, "{dtype}");
        assert_eq!(kv.bytes_per_block, bytes * DEFAULT_BLOCK_TOKENS);
        assert_eq!(kv.blocks, (1 << 30) / (bytes * DEFAULT_BLOCK_TOKENS));
    }
    let prefill = fused(&cfg, Phase::Prefill, DType::BF16);
    let plan = plan_memory(&prefill, &Bindings { batch: 1, new_tokens: 512, cached_tokens: 0 });
    check_plan(&plan).expect("no two live buffers overlap");
}

#[test]
fn qwen3_0_6b_fused_decode_snapshot() {
    let g = fused(&Qwen3Config::qwen3_0_6b(), Phase::Decode, DType::BF16);
    insta::assert_snapshot!(to_text(&g, "qwen3.decode"));
}

/// A small random Qwen3 and everything needed to evaluate it.
fn small_config(heads: usize, group: usize, head_dim: usize, layers: usize) -> Qwen3Config {
    let json = serde_json::json!({
        "model_type": "qwen3", "vocab_size": 24, "hidden_size": 12, "intermediate_size": 20,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads / group,
        "head_dim": head_dim, "max_position_embeddings": 64, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "tie_word_embeddings": layers % 2 == 0,
    });
    Qwen3Config::from_json_str(&json.to_string(), "random").expect("valid config")
}

fn uniform(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

fn inputs(cfg: &Qwen3Config, dtype: DType, t: usize, p: usize, seed: &mut u64) -> HashMap<String, Tensor> {
    let mut m = HashMap::new();
    let ids = uniform(t, seed).into_iter().map(|u| ((u + 0.5) * cfg.vocab_size as f32) as i32 % cfg.vocab_size as i32);
    m.insert("token_ids".to_string(), Tensor::from_i32(vec![t], ids.collect()));
    m.insert("positions".to_string(), Tensor::from_i32(vec![t], (p..p + t).map(|x| x as i32).collect()));
    for l in 0..cfg.num_layers {
        for kind in [KvPart::Key, KvPart::Value] {
            let shape = vec![p, cfg.num_kv_heads, cfg.head_dim];
            let values = uniform(shape.iter().product(), seed);
            m.insert(kv_name(l, kind), Tensor::from_f32(dtype, shape, values));
        }
    }
    m
}

/// Every output identical to the bit (i32 outputs too).
fn outputs_identical(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: output count");
    for (name, x) in a {
        let y = &b[name];
        assert_eq!(x.shape(), y.shape(), "{what}: {name} shape");
        let bits = |t: &Tensor| t.to_f32_vec().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        if let Some(i) = bits(x).iter().zip(bits(y)).position(|(p, q)| *p != q) {
            let (rel, abs) = x.f32s().zip(y.f32s()).map_or((0.0, 0.0), |(xs, ys)| common::rel_err(xs, ys));
            panic!(
                "{what}: {name}[{i}] differs (rel err {rel:.2e}, max abs {abs:.2e}); every pass must keep eval's bits"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Every pass of the pipeline, applied in order, keeps eval's results to the bit, in f32
    /// and bf16 (held over 600 cases once, 48 a run): fused ops compose the very kernels of the chains they replace, and eval's
    /// matmul sums a row in one order however the rows or the columns are grouped (so a
    /// horizontally fused matmul gives its parts' bits).
    #[test]
    fn every_pass_preserves_meaning(
        heads in prop::sample::select(vec![2usize, 4]),
        group in prop::sample::select(vec![1usize, 2]),
        head_dim in prop::sample::select(vec![4usize, 8, 16]),
        layers in 1usize..3,
        decode in any::<bool>(),
        t in 1usize..5,
        p in 0usize..4,
        bf16 in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let cfg = small_config(heads, group, head_dim, layers);
        let dtype = if bf16 { DType::BF16 } else { DType::F32 };
        let (phase, t) = if decode { (Phase::Decode, 1) } else { (Phase::Prefill, t) };
        let primitive = declare(&cfg, DeclareOptions { phase, dtype, logits: Logits::AllPositions }).expect("declares");
        let mut seed = seed;
        let mut weights = HashMap::new();
        for spec in weight_specs(&[&primitive]) {
            let values = uniform(spec.shape.iter().product(), &mut seed);
            weights.insert(spec.name, Tensor::from_f32(dtype, spec.shape, values));
        }
        let inputs = inputs(&cfg, dtype, t, p, &mut seed);
        let mut graphs = vec![primitive.clone()];
        for pass in standard_passes() {
            let mut g = graphs.last().expect("at least one").clone();
            PassManager::new(vec![pass]).run(&mut g, "step").expect("pass runs and verifies");
            graphs.push(g);
        }
        let mut weights = HostWeights::from_map(weights);
        let all: Vec<&Graph> = graphs.iter().collect();
        weights.prepare_for(&all).expect("weights for every graph");
        let reference = eval(&primitive, inputs.clone(), &weights).expect("primitive evaluates");
        prop_assert!(reference.contains_key(LOGITS));
        for (i, (g, name)) in graphs.iter().skip(1).zip(standard().names()).enumerate() {
            let out = eval(g, inputs.clone(), &weights).expect("fused evaluates");
            outputs_identical(&out, &reference, &format!("after pass {} ({name})", i + 1));
        }
    }
}
