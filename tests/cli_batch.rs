//! `smelt generate --batch FILE.jsonl` as a contract: every request's ids (--ids-out, input
//! order) are its one-at-a-time `smelt generate` ids, with the prefix cache on or off and
//! under a KV budget that forces preemption; stderr reports the prefix-cache hit rate; bad
//! lines are errors naming the file and line.

mod common;

use std::path::Path;

use common::*;

/// The gqa2 fixture in bf16: 768 bytes of KV per token, so 48KiB holds 64 tokens.
const MODEL: &str = "gqa2-untied-bf16-sharded";

fn write_lines(dir: &Path, lines: &[serde_json::Value]) -> std::path::PathBuf {
    let path = dir.join("batch.jsonl");
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    path
}

fn read_ids(path: &Path) -> Vec<Vec<u32>> {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `generate --batch` with `extra` flags: (ids in input order, stdout, stderr).
fn run_batch(model: &str, file: &Path, extra: &[&str]) -> (Vec<Vec<u32>>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let ids_out = dir.path().join("ids.json");
    let model = fixture_dir(model);
    let mut args =
        vec!["generate", "--model", path_str(&model), "--batch", path_str(file), "--ids-out", path_str(&ids_out)];
    args.extend_from_slice(extra);
    let (stdout, stderr) = smelt_ok(&args);
    (read_ids(&ids_out), stdout, stderr)
}

/// The number before `label` in the batch summary, e.g. `hit rate 92.4%` or `3 preemptions`.
fn figure(stderr: &str, before: &str, after: &str) -> f64 {
    let line = stderr.lines().find(|l| l.starts_with("batch of")).expect("a batch summary on stderr");
    let start = line.find(before).unwrap_or_else(|| panic!("no {before:?} in {line}")) + before.len();
    let end = start + line[start..].find(after).unwrap();
    line[start..end].trim().parse().unwrap()
}

#[test]
fn batch_ids_are_the_one_at_a_time_ids_with_the_cache_on_off_and_in_48kib() {
    // Prompts of 12 to 15 tokens (the even ones after a shared 10-token prefix) that grow by
    // 6 to 10 tokens: in 4-token blocks each needs 4 to 7, 8 of them far more than 48KiB's 16.
    let shared: Vec<u32> = (0..10).map(|i| (i * 11 + 3) % 384).collect();
    let mut lines = Vec::new();
    let mut solo_args: Vec<Vec<String>> = Vec::new();
    for i in 0..8u32 {
        let prompt: Vec<u32> = if i % 2 == 0 {
            [shared.clone(), (0..2 + i % 4).map(|k| (k * 29 + i * 7) % 384).collect()].concat()
        } else {
            (0..12 + i % 4).map(|k| (k * 31 + i * 5) % 384).collect()
        };
        let max_new = 6 + i as usize % 5;
        let csv = prompt.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let mut args = vec!["--prompt-ids".to_string(), csv, "--max-new-tokens".into(), max_new.to_string()];
        let mut line = serde_json::json!({ "prompt_ids": prompt, "max_new_tokens": max_new });
        if i % 3 == 1 {
            // Seeded sampling for some requests, greedy (the flag's default) for the rest.
            line["temperature"] = 0.9.into();
            line["seed"] = (40 + i).into();
            args.extend(["--temperature".into(), "0.9".into(), "--seed".into(), (40 + i).to_string()]);
        }
        lines.push(line);
        solo_args.push(args);
    }
    let model = fixture_dir(MODEL);
    let expected: Vec<Vec<u32>> = solo_args
        .iter()
        .map(|extra| {
            let dir = tempfile::tempdir().unwrap();
            let ids_out = dir.path().join("ids.json");
            let mut args =
                vec!["generate", "--model", path_str(&model), "--dtype", "bf16", "--ids-out", path_str(&ids_out)];
            args.extend(extra.iter().map(String::as_str));
            smelt_ok(&args);
            serde_json::from_str(&std::fs::read_to_string(&ids_out).unwrap()).unwrap()
        })
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let file = write_lines(dir.path(), &lines);
    let blocks = ["--dtype", "bf16", "--kv-block-tokens", "4"];
    let (on, stdout, stderr) = run_batch(MODEL, &file, &[&blocks[..], &["--prefix-cache", "on"]].concat());
    assert_eq!(on, expected);
    assert!(figure(&stderr, "hit rate", "%") > 0.0, "{stderr}");
    // One JSON line per request, each naming its index and why it ended.
    let mut seen: Vec<u64> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let index = v["index"].as_u64().unwrap();
            let ids = &expected[index as usize];
            assert_eq!(v["ids"], serde_json::json!(ids));
            // This fixture's EOS is 383 (generation_config.json).
            let why = if ids.last() == Some(&383) { "eos" } else { "length" };
            assert_eq!(v["finish_reason"], why, "{l}");
            index
        })
        .collect();
    seen.sort();
    assert_eq!(seen, (0..8).collect::<Vec<_>>());

    let (off, _, stderr) = run_batch(MODEL, &file, &[&blocks[..], &["--prefix-cache", "off"]].concat());
    assert_eq!(off, expected);
    assert_eq!(figure(&stderr, "hit rate", "%"), 0.0, "{stderr}");

    let (small, _, stderr) = run_batch(MODEL, &file, &[&blocks[..], &["--kv-memory", "48KiB"]].concat());
    assert_eq!(small, expected);
    assert!(stderr.contains("16 blocks of 4 tokens"), "{stderr}");
    assert!(figure(&stderr, "steps,", "preemptions") > 0.0, "48KiB cannot hold all 8 requests: {stderr}");
}

