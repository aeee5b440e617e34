//! Bad prompts and tokenizers, and usage errors clap reports.

use super::*;

#[test]
fn token_id_out_of_vocab_names_id_and_vocab_size() {
    let model = fixture_dir(ONE);
    let stderr = logits_fails(&model, "5,999999", &[]);
    mentions(&stderr, &["999999", "384"]);
    let stderr = generate_fails(&model, "5,999999", &[]);
    mentions(&stderr, &["999999", "384"]);
    // The first id past the end, exactly.
    let stderr = logits_fails(&model, "384", &[]);
    mentions(&stderr, &["384"]);
}

#[test]
fn non_numeric_token_id_is_a_clear_error() {
    let model = fixture_dir(ONE);
    let stderr = logits_fails(&model, "5,abc", &[]);
    mentions(&stderr, &["\"abc\"", "not a token id"]);
    let stderr = generate_fails(&model, "5,abc", &[]);
    mentions(&stderr, &["\"abc\"", "not a token id"]);
}

#[test]
fn negative_and_overflowing_token_ids_are_clear_errors() {
    let model = fixture_dir(ONE);
    let stderr = logits_fails(&model, "5, -1", &[]);
    mentions(&stderr, &["\"-1\"", "not a token id"]);
    let stderr = logits_fails(&model, "5,99999999999999999999", &[]);
    mentions(&stderr, &["99999999999999999999"]);
}

#[test]
fn empty_prompt_ids_are_a_clear_error() {
    let model = fixture_dir(ONE);
    let stderr = logits_fails(&model, ",", &[]);
    mentions(&stderr, &["no token ids"]);
    let stderr = generate_fails(&model, "", &[]);
    mentions(&stderr, &["no token ids"]);
}

#[test]
fn prompt_longer_than_context_mentions_max_position_embeddings() {
    // one-token: max_position_embeddings 128.
    let model = fixture_dir(ONE);
    let ids = vec!["7"; 129].join(",");
    let stderr = logits_fails(&model, &ids, &[]);
    mentions(&stderr, &["max_position_embeddings", "129", "128"]);
    let stderr = generate_fails(&model, &ids, &[]);
    mentions(&stderr, &["max_position_embeddings", "129", "128"]);
}

/// Generation that reaches the end of the context before --max-new-tokens says so (it used
/// to stop short in silence).
#[test]
fn generation_cut_short_by_the_context_says_so() {
    let model = fixture_dir(ONE);
    // 126 prompt tokens + 3 generated: the last one needs no KV row.
    let ids = vec!["5"; 126].join(",");
    let (code, _, stderr) =
        run(&["generate", "--model", path_str(&model), "--prompt-ids", &ids, "--max-new-tokens", "50"]);
    assert_eq!(code, Some(0), "{stderr}");
    mentions(&stderr, &["stopped after 3 of --max-new-tokens 50", "context (128 tokens) is full"]);
    // The run statistics: the prompt and the generation apart, and why it stopped.
    mentions(&stderr, &["prompt: 126 tokens in ", "generation: 3 tokens in ", "finish: context_full"]);
    let (code, _, stderr) =
        run(&["generate", "--model", path_str(&model), "--prompt-ids", "5", "--max-new-tokens", "2"]);
    assert!(code == Some(0) && !stderr.contains("stopped after"), "{stderr}");
    mentions(&stderr, &["prompt: 1 token in ", "generation: 2 tokens in ", "first token after ", "finish: length"]);
}

#[test]
fn bad_temperature_is_a_clear_error() {
    let model = fixture_dir(ONE);
    let stderr = generate_fails(&model, PROMPT, &["--temperature=-1"]);
    mentions(&stderr, &["--temperature"]);
    let stderr = generate_fails(&model, PROMPT, &["--temperature", "NaN"]);
    mentions(&stderr, &["--temperature"]);
    for (flag, value) in [("--top-p", "0"), ("--min-p", "2"), ("--repetition-penalty", "0")] {
        let stderr = generate_fails(&model, PROMPT, &[flag, value]);
        mentions(&stderr, &[flag]);
    }
    // A stop string needs text, so a tokenizer.
    let stderr = generate_fails(&model, PROMPT, &["--stop", "x"]);
    mentions(&stderr, &["--stop", "tokenizer"]);
}

#[test]
fn prompt_text_without_tokenizer_is_a_clear_error() {
    let model = fixture_dir(ONE);
    let out = OutDir::new();
    let ids = out.file("ids.json");
    let stderr = fails(&["generate", "--model", path_str(&model), "--prompt", "hello", "--ids-out", path_str(&ids)]);
    mentions(&stderr, &["tokenizer", path_str(&model)]);
    out.assert_empty();
}

#[test]
fn missing_tokenizer_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tmp.path().join("tokenizer.json");
    let stderr = fails(&["tokenize", "--tokenizer", path_str(&tok), "--text", "hi"]);
    mentions(&stderr, &[path_str(&tok)]);
    let model = fixture_dir(ONE);
    let stderr = generate_fails(&model, PROMPT, &["--tokenizer", path_str(&tok)]);
    mentions(&stderr, &[path_str(&tok)]);
}

#[test]
fn invalid_tokenizer_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tmp.path().join("tokenizer.json");
    std::fs::write(&tok, r#"{"model": 17}"#).unwrap();
    let stderr = fails(&["tokenize", "--tokenizer", path_str(&tok), "--text", "hi"]);
    mentions(&stderr, &[path_str(&tok), "invalid tokenizer"]);
}

#[test]
fn decode_of_unknown_id_names_the_id() {
    let tok = root().join("models/assets/qwen3/tokenizer.json");
    let stderr = fails(&["tokenize", "--tokenizer", path_str(&tok), "--decode", "9707,999999999"]);
    mentions(&stderr, &["999999999", "out of range"]);
    let stderr = fails(&["tokenize", "--tokenizer", path_str(&tok), "--decode", "9707,x"]);
    mentions(&stderr, &["\"x\"", "not a token id"]);
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["logits", "--model", "x", "--prompt-ids", "5"][..],
        &["generate", "--model", "x"],
        &["logits", "--model", "x", "--prompt-ids", "5", "--out", "y", "--device", "tpu"],
        &["frobnicate"],
        &["compile", "--model", "x", "--config", "y"],
    ] {
        let (code, _, stderr) = run(args);
        assert_eq!(code, Some(2), "smelt {args:?}:\n{stderr}");
        assert!(!stderr.contains("panicked"), "smelt {args:?} panicked:\n{stderr}");
        mentions(&stderr, &["error", "--help"]);
    }
}
