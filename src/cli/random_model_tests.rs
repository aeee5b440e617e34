//! The checkpoint plan of `random-model` for the published shapes (without writing gigabytes),
//! and a tiny checkpoint written to memory and read back with the safetensors crate.

use super::*;

fn named(name: &str) -> Qwen3Config {
    let (json, file) = config_json(name).unwrap();
    assert!(file.is_none());
    Qwen3Config::from_json_str(&json.to_string(), name).unwrap()
}

/// The plan's header as JSON, checked for its framing and for contiguous offsets in file order.
fn header_of(plan: &Plan) -> serde_json::Map<String, serde_json::Value> {
    let len = u64::from_le_bytes(plan.header[..8].try_into().unwrap()) as usize;
    assert_eq!(len + 8, plan.header.len());
    assert_eq!(len % 8, 0, "the data starts 8-byte aligned");
    let json: serde_json::Value = serde_json::from_slice(&plan.header[8..]).unwrap();
    let map = json.as_object().unwrap().clone();
    let mut offset = 0;
    for t in &plan.tensors {
        let offsets = &map[&t.name]["data_offsets"];
        assert_eq!(offsets[0].as_u64(), Some(offset), "{}", t.name);
        offset = offsets[1].as_u64().unwrap();
    }
    assert_eq!(offset, plan.data_bytes);
    assert_eq!(map.len(), plan.tensors.len() + 1, "the tensors and __metadata__");
    map
}

#[test]
fn the_qwen3_8b_plan_holds_every_parameter_once_under_the_checkpoint_names() {
    let config = named("qwen3-8b");
    assert!(!config.tie_word_embeddings);
    let plan = plan(&config, DTypeArg::Bf16).unwrap();
    // 11 tensors a layer (q, k, v, o, q_norm, k_norm, gate, up, down, two norms), the
    // embedding, the final norm and the untied lm_head.
    assert_eq!(plan.tensors.len(), 36 * 11 + 3);
    assert_eq!(plan.data_bytes, config.parameter_count() as u64 * 2);
    assert!(plan.data_bytes > 16_000_000_000, "{}", plan.data_bytes);
    let header = header_of(&plan);
    let q = &header["model.layers.0.self_attn.q_proj.weight"];
    assert_eq!(q["shape"], serde_json::json!([4096, 4096]));
    assert_eq!(q["dtype"], "BF16");
    assert_eq!(header["lm_head.weight"]["shape"], serde_json::json!([151936, 4096]));
    assert_eq!(header["model.layers.35.mlp.gate_proj.weight"]["shape"], serde_json::json!([12288, 4096]));
    assert!(header.keys().all(|k| !k.contains("qkv") && !k.contains("gate_up")), "no fused names");
}

#[test]
fn a_tied_model_has_no_lm_head() {
    for name in ["qwen3-0.6b", "tiny"] {
        let config = named(name);
        assert!(config.tie_word_embeddings);
        let plan = plan(&config, DTypeArg::F32).unwrap();
        assert_eq!(plan.tensors.len(), config.num_layers * 11 + 2, "{name}");
        assert_eq!(plan.data_bytes, config.parameter_count() as u64 * 4, "{name}");
        assert!(!header_of(&plan).contains_key("lm_head.weight"), "{name}");
    }
}

#[test]
fn the_published_shapes_parse_and_tiny_keeps_the_vocabulary() {
    let sizes: Vec<usize> = ["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b"].map(|n| named(n).hidden_size).into();
    assert_eq!(sizes, [1024, 2048, 2560, 4096]);
    let tiny = named("tiny");
    assert_eq!((tiny.vocab_size, tiny.num_layers, tiny.head_dim, tiny.group_size()), (151_936, 2, 64, 2));
}

#[test]
fn the_embedded_tokenizer_has_the_tokens_the_vocabulary_must_hold() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, TOKENIZER).unwrap();
    let tok = smelt::models::Tokenizer::from_file(&path).unwrap();
    assert_eq!(tok.vocab_size(), TOKENIZER_TOKENS);
}

#[test]
fn a_tiny_checkpoint_reads_back_with_norms_1_and_the_rest_within_0_05() {
    for dtype in [DTypeArg::Bf16, DTypeArg::F16, DTypeArg::F32] {
        let plan = plan(&named("tiny"), dtype).unwrap();
        let mut bytes = Vec::new();
        write_checkpoint(&mut bytes, &plan, dtype, 7, false).unwrap();
        assert_eq!(Some(bytes.len() as u64), plan.file_bytes());
        let header = header_of(&plan);
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), plan.tensors.len());
        for t in &plan.tensors {
            let view = st.tensor(&t.name).unwrap();
            assert_eq!(serde_json::json!(view.shape()), header[&t.name]["shape"]);
            assert_eq!(view.shape().iter().product::<usize>() as u64, t.elements);
            let values: Vec<f32> = match dtype {
                DTypeArg::F32 => view.data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
                DTypeArg::Bf16 => {
                    view.data().chunks(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
                }
                DTypeArg::F16 => {
                    view.data().chunks(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
                }
            };
            if t.name.ends_with("norm.weight") {
                assert!(values.iter().all(|&v| v == 1.0), "{}", t.name);
            } else {
                // ±0.05 rounded to bf16 is ±0.050048828.
                assert!(values.iter().all(|v| v.abs() <= 0.0501), "{}", t.name);
                let mean = values.iter().sum::<f32>() / values.len() as f32;
                assert!(mean.abs() < 0.01 && values.iter().any(|&v| v != values[0]), "{}: mean {mean}", t.name);
            }
        }
    }
}
