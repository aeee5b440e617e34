//! Sizes are bounded before any allocation or work: a config is checked against its limits and
//! against the checkpoint's shapes in milliseconds, memory flags name themselves, batch-only
//! flags need `--batch`, and a file that is not a regular file is an error, never a hang.

use std::time::Duration;

use super::*;

/// A config error on a bad dimension must come at once: before any graph is declared.
const FAST: Duration = Duration::from_secs(5);

/// `generate` on a copy of gqa1 with `edit` applied to config.json: fails fast naming `needles`.
fn config_fails_fast(edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>), needles: &[&str]) {
    let model = copy_fixture("gqa1-tied-f32");
    edit_config(model.path(), |c| {
        // Its per-layer list would contradict a changed layer count before the checkpoint could.
        c.remove("layer_types");
        edit(c)
    });
    let args = ["generate", "--model", path_str(model.path()), "--prompt-ids", PROMPT];
    let before = Unchanged::record(&[model.path()]);
    let (code, stdout, stderr, took) = run_in(&root(), None, &args);
    failed_cleanly(&args, code, &stdout, &stderr);
    before.assert_same();
    mentions(&stderr, needles);
    assert!(took < FAST, "took {took:?}");
}

#[test]
fn a_config_claiming_more_layers_than_the_checkpoint_fails_at_once() {
    config_fails_fast(|c| c["num_hidden_layers"] = 3.into(), &["num_hidden_layers", "holds 2 layers", "config.json"]);
    config_fails_fast(|c| c["num_hidden_layers"] = 20000.into(), &["num_hidden_layers", "20000", "limit of 512"]);
    config_fails_fast(|c| c["num_hidden_layers"] = (1u64 << 40).into(), &["num_hidden_layers", "1099511627776"]);
    let config = tempfile::tempdir().unwrap();
    let path = config.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir("gqa1-tied-f32").join("config.json")).unwrap())
            .unwrap();
    v["num_hidden_layers"] = 20000.into();
    std::fs::write(&path, v.to_string()).unwrap();
    let stderr = fails(&["compile", "--config", path_str(&path)]);
    mentions(&stderr, &[path_str(&path), "num_hidden_layers", "limit"]);
    // Dimensions whose products overflow 64 bits are refused, never printed wrapped.
    v["num_hidden_layers"] = 2.into();
    v["vocab_size"] = (1u64 << 40).into();
    v["hidden_size"] = (1u64 << 40).into();
    std::fs::write(&path, v.to_string()).unwrap();
    let stderr = fails(&["compile", "--config", path_str(&path)]);
    mentions(&stderr, &[path_str(&path), "vocab_size", "limit"]);
}

#[test]
fn every_dimension_is_checked_against_the_checkpoint_naming_field_and_tensor() {
    config_fails_fast(|c| c["head_dim"] = (1u64 << 40).into(), &["head_dim", "limit of 1024"]);
    config_fails_fast(|c| c["head_dim"] = 32.into(), &["head_dim", "q_norm.weight", "model.safetensors", "[16]"]);
    config_fails_fast(|c| c["hidden_size"] = 128.into(), &["hidden_size", "model.embed_tokens.weight", "[384, 64]"]);
    config_fails_fast(|c| c["vocab_size"] = 1000.into(), &["vocab_size", "model.embed_tokens.weight"]);
    config_fails_fast(|c| c["num_attention_heads"] = 8.into(), &["num_attention_heads", "q_proj.weight"]);
    config_fails_fast(|c| c["num_key_value_heads"] = 2.into(), &["num_key_value_heads", "k_proj.weight"]);
    config_fails_fast(
        |c| c["intermediate_size"] = (1u64 << 18).into(),
        &["intermediate_size", "gate_proj.weight", "[160, 64]"],
    );
    config_fails_fast(|c| c["max_position_embeddings"] = (1u64 << 40).into(), &["max_position_embeddings", "limit"]);
}

