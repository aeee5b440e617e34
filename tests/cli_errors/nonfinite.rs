//! Non-finite numbers and nonsense values are errors naming where they are: NaN or inf in a
//! weight, config floats that round to 0 or inf in f32, logits that overflow at run time, EOS
//! ids the vocabulary cannot produce, chat roles no template knows, a model that is not Qwen3.

use super::*;

/// gqa1 (f32) with element `at` of `tensor` set to `value`.
fn with_value_at(fixture: &str, file: &str, tensor: &str, at: usize, value: f32) -> tempfile::TempDir {
    let model = copy_fixture(fixture);
    rewrite_tensors(&model.path().join(file), |ts| {
        let t = find(ts, tensor);
        match t.dtype {
            Dtype::F32 => t.data[4 * at..4 * at + 4].copy_from_slice(&value.to_le_bytes()),
            Dtype::BF16 => t.data[2 * at..2 * at + 2].copy_from_slice(&((value.to_bits() >> 16) as u16).to_le_bytes()),
            other => panic!("{other:?}"),
        }
    });
    model
}

#[test]
fn nan_or_inf_in_a_weight_names_the_tensor_and_the_file() {
    let tensor = "model.layers.1.mlp.down_proj.weight";
    for value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let model = with_value_at("gqa1-tied-f32", "model.safetensors", tensor, 7, value);
        let stderr =
            fails_keeping(&[model.path()], &["generate", "--model", path_str(model.path()), "--prompt-ids", PROMPT]);
        mentions(&stderr, &[tensor, "model.safetensors", "NaN or infinite", "index 7"]);
    }
    // bf16, in a shard.
    let shard = "model-00001-of-00003.safetensors";
    let model = copy_fixture("gqa2-untied-bf16-sharded");
    let name = {
        let bytes = std::fs::read(model.path().join(shard)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
        names.sort();
        names[0].clone()
    };
    drop(model);
    let model = with_value_at("gqa2-untied-bf16-sharded", shard, &name, 0, f32::NAN);
    let stderr = logits_fails(model.path(), PROMPT, &["--dtype", "bf16"]);
    mentions(&stderr, &[&name, shard, "NaN or infinite"]);
}

#[test]
fn config_floats_that_are_zero_or_infinite_in_f32_name_the_field() {
    for (field, value) in [
        ("rms_norm_eps", serde_json::json!(1e-50)),
        ("rms_norm_eps", serde_json::json!(0.0)),
        ("rms_norm_eps", serde_json::json!(-1e-6)),
    ] {
        let model = copy_fixture("gqa1-tied-f32");
        edit_config(model.path(), |c| c[field] = value.clone());
        let stderr = generate_fails(model.path(), PROMPT, &[]);
        mentions(&stderr, &["config.json", field]);
    }
    // gqa1 keeps rope_theta in rope_parameters (transformers 5.x); 1e39 is inf in f32.
    for theta in [1e-50, 1e39, 0.0, -10.0] {
        let model = copy_fixture("gqa1-tied-f32");
        edit_config(model.path(), |c| c["rope_parameters"]["rope_theta"] = theta.into());
        let stderr = generate_fails(model.path(), PROMPT, &[]);
        mentions(&stderr, &["config.json", "rope_parameters", "rope_theta"]);
    }
}

#[test]
fn a_huge_finite_weight_that_overflows_an_activation_names_the_op() {
    // 1e30 in one up_proj element: the next RMSNorm's mean square is inf, which used to zero
    // every later activation and give all-zero logits (greedy: token 0 forever), exit 0.
    let model = with_value_at("gqa1-tied-f32", "model.safetensors", "model.layers.0.mlp.up_proj.weight", 0, 1e30);
    let stderr = generate_fails(model.path(), "5,17,42", &[]);
    mentions(&stderr, &["not finite", "l01"]);
    let stderr = generate_fails(model.path(), "5,17,42", &["--no-fuse"]);
    mentions(&stderr, &["overflowed", "l01"]);
}

