//! `smelt generate`: greedy ids against the Hugging Face references, stopping at EOS, at the
//! token limit, at a full context and at a stop string, and reproducible sampling.

use crate::common::*;
use crate::{join_ids, reference};

/// `eos_token_id` of a fixture's generation_config.json (a number or a list).
fn eos_ids(name: &str) -> Vec<u32> {
    let text = std::fs::read_to_string(fixture_dir(name).join("generation_config.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    match &v["eos_token_id"] {
        serde_json::Value::Null => Vec::new(),
        serde_json::Value::Array(xs) => xs.iter().map(|x| x.as_u64().unwrap() as u32).collect(),
        x => vec![x.as_u64().unwrap() as u32],
    }
}

/// The greedy ids generation must return: the reference's, cut after the first EOS id.
fn expected_greedy(name: &str, greedy: &[u32]) -> Vec<u32> {
    let eos = eos_ids(name);
    match greedy.iter().position(|id| eos.contains(id)) {
        Some(i) => greedy[..=i].to_vec(),
        None => greedy.to_vec(),
    }
}

/// Greedy generation of the reference's length; checks --ids-out and the streamed stdout.
fn check_greedy(name: &str) {
    let r = reference(name);
    let expected = expected_greedy(name, &r.greedy);
    let tmp = tempfile::tempdir().unwrap();
    let ids_out = tmp.path().join("ids.json");
    let n = r.greedy.len().to_string();
    let (stdout, _) = smelt_ok(&[
        "generate",
        "--model",
        path_str(&fixture_dir(name)),
        "--prompt-ids",
        &join_ids(&r.prompt),
        "--max-new-tokens",
        &n,
        "--temperature",
        "0",
        "--ids-out",
        path_str(&ids_out),
    ]);
    let written: Vec<u32> = serde_json::from_str(&std::fs::read_to_string(&ids_out).unwrap())
        .unwrap_or_else(|e| panic!("{name}: --ids-out is not a JSON array of ids: {e}"));
    assert_eq!(written, expected, "{name}: greedy ids");
    // No tokenizer.json in the fixtures: the ids themselves are streamed.
    let streamed: Vec<u32> = stdout
        .split_whitespace()
        .map(|s| s.parse().unwrap_or_else(|_| panic!("{name}: stdout is not ids: {stdout:?}")))
        .collect();
    assert_eq!(streamed, expected, "{name}: streamed ids");
}

#[test]
fn generate_greedy_matches_hf_tied_f32() {
    check_greedy("gqa1-tied-f32");
}

#[test]
fn generate_greedy_matches_hf_sharded_bf16() {
    check_greedy("gqa2-untied-bf16-sharded");
}

#[test]
fn generate_greedy_matches_hf_long_rope() {
    check_greedy("gqa4-long-rope");
}

#[test]
fn generate_greedy_matches_hf_one_token() {
    check_greedy("one-token");
}

/// A copy of a fixture directory (weights, configs) that a test may edit.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_dir(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    tmp
}

#[test]
fn generate_stops_at_eos_from_generation_config() {
    // Make the 4th greedy id an EOS id (a list, as Qwen3's generation_config.json has it):
    // generation must stop right after it, and include it.
    let name = "one-token";
    let r = reference(name);
    let model = copy_fixture(name);
    let gen = serde_json::json!({"bos_token_id": 382, "eos_token_id": [383, r.greedy[3]]});
    std::fs::write(model.path().join("generation_config.json"), gen.to_string()).unwrap();
    let ids_out = model.path().join("ids.json");
    let (stdout, _) = smelt_ok(&[
        "generate",
        "--model",
        path_str(model.path()),
        "--prompt-ids",
        &join_ids(&r.prompt),
        "--max-new-tokens",
        "10",
        "--ids-out",
        path_str(&ids_out),
    ]);
    let written: Vec<u32> = serde_json::from_str(&std::fs::read_to_string(&ids_out).unwrap()).unwrap();
    assert_eq!(written, r.greedy[..4], "stops after the EOS id, which is included");
    assert_eq!(stdout.split_whitespace().count(), 4, "{stdout:?}");
}

