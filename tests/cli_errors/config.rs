//! Bad config.json and generation_config.json: the file and the field are named.

use super::*;

#[test]
fn config_kv_heads_not_dividing_heads_names_the_field() {
    let model = copy_fixture("gqa1-tied-f32"); // 4 heads
    edit_config(model.path(), |c| {
        c.insert("num_key_value_heads".into(), 3.into());
    });
    let config = model.path().join("config.json");
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&config), "num_key_value_heads", "num_attention_heads (4)"]);
    let stderr = fails(&["compile", "--model", path_str(model.path())]);
    mentions(&stderr, &[path_str(&config), "num_key_value_heads"]);
}

#[test]
fn config_hidden_size_zero_names_the_field() {
    let model = copy_fixture(ONE);
    edit_config(model.path(), |c| {
        c.insert("hidden_size".into(), 0.into());
    });
    let config = model.path().join("config.json");
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&config), "hidden_size"]);
    let stderr = fails(&["compile", "--config", path_str(&config)]);
    mentions(&stderr, &[path_str(&config), "hidden_size"]);
}

#[test]
fn config_yarn_rope_parameters_names_the_field() {
    // transformers 5.x shape: rope_parameters.
    let model = copy_fixture(ONE);
    edit_config(model.path(), |c| {
        assert!(c.contains_key("rope_parameters"), "fixture changed");
        c.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32}),
        );
    });
    let stderr = generate_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&model.path().join("config.json")), "rope_parameters", "yarn"]);
}

#[test]
fn config_yarn_rope_scaling_names_the_field() {
    // transformers 4.x shape (the published Qwen3 configs): top-level rope_theta, rope_scaling.
    let model = copy_fixture(SHARDED);
    edit_config(model.path(), |c| {
        assert!(c.contains_key("rope_scaling") && !c.contains_key("rope_parameters"), "fixture changed");
        c.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}),
        );
    });
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&model.path().join("config.json")), "rope_scaling", "yarn"]);
}

#[test]
fn config_that_is_not_json_names_the_file() {
    let model = copy_fixture(ONE);
    let config = model.path().join("config.json");
    std::fs::write(&config, "vocab_size = 384\nhidden_size = 64\n").unwrap();
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&config), "not a valid config"]);
    let stderr = fails(&["compile", "--model", path_str(model.path())]);
    mentions(&stderr, &[path_str(&config)]);
}

#[test]
fn config_with_wrong_field_type_names_the_file_and_field() {
    let model = copy_fixture(ONE);
    edit_config(model.path(), |c| {
        c.insert("vocab_size".into(), "many".into());
    });
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&model.path().join("config.json")), "many"]);
}

#[test]
fn missing_config_names_the_file() {
    let model = copy_fixture(ONE);
    let config = model.path().join("config.json");
    std::fs::remove_file(&config).unwrap();
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&config)]);
}

#[test]
fn compile_missing_config_file_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("nope.json");
    let stderr = fails(&["compile", "--config", path_str(&config)]);
    mentions(&stderr, &[path_str(&config)]);
}

#[test]
fn generation_config_that_is_not_json_names_the_file() {
    let model = copy_fixture(ONE);
    let gen = model.path().join("generation_config.json");
    std::fs::write(&gen, "{ eos_token_id: 383 ").unwrap();
    let stderr = generate_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&gen)]);
}

#[test]
fn generation_config_bad_eos_names_the_field() {
    let model = copy_fixture(ONE);
    let gen = model.path().join("generation_config.json");
    std::fs::write(&gen, r#"{"eos_token_id": -1}"#).unwrap();
    let stderr = generate_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&gen), "eos_token_id"]);
}