#[test]
fn logits_that_overflow_at_run_time_name_the_position() {
    // A final norm weight of 3e38 overflows the norm itself: the op is named.
    let model = copy_fixture("gqa1-tied-f32");
    rewrite_tensors(&model.path().join("model.safetensors"), |ts| {
        let t = find(ts, "model.norm.weight");
        t.data = t.data.chunks(4).flat_map(|_| 3e38f32.to_le_bytes()).collect();
    });
    for extra in [&[][..], &["--dtype", "bf16", "--temperature", "0.7"]] {
        mentions(&generate_fails(model.path(), "5,17,42", extra), &["final_norm", "overflowed"]);
    }
    // An untied lm_head of 3e38s: every activation is finite, the logits are not.
    let model = copy_fixture("gqa2-untied-bf16-sharded");
    let index = std::fs::read_to_string(model.path().join("model.safetensors.index.json")).unwrap();
    let index: serde_json::Value = serde_json::from_str(&index).unwrap();
    let shard = model.path().join(index["weight_map"]["lm_head.weight"].as_str().unwrap());
    rewrite_tensors(&shard, |ts| {
        let t = find(ts, "lm_head.weight");
        t.data = t.data.chunks(2).flat_map(|_| ((3e38f32.to_bits() >> 16) as u16).to_le_bytes()).collect();
    });
    let stderr = generate_fails(model.path(), "5,17,42", &[]);
    mentions(&stderr, &["logits at position 2", "NaN or infinite"]);
    let stderr = logits_fails(model.path(), "5,17,42", &[]);
    mentions(&stderr, &["logits at position 0", "NaN or infinite"]);
    let stderr = generate_fails(model.path(), "5,17,42", &["--dtype", "f32", "--temperature", "0.7"]);
    mentions(&stderr, &["logits at position 2"]);
}

#[test]
fn eos_ids_beyond_the_vocabulary_name_the_file_and_the_id() {
    let model = copy_fixture("gqa1-tied-f32");
    edit_config(model.path(), |c| c["eos_token_id"] = serde_json::json!([383, 384]));
    mentions(&generate_fails(model.path(), PROMPT, &[]), &["config.json", "eos_token_id", "384", "vocab_size 384"]);
    let model = copy_fixture("gqa1-tied-f32");
    std::fs::write(model.path().join("generation_config.json"), r#"{"eos_token_id": 100000}"#).unwrap();
    mentions(&generate_fails(model.path(), PROMPT, &[]), &["generation_config.json", "100000"]);
}

#[test]
fn a_model_that_is_not_qwen3_names_the_field() {
    let model = copy_fixture("gqa1-tied-f32");
    edit_config(model.path(), |c| c["architectures"] = serde_json::json!(["LlamaForCausalLM"]));
    mentions(&generate_fails(model.path(), PROMPT, &[]), &["config.json", "architectures", "LlamaForCausalLM"]);
    let model = copy_fixture("gqa1-tied-f32");
    edit_config(model.path(), |c| c["model_type"] = "llama".into());
    mentions(&generate_fails(model.path(), PROMPT, &[]), &["config.json", "model_type", "llama"]);
}

#[test]
fn an_unknown_chat_role_names_the_line_and_the_role() {
    let model = tempfile::tempdir().unwrap();
    common::random_model::write_random_qwen3(model.path(), 3);
    let batch = tempfile::tempdir().unwrap();
    let file = batch.path().join("chat.jsonl");
    let lines = [
        r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
        r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "poof"}]}"#,
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let args = ["generate", "--model", path_str(model.path()), "--batch", path_str(&file), "--max-new-tokens", "2"];
    let stderr = fails_keeping(&[batch.path()], &args);
    mentions(&stderr, &["chat.jsonl:2", "\"wizard\"", "system, user, assistant, tool"]);
}