#[test]
fn sixty_four_prompts_sharing_a_200_token_prefix_report_a_hit_rate_above_90_percent() {
    let shared: Vec<u32> = (0..200).map(|i| (i * 13) % 250).collect();
    let lines: Vec<serde_json::Value> = (0..64u32)
        .map(|i| {
            let own: Vec<u32> = (0..1 + i % 8).map(|k| (i * 7 + k) % 250).collect();
            let prompt = [shared.clone(), own].concat();
            serde_json::json!({ "prompt_ids": prompt })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = write_lines(dir.path(), &lines);
    let (on, _, stderr) = run_batch("gqa4-long-rope", &file, &["--max-new-tokens", "4"]);
    let hit = figure(&stderr, "hit rate", "%");
    assert!(hit > 90.0, "{stderr}");
    let (off, _, _) = run_batch("gqa4-long-rope", &file, &["--max-new-tokens", "4", "--prefix-cache", "off"]);
    assert_eq!(on, off);
    assert_eq!(on.len(), 64);
}

#[test]
fn text_prompts_and_stop_strings_per_line() {
    let tok = tokenizer_path();
    let dir = tempfile::tempdir().unwrap();
    let file = write_lines(
        dir.path(),
        &[
            serde_json::json!({ "prompt": "in the", "max_new_tokens": 6 }),
            serde_json::json!({ "prompt_ids": [5, 17, 42, 7], "max_new_tokens": 24, "stop": "\u{0}" }),
        ],
    );
    let (ids, stdout, _) = run_batch("gqa1-tied-f32", &file, &["--tokenizer", path_str(&tok)]);
    // "in the" is ids 258, 279: the same output as given as ids.
    let file_ids = write_lines(dir.path(), &[serde_json::json!({ "prompt_ids": [258, 279], "max_new_tokens": 6 })]);
    assert_eq!(ids[0], run_batch("gqa1-tied-f32", &file_ids, &[]).0[0]);
    let by_index: Vec<serde_json::Value> = {
        let mut v: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        v.sort_by_key(|l| l["index"].as_u64());
        v
    };
    // The text of request 1, then the same request stopping in the middle of it.
    let text = by_index[1]["text"].as_str().unwrap().to_string();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 8, "{text:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let file = write_lines(
        dir.path(),
        &[serde_json::json!({ "prompt_ids": [5, 17, 42, 7], "max_new_tokens": 24, "stop": [stop] })],
    );
    let (_, stdout, _) = run_batch("gqa1-tied-f32", &file, &["--tokenizer", path_str(&tok)]);
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(line["finish_reason"], "stop");
    assert_eq!(line["text"], text[..text.find(&stop).unwrap()]);
}

/// Each output line echoes its request's `"id"` (any JSON value; none without one) and counts
/// its tokens as OpenAI's `usage` does: `prompt_tokens` (after tokenizing and the chat
/// template) and `completion_tokens` (the length of `ids`).
#[test]
fn output_lines_echo_the_request_id_and_count_tokens() {
    let tok = tokenizer_path();
    let dir = tempfile::tempdir().unwrap();
    let file = write_lines(
        dir.path(),
        &[
            serde_json::json!({ "id": "req-a", "prompt_ids": [5, 17, 42], "max_new_tokens": 3 }),
            serde_json::json!({ "id": 7, "prompt": "in the", "max_new_tokens": 5 }),
            serde_json::json!({ "prompt_ids": [1, 2, 3, 4, 5], "max_new_tokens": 2 }),
            serde_json::json!({ "id": {"user": "x", "n": [1, 2]}, "prompt_ids": [9], "max_new_tokens": 1 }),
        ],
    );
    let (ids, stdout, _) = run_batch("gqa1-tied-f32", &file, &["--tokenizer", path_str(&tok)]);
    let mut lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    lines.sort_by_key(|l| l["index"].as_u64());
    assert_eq!(lines.len(), 4, "{stdout}");
    let expect = [
        (Some(serde_json::json!("req-a")), 3),
        (Some(serde_json::json!(7)), 2), // "in the" is ids 258, 279
        (None, 5),
        (Some(serde_json::json!({"user": "x", "n": [1, 2]})), 1),
    ];
    for (i, (line, (id, prompt))) in lines.iter().zip(expect).enumerate() {
        assert_eq!(line.get("id"), id.as_ref(), "{line}");
        assert_eq!(line["prompt_tokens"], prompt, "{line}");
        assert_eq!(line["completion_tokens"], ids[i].len(), "{line}");
        assert_eq!(line["ids"], serde_json::json!(ids[i]), "{line}");
        assert!(line["finish_reason"].is_string() && line["text"].is_string(), "the other fields stay: {line}");
    }
    assert_eq!(lines[0]["completion_tokens"], 3, "{stdout}");
}

/// Runs a batch that must fail; returns stderr. No --ids-out file may be left.
fn batch_fails(lines: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("requests.jsonl");
    std::fs::write(&file, lines).unwrap();
    let ids_out = dir.path().join("ids.json");
    let model = fixture_dir("gqa1-tied-f32");
    let mut args =
        vec!["generate", "--model", path_str(&model), "--batch", path_str(&file), "--ids-out", path_str(&ids_out)];
    args.extend_from_slice(extra);
    let out = smelt(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // 1 for a failed run, 2 for a flag clap refuses.
    assert!(matches!(out.status.code(), Some(1 | 2)), "{args:?}: {:?} {stderr}", out.status);
    assert!(stderr.contains("error:") && !stderr.contains("panicked"), "{stderr}");
    assert!(!ids_out.exists());
    stderr
}

#[test]
fn bad_batch_lines_are_errors_naming_the_file_and_line() {
    let ok = "{\"prompt_ids\": [1, 2, 3]}\n";
    let cases: &[(&str, &[&str])] = &[
        ("{\"prompt_ids\": [1, 999]}", &["requests.jsonl:3", "token id 999"]),
        ("{\"prompt_ids\": [1], \"tempreature\": 1}", &["requests.jsonl:3", "unknown field `tempreature`"]),
        ("{\"prompt_ids\": [1], \"prompt\": \"x\"}", &["requests.jsonl:3", "exactly one of"]),
        ("{\"prompt_ids\": [1], \"top_p\": 0}", &["requests.jsonl:3", "top_p"]),
        ("{\"prompt\": \"hi\"}", &["requests.jsonl:3", "needs a tokenizer"]),
        ("{\"prompt_ids\": []}", &["requests.jsonl:3", "empty"]),
        ("not json", &["requests.jsonl:3"]),
    ];
    for (bad, needles) in cases {
        // The bad request is on line 3, after a good one and a blank line.
        let stderr = batch_fails(&format!("{ok}\n{bad}\n"), &[]);
        for n in *needles {
            assert!(stderr.contains(n), "{bad}: stderr lacks {n:?}:\n{stderr}");
        }
    }
    let stderr = batch_fails(ok, &["--kv-memory", "1KiB"]);
    assert!(stderr.contains("does not hold one block"), "{stderr}");
    let stderr = batch_fails("{\"prompt_ids\": [1, 2, 3], \"max_new_tokens\": 200}\n", &["--kv-memory", "48KiB"]);
    assert!(stderr.contains("requests.jsonl:1") && stderr.contains("holds 48 tokens"), "{stderr}");
    let stderr = batch_fails("\n", &[]);
    assert!(stderr.contains("no requests"), "{stderr}");
    let stderr = batch_fails(ok, &["--max-batch", "0"]);
    assert!(stderr.contains("--max-batch"), "{stderr}");
    let stderr = batch_fails(ok, &["--kv-memory", "lots"]);
    assert!(stderr.contains("--kv-memory"), "{stderr}");
}