/// A config at every limit at once compiles, and plan.json holds its exact figures: no
/// wrapped or saturated number reaches it.
#[test]
fn a_config_at_every_limit_compiles_to_exact_figures() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let (vocab, hidden, inter, layers, heads, hd) =
        (1u128 << 24, 1u128 << 16, 1u128 << 18, 512u128, 1024u128, 1024u128);
    let v = serde_json::json!({
        "model_type": "qwen3", "vocab_size": vocab as u64, "hidden_size": hidden as u64,
        "intermediate_size": inter as u64, "num_hidden_layers": layers as u64,
        "num_attention_heads": heads as u64, "num_key_value_heads": heads as u64, "head_dim": hd as u64,
        "max_position_embeddings": 1u64 << 24, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
        "tie_word_embeddings": true, "torch_dtype": "bfloat16"
    });
    std::fs::write(&config, v.to_string()).unwrap();
    let dump = dir.path().join("dump");
    let args = ["compile", "--config", path_str(&config), "--dump", path_str(&dump), "--kv-budget-gib", "1024"];
    let (code, stdout, stderr, took) = run_in(&root(), None, &args);
    assert_eq!(code, Some(0), "{stderr}");
    eprintln!("compile at every limit took {took:?}");
    // Per layer: q, k, v, o (4 * hidden * heads * hd), gate/up/down (3 * hidden * inter), the
    // two norms and q/k norms; plus the (tied) embedding and the final norm. All bf16.
    let layer = 4 * hidden * heads * hd + 3 * hidden * inter + 2 * hidden + 2 * hd;
    let params = layers * layer + vocab * hidden + hidden;
    assert!(stdout.contains(&format!("parameters: {params} ")), "{params}\n{stdout}");
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dump.join("plan.json")).unwrap()).unwrap();
    assert_eq!(plan["decode"]["weight_bytes_read"].as_u64().map(u128::from), Some(2 * params), "{plan}");
    assert_eq!(plan["kv"]["bytes_per_token"].as_u64().map(u128::from), Some(layers * 2 * heads * hd * 2), "{plan}");
}

#[test]
fn memory_flags_refuse_nan_negatives_overflow_and_more_than_the_machine_has() {
    for (value, needle) in [("nan", "nan"), ("-1", "-1"), ("1e30", "1e30"), ("inf", "inf"), ("0", "0")] {
        let stderr = fails(&["compile", "--kv-budget-gib", value]);
        mentions(&stderr, &["--kv-budget-gib", needle]);
    }
    for value in ["0", "-5", "99999999999999999999"] {
        mentions(&fails(&["compile", "--prefill-tokens", value]), &["--prefill-tokens", value]);
    }
    mentions(&fails(&["compile", "--prefill-tokens", "50000"]), &["--prefill-tokens 50000", "40960"]);
    mentions(&fails(&["compile", "--kv-block-tokens", "0"]), &["--kv-block-tokens"]);
    let batch = tempfile::tempdir().unwrap();
    let file = batch.path().join("requests.jsonl");
    std::fs::write(&file, "{\"prompt_ids\": [5, 17]}\n").unwrap();
    let model = fixture_dir(ONE);
    let batch_args = |flag: &'static str, value: &'static str| {
        vec!["generate", "--model", path_str(&model), "--batch", path_str(&file), flag, value]
    };
    for value in ["nan", "-1", "0", "1e400GB", "12 parsecs"] {
        mentions(&fails(&batch_args("--kv-memory", value)), &["--kv-memory", value]);
    }
    let stderr = fails(&batch_args("--kv-memory", "10000GB"));
    mentions(&stderr, &["--kv-memory", "more than this machine's memory", "bytes"]);
    for value in ["0", "-3", "5000"] {
        mentions(&fails(&batch_args("--max-batch", value)), &["--max-batch", value]);
    }
    let stderr = fails(&["generate", "--model", path_str(&model), "--prompt-ids", PROMPT, "--kv-tokens", "0"]);
    mentions(&stderr, &["--kv-tokens"]);
}

