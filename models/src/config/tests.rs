//! The embedded config, transformers 5's RoPE parameters, and bad configs named by field.

use super::*;

#[test]
fn embedded_0_6b() {
    let c = Qwen3Config::qwen3_0_6b();
    assert_eq!((c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim), (1024, 28, 16, 8, 128));
    assert!(c.tie_word_embeddings);
    assert_eq!(c.rope_theta, 1_000_000.0);
    assert_eq!(c.kv_bytes_per_token(DType::BF16), 114_688);
    // 0.6B: 596M parameters with the embedding counted once.
    assert_eq!(c.parameter_count(), 596_049_920);
}

fn edit(f: impl FnOnce(&mut serde_json::Value)) -> Result<Qwen3Config, ConfigError> {
    let mut v: serde_json::Value = serde_json::from_str(QWEN3_0_6B_CONFIG).unwrap();
    f(&mut v);
    Qwen3Config::from_json_str(&v.to_string(), "test.json")
}

fn field_of(r: Result<Qwen3Config, ConfigError>) -> &'static str {
    match r {
        Err(ConfigError::Field { field, .. }) => field,
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn transformers_5_rope_parameters() {
    let c = edit(|v| {
        let o = v.as_object_mut().unwrap();
        o.remove("rope_theta");
        o.remove("rope_scaling");
        o.insert("rope_parameters".into(), serde_json::json!({"rope_type": "default", "rope_theta": 5e5}));
    })
    .unwrap();
    assert_eq!(c.rope_theta, 5e5);
}

#[test]
fn bad_configs_name_the_field() {
    assert_eq!(field_of(edit(|v| v["num_key_value_heads"] = 3.into())), "num_key_value_heads");
    assert_eq!(field_of(edit(|v| v["hidden_size"] = 0.into())), "hidden_size");
    assert_eq!(field_of(edit(|v| v["head_dim"] = (-4).into())), "head_dim");
    assert_eq!(
        field_of(edit(|v| v["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0}))),
        "rope_scaling"
    );
    assert_eq!(
        field_of(edit(|v| v["rope_parameters"] = serde_json::json!({"rope_type": "llama3", "rope_theta": 1e4}))),
        "rope_parameters"
    );
    assert_eq!(field_of(edit(|v| v["model_type"] = "llama".into())), "model_type");
    assert_eq!(field_of(edit(|v| v["attention_bias"] = true.into())), "attention_bias");
    assert_eq!(field_of(edit(|v| v["torch_dtype"] = "int8".into())), "torch_dtype");
    let e = edit(|v| v["num_key_value_heads"] = 3.into()).unwrap_err().to_string();
    assert!(e.contains("test.json") && e.contains("num_key_value_heads"), "{e}");
    assert!(matches!(edit(|v| v["vocab_size"] = "many".into()), Err(ConfigError::Parse { .. })));
}

#[test]
fn layer_types_must_all_be_full_attention_and_rope_theta_agree() {
    let full = serde_json::json!(vec!["full_attention"; 28]);
    let c = edit(|v| v["layer_types"] = full.clone()).unwrap();
    assert_eq!(c.num_layers, 28);
    let mut sliding = full.clone();
    sliding[5] = "sliding_attention".into();
    for bad in [serde_json::json!("garbage"), serde_json::json!(vec!["full_attention"; 27]), sliding] {
        let e = edit(|v| v["layer_types"] = bad.clone()).unwrap_err().to_string();
        assert!(e.contains("layer_types"), "{bad}: {e}");
    }
    let twice = |nested: f64| {
        edit(|v| v["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": nested}))
    };
    assert_eq!(twice(1e6).unwrap().rope_theta, 1e6, "the same value twice is fine");
    let e = twice(1e4).unwrap_err().to_string();
    assert!(e.contains("rope_theta") && e.contains("which one"), "{e}");
}

#[test]
fn eos_forms() {
    assert_eq!(token_ids(Some(&serde_json::json!([1, 2]))).unwrap(), vec![1, 2]);
    assert_eq!(token_ids(Some(&serde_json::json!(7))).unwrap(), vec![7]);
    assert!(token_ids(Some(&serde_json::json!(-1))).is_err());
}