#[test]
fn generate_respects_max_new_tokens() {
    let r = reference("gqa1-tied-f32");
    let (stdout, _) = smelt_ok(&[
        "generate",
        "--model",
        path_str(&fixture_dir("gqa1-tied-f32")),
        "--prompt-ids",
        &join_ids(&r.prompt),
        "--max-new-tokens",
        "3",
    ]);
    let streamed: Vec<u32> = stdout.split_whitespace().map(|s| s.parse().unwrap()).collect();
    assert_eq!(streamed, r.greedy[..3], "greedy is the default; 3 ids");
}

#[test]
fn generate_stops_when_the_context_is_full() {
    // one-token: max_position_embeddings 128. A prompt of 126 leaves room for 3 new ids (the
    // last one is predicted but never fed back); a prompt of exactly 128 still gives one.
    let model = fixture_dir("one-token");
    for (prompt_len, expected) in [(126, 3), (128, 1)] {
        let ids = vec!["7"; prompt_len].join(",");
        let (stdout, _) =
            smelt_ok(&["generate", "--model", path_str(&model), "--prompt-ids", &ids, "--max-new-tokens", "10"]);
        assert_eq!(stdout.split_whitespace().count(), expected, "prompt of {prompt_len}: {stdout:?}");
    }
}

fn sample_ids(seed: &str) -> Vec<u32> {
    let tmp = tempfile::tempdir().unwrap();
    let ids_out = tmp.path().join("ids.json");
    let (stdout, _) = smelt_ok(&[
        "generate",
        "--model",
        path_str(&fixture_dir("one-token")),
        "--prompt-ids",
        "5,17,42",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0.8",
        "--seed",
        seed,
        "--ids-out",
        path_str(&ids_out),
    ]);
    let ids: Vec<u32> = serde_json::from_str(&std::fs::read_to_string(&ids_out).unwrap()).unwrap();
    let streamed: Vec<u32> = stdout.split_whitespace().map(|s| s.parse().unwrap()).collect();
    assert_eq!(streamed, ids, "seed {seed}: stdout and --ids-out disagree");
    assert!(!ids.is_empty() && ids.len() <= 12, "seed {seed}: {ids:?}");
    assert!(ids.iter().all(|&id| id < 384), "seed {seed}: id out of vocab: {ids:?}");
    ids
}

#[test]
fn generate_seeded_sampling_is_reproducible() {
    let first = sample_ids("3");
    let second = sample_ids("3");
    assert_eq!(first, second, "same seed, same temperature: same ids");
    // A different seed must simply work; it may or may not give different ids.
    sample_ids("4");
}

/// `generate` on the gqa1 fixture with the real Qwen3 tokenizer (ids below 384 decode to
/// short pieces of text): (stdout, ids).
fn generate_text(extra: &[&str]) -> (String, Vec<u32>) {
    let tmp = tempfile::tempdir().unwrap();
    let ids_out = tmp.path().join("ids.json");
    let tok = tokenizer_path();
    let model = fixture_dir("gqa1-tied-f32");
    let mut args = vec![
        "generate",
        "--model",
        path_str(&model),
        "--prompt-ids",
        "5,17,42,7",
        "--max-new-tokens",
        "24",
        "--tokenizer",
        path_str(&tok),
        "--ids-out",
        path_str(&ids_out),
    ];
    args.extend_from_slice(extra);
    let (stdout, _) = smelt_ok(&args);
    let ids: Vec<u32> = serde_json::from_str(&std::fs::read_to_string(&ids_out).unwrap()).unwrap();
    (stdout.trim_end_matches('\n').to_string(), ids)
}

#[test]
fn generate_stops_at_a_stop_string_spanning_tokens() {
    let (text, ids) = generate_text(&[]);
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 8 && ids.len() > 4, "{text:?} {ids:?}");
    // A stop string from the middle of the greedy text, longer than one token's piece.
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let at = text.find(&stop).unwrap();
    let (stopped, stopped_ids) = generate_text(&["--stop", &stop]);
    assert_eq!(stopped, text[..at], "output ends just before the stop string {stop:?}");
    assert!(stopped_ids.len() < ids.len() && ids.starts_with(&stopped_ids), "{stopped_ids:?} vs {ids:?}");
}

