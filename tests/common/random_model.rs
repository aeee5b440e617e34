//! A tiny random-weight Qwen3 with the real vocabulary, written as a Hugging Face model
//! directory with the real tokenizer and chat template: what chat needs (its special tokens
//! are ids past the fixtures' 384-entry vocabularies). About 10 MB of bf16, written at test
//! time rather than committed.

use std::path::Path;

use smelt::ir::DType;
use smelt::models::qwen3::{declare, DeclareOptions, Logits, Phase};
use smelt::models::Qwen3Config;

const CONFIG: &str = r#"{
  "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
  "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
  "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
  "vocab_size": 151936, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
  "rope_theta": 1000000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "bos_token_id": 151643, "eos_token_id": 151645
}"#;

/// Writes the model to `dir`: config.json, generation_config.json (EOS `<|im_end|>` and
/// `<|endoftext|>`), model.safetensors (seeded uniform ±0.05, norms 1), tokenizer.json and
/// tokenizer_config.json.
pub fn write_random_qwen3(dir: &Path, seed: u64) {
    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": [151645, 151643]}"#).unwrap();
    let assets = super::root().join("models/assets/qwen3");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(assets.join(f), dir.join(f)).unwrap();
    }
    write_weights(dir, CONFIG, seed);
}

/// Writes `config` (a config.json) and seeded random bf16 weights of its shapes to `dir`: a
/// model without a tokenizer, of any shape.
pub fn write_weights(dir: &Path, config: &str, seed: u64) {
    std::fs::write(dir.join("config.json"), config).unwrap();
    let config = Qwen3Config::from_json_str(config, "random model").unwrap();
    let options = DeclareOptions { phase: Phase::Prefill, dtype: DType::BF16, logits: Logits::AllPositions };
    let graph = declare(&config, options).unwrap();
    let mut rng = smelt::models::sample::seeded_rng(seed);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for spec in smelt::runtime::weight_specs(&[&graph]) {
        let n: usize = spec.shape.iter().product();
        let bytes: Vec<u8> = (0..n)
            .flat_map(|_| {
                let v = if spec.name.ends_with("norm.weight") {
                    1.0
                } else {
                    // The generator smelt samples with, mapped to [-0.05, 0.05).
                    rand::Rng::random_range(&mut rng, -0.05f32..0.05)
                };
                // bf16: the top half of the f32, rounded to nearest even.
                let bits = v.to_bits();
                let rounded = (bits + 0x7fff + ((bits >> 16) & 1)) >> 16;
                (rounded as u16).to_le_bytes()
            })
            .collect();
        tensors.push((spec.name, spec.shape, bytes));
    }
    let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            (
                name.as_str(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    std::fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
}
