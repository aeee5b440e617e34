//! Qwen3 as declared: graph structure for the real 0.6B config, and a reviewed snapshot of a
//! one-layer model's decode graph (any change to the declaration shows up as a diff).

use smelt_ir::cost::{parameter_count, weight_bytes_read};
use smelt_ir::print::{op_histogram, to_text};
use smelt_ir::{Bindings, DType, Sym};
use smelt_models::qwen3::{declare, DeclareOptions, Logits, Phase};
use smelt_models::Qwen3Config;

fn opts(phase: Phase, logits: Logits) -> DeclareOptions {
    DeclareOptions { phase, dtype: DType::BF16, logits }
}

#[test]
fn qwen3_0_6b_decode_graph() {
    let cfg = Qwen3Config::qwen3_0_6b();
    let g = declare(&cfg, opts(Phase::Decode, Logits::LastPosition)).expect("declares");
    let hist = op_histogram(&g);
    assert_eq!(hist["attention"], 28);
    assert_eq!(hist["kv_append"], 56);
    // q, k, v, o, gate, up, down per layer, plus lm_head.
    assert_eq!(hist["matmul"], 28 * 7 + 1);
    // 11 tensors per layer, the embedding (tied: also the head) and the final norm.
    assert_eq!(g.weights().len(), 28 * 11 + 2);
    assert_eq!(parameter_count(&g), Some(cfg.parameter_count()));
    assert_eq!(g.pinned(Sym::NewTokens), Some(1));
    assert_eq!(g.inputs().len(), 2 + 56);
    assert_eq!(g.outputs().len(), 2 + 56);
    let step = Bindings { batch: 1, new_tokens: 1, cached_tokens: 1000 };
    // Every weight is read once per step: 596,049,920 bf16 parameters.
    assert_eq!(weight_bytes_read(&g, &step), Some(1_192_099_840));
}

#[test]
fn prefill_keeps_only_last_logits_when_asked() {
    let cfg = Qwen3Config::qwen3_0_6b();
    let all = declare(&cfg, opts(Phase::Prefill, Logits::AllPositions)).expect("declares");
    let last = declare(&cfg, opts(Phase::Prefill, Logits::LastPosition)).expect("declares");
    let logits_shape = |g: &smelt_ir::Graph| {
        let (_, id) = g.outputs().iter().find(|(n, _)| n == "logits").expect("logits output").clone();
        g.node(id).shape.to_string()
    };
    assert_eq!(logits_shape(&all), "[T,151936]");
    assert_eq!(logits_shape(&last), "[1,151936]");
}

const ONE_LAYER: &str = r#"{
  "model_type": "qwen3", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
  "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
  "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16"
}"#;

#[test]
fn one_layer_decode_graph_snapshot() {
    let cfg = Qwen3Config::from_json_str(ONE_LAYER, "one-layer").expect("valid config");
    let g = declare(&cfg, opts(Phase::Decode, Logits::LastPosition)).expect("declares");
    let text = to_text(&g, "qwen3.decode");
    // Built twice, printed the same: the dump is stable.
    let again = declare(&cfg, opts(Phase::Decode, Logits::LastPosition)).expect("declares");
    assert_eq!(text, to_text(&again, "qwen3.decode"));
    insta::assert_snapshot!(text);
}