#[test]
fn top_k_1_sampling_is_greedy_and_filters_are_reproducible() {
    let (_, greedy) = generate_text(&[]);
    let (_, top1) = generate_text(&["--temperature", "1.5", "--top-k", "1", "--seed", "9"]);
    assert_eq!(top1, greedy);
    let filtered = ["--temperature", "0.8", "--top-p", "0.9", "--min-p", "0.05", "--seed", "9"];
    let penalized = ["--repetition-penalty", "1.3", "--presence-penalty", "0.5"];
    let args: Vec<&str> = filtered.iter().chain(&penalized).copied().collect();
    assert_eq!(generate_text(&args).1, generate_text(&args).1, "same seed and parameters: same ids");
}

/// A generation_config.json that sets `do_sample` chooses the sampling when no flag does (as
/// transformers' generate does): the ids are those of the flags spelling it out, and a line
/// says what is in force. A flag overrides its one field; `--temperature 0` is greedy.
#[test]
fn generation_config_sampling_is_the_default_and_flags_override_it() {
    let name = "one-token";
    let r = reference(name);
    let model = copy_fixture(name);
    let gen =
        serde_json::json!({"eos_token_id": 383, "do_sample": true, "temperature": 0.9, "top_k": 40, "top_p": 0.95});
    std::fs::write(model.path().join("generation_config.json"), gen.to_string()).unwrap();
    let run = |dir: &std::path::Path, extra: &[&str]| {
        let prompt = join_ids(&r.prompt);
        let mut args = vec!["generate", "--model", path_str(dir), "--prompt-ids", &prompt, "--max-new-tokens", "8"];
        args.extend_from_slice(extra);
        let (stdout, stderr) = smelt_ok(&args);
        let ids: Vec<u32> = stdout.split_whitespace().map(|s| s.parse().unwrap()).collect();
        (ids, stderr)
    };
    let (by_default, stderr) = run(model.path(), &[]);
    assert!(
        stderr.contains(
            "sampling: temperature 0.9, top_k 40, top_p 0.95, seed 0 (generation_config.json's where no flag"
        ),
        "{stderr}"
    );
    let flags = ["--temperature", "0.9", "--top-k", "40", "--top-p", "0.95"];
    let (spelled_out, _) = run(&fixture_dir(name), &flags);
    assert_eq!(by_default, spelled_out, "the file's sampling is the flags' sampling");
    let (greedy, stderr) = run(model.path(), &["--temperature", "0"]);
    assert!(stderr.contains("sampling: greedy"), "{stderr}");
    assert_eq!(greedy, expected_greedy(name, &r.greedy[..8]));
    // --top-k alone keeps the file's temperature; with --temperature 0 it would do nothing.
    let (_, stderr) = run(model.path(), &["--top-k", "5", "--seed", "7"]);
    assert!(stderr.contains("sampling: temperature 0.9, top_k 5, top_p 0.95, seed 7"), "{stderr}");
    let out = smelt(&[
        "generate",
        "--model",
        path_str(model.path()),
        "--prompt-ids",
        "5",
        "--temperature",
        "0",
        "--top-k",
        "5",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--top-k applies to sampling"), "{stderr}");
}

/// `--quiet` (anywhere on the line) keeps stderr to warnings and errors: no sampling line, no
/// statistics; the generated ids are the same.
#[test]
fn quiet_keeps_stderr_to_warnings() {
    let r = reference("gqa1-tied-f32");
    let model = fixture_dir("gqa1-tied-f32");
    let prompt = join_ids(&r.prompt);
    let args = ["generate", "--model", path_str(&model), "--prompt-ids", &prompt, "--max-new-tokens", "3"];
    let (loud_out, loud_err) = smelt_ok(&args);
    assert!(loud_err.contains("prompt: ") && loud_err.contains("sampling: greedy"), "{loud_err}");
    for quiet in [&["--quiet"][..], &["-q"][..]] {
        let (out, err) = smelt_ok(&[quiet, &args[..]].concat());
        assert_eq!((out.as_str(), err.as_str()), (loud_out.as_str(), ""), "{quiet:?}");
        let (out, err) = smelt_ok(&[&args[..], quiet].concat());
        assert_eq!((out.as_str(), err.as_str()), (loud_out.as_str(), ""), "{quiet:?} after the subcommand");
    }
}