#[test]
fn batch_flags_without_a_batch_are_refused() {
    let model = fixture_dir(ONE);
    for (flag, value) in [
        ("--kv-memory", "1GiB"),
        ("--max-batch", "4"),
        ("--prefix-cache", "off"),
        ("--kv-block-tokens", "8"),
        ("--max-step-tokens", "64"),
    ] {
        let stderr = generate_fails(&model, PROMPT, &[flag, value]);
        mentions(&stderr, &[flag, "--batch"]);
    }
}

/// A KV block longer than the context is refused naming the flag, before the weights load.
#[test]
fn a_kv_block_longer_than_the_context_names_the_flag() {
    let model = fixture_dir(ONE);
    let dir = tempfile::tempdir().unwrap();
    let batch = dir.path().join("requests.jsonl");
    std::fs::write(&batch, "{\"prompt_ids\": [5, 17]}\n").unwrap();
    let args = ["generate", "--model", path_str(&model), "--batch", path_str(&batch), "--kv-block-tokens", "100000"];
    let stderr = fails(&args);
    mentions(&stderr, &["--kv-block-tokens 100000", "context (128 tokens)"]);
}

/// A FIFO (which would block an `open` until a writer comes), a device (`/dev/zero` never
/// ends) or a folder where a file is expected: an error naming the path, at once.
#[test]
fn files_that_are_not_regular_files_are_errors_never_hangs() {
    let fifo_in = |dir: &Path, name: &str| {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let made = Command::new("mkfifo").arg(&path).status().expect("mkfifo (coreutils)");
        assert!(made.success());
        path
    };
    for (name, what) in [("model.safetensors", "FIFO"), ("config.json", "FIFO"), ("generation_config.json", "FIFO")] {
        let model = copy_fixture(ONE);
        let path = fifo_in(model.path(), name);
        let args = ["generate", "--model", path_str(model.path()), "--prompt-ids", PROMPT];
        let (code, stdout, stderr, took) = run_in(&root(), None, &args);
        failed_cleanly(&args, code, &stdout, &stderr);
        mentions(&stderr, &[path_str(&path), what]);
        assert!(took < FAST, "{name}: took {took:?}");
    }
    let rv = tempfile::tempdir().unwrap();
    common::random_model::write_random_qwen3(rv.path(), 1);
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        let path = fifo_in(rv.path(), name);
        let stderr = fails(&["generate", "--model", path_str(rv.path()), "--prompt", "hi"]);
        mentions(&stderr, &[path_str(&path), "FIFO"]);
        std::fs::remove_file(&path).unwrap();
        std::fs::copy(root().join("models/assets/qwen3").join(name), &path).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let batch = fifo_in(dir.path(), "requests.jsonl");
    let stderr = fails(&["generate", "--model", path_str(&fixture_dir(ONE)), "--batch", path_str(&batch)]);
    mentions(&stderr, &["--batch", "FIFO"]);
    mentions(&fails(&["compile", "--config", "/dev/zero"]), &["/dev/zero", "a device"]);
    mentions(&fails(&["compile", "--config", path_str(dir.path())]), &["a directory"]);
    mentions(&fails(&["tokenize", "--tokenizer", "/dev/zero", "--text", "hi"]), &["/dev/zero", "a device"]);
}

/// A chat template comes with the model and may loop for ever: it runs on bounded fuel.
#[test]
fn a_runaway_chat_template_is_an_error_not_a_hang() {
    let model = tempfile::tempdir().unwrap();
    common::random_model::write_random_qwen3(model.path(), 2);
    let path = model.path().join("tokenizer_config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["chat_template"] =
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}".into();
    std::fs::write(&path, config.to_string()).unwrap();
    let args = ["generate", "--model", path_str(model.path()), "--prompt", "hi", "--chat", "--max-new-tokens", "1"];
    let (code, stdout, stderr, took) = run_in(&root(), None, &args);
    failed_cleanly(&args, code, &stdout, &stderr);
    mentions(&stderr, &["chat template", "fuel"]);
    assert!(took < Duration::from_secs(30), "took {took:?}");
}
