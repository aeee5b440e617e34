//! `smelt chat` on a tiny random model with the real Qwen3 vocabulary, tokenizer and chat
//! template, driven through stdin: history carries across turns, /reset forgets it, /exit
//! ends, --no-think and --system change the rendered prompt, and a turn too long for the
//! context is an error that leaves the conversation usable.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::random_model::write_random_qwen3;
use common::*;

/// Runs `smelt chat` on `model` with `input` on stdin, which must succeed: (stdout, stderr, the
/// prompt-token count of each turn from the stats lines).
fn chat(model: &std::path::Path, input: &str, extra: &[&str]) -> (String, String, Vec<usize>) {
    let (ok, stdout, stderr, prompts) = chat_status(model, input, extra);
    assert!(ok, "smelt chat {extra:?} failed:\n{stderr}");
    (stdout, stderr, prompts)
}

/// [`chat`], whether it succeeded first.
fn chat_status(model: &std::path::Path, input: &str, extra: &[&str]) -> (bool, String, String, Vec<usize>) {
    let mut args = vec!["chat", "--model", path_str(model), "--max-new-tokens", "12"];
    args.extend_from_slice(extra);
    let mut child = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A chat refused at start exits before it reads: its stdin may be closed already.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(!stderr.contains("panicked") && out.status.code().is_some(), "smelt {args:?}: {}\n{stderr}", out.status);
    let prompts =
        stderr.lines().filter_map(|l| l.strip_prefix("[prompt: ")?.split(" tokens").next()?.parse().ok()).collect();
    (out.status.success(), stdout, stderr, prompts)
}

#[test]
fn history_reset_exit_no_think_system_and_an_overlong_turn() {
    let dir = tempfile::tempdir().unwrap();
    write_random_qwen3(dir.path(), 5);
    let model = dir.path();

    let (one, stderr, p) = chat(model, "hello there\n", &[]);
    assert_eq!(p.len(), 1);
    // Each turn's statistics end with why it stopped.
    assert!(stderr.contains(" | generation: ") && stderr.contains(" | finish: "), "{stderr}");
    let first = p[0];

    // The second turn's prompt holds the first turn and its reply.
    let (_, _, p) = chat(model, "hello there\nhello there\n", &[]);
    assert!(p.len() == 2 && p[1] > first + 4, "{p:?}");

    // After /reset the same message gets the same (greedy) reply; /exit ignores the rest.
    let (two, stderr, p) = chat(model, "hello there\n/reset\nhello there\n/exit\nnever read\n", &[]);
    assert_eq!(two, format!("{one}{one}"));
    assert_eq!(p, [first, first]);
    assert!(stderr.contains("conversation cleared"), "{stderr}");

    // --no-think adds the empty think block "<think>\n\n</think>\n\n" (4 tokens).
    let (_, _, p) = chat(model, "hello there\n", &["--no-think"]);
    assert_eq!(p, [first + 4]);
    let (_, _, p) = chat(model, "hello there\n", &["--system", "You are terse."]);
    assert!(p[0] > first, "{p:?}");

    // Unknown commands are reported, not sent; a turn past the 4096-token context fails
    // alone and the next turn sees a conversation without it. From a pipe, the failed turn
    // makes the exit status a failure.
    let long = "word ".repeat(5000);
    let (ok, out, stderr, p) = chat_status(model, &format!("/frobnicate\n{long}\nhello there\n"), &[]);
    assert!(stderr.contains("unknown command /frobnicate"), "{stderr}");
    assert!(stderr.contains("error:") && stderr.contains("/reset starts a new one"), "{stderr}");
    assert_eq!((out, p), (one, vec![first]));
    assert!(!ok && stderr.contains("1 of 2 turns failed"), "{stderr}");
}

/// A `--batch` line with "messages" is rendered with the chat template exactly as
/// `generate --chat` renders `--prompt`: the same ids, also with `--no-think`.
#[test]
fn batch_messages_lines_are_chat_turns() {
    let dir = tempfile::tempdir().unwrap();
    write_random_qwen3(dir.path(), 9);
    let model = path_str(dir.path());
    let file = dir.path().join("batch.jsonl");
    std::fs::write(
        &file,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hello there\"}], \"max_new_tokens\": 6}\n",
    )
    .unwrap();
    for extra in [&[][..], &["--no-think"][..]] {
        let (batch_ids, one_ids) = (dir.path().join("batch.json"), dir.path().join("one.json"));
        let mut args =
            vec!["generate", "--model", model, "--batch", path_str(&file), "--ids-out", path_str(&batch_ids)];
        args.extend_from_slice(extra);
        smelt_ok(&args);
        let mut args = vec!["generate", "--model", model, "--chat", "--prompt", "hello there", "--max-new-tokens", "6"];
        args.extend_from_slice(&["--ids-out", path_str(&one_ids)]);
        args.extend_from_slice(extra);
        smelt_ok(&args);
        let batch: Vec<Vec<u32>> = serde_json::from_str(&std::fs::read_to_string(&batch_ids).unwrap()).unwrap();
        let one: Vec<u32> = serde_json::from_str(&std::fs::read_to_string(&one_ids).unwrap()).unwrap();
        assert_eq!(batch, [one], "{extra:?}");
    }
}

/// `chat --tokenizer FILE` for a model directory without one: the chat template comes from
/// the file's folder, and the replies are those of the same files in the model directory.
#[test]
fn chat_takes_a_tokenizer_from_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    write_random_qwen3(&model, 5);
    let (own, _, _) = chat(&model, "hello there\n", &[]);
    let elsewhere = dir.path().join("tokenizer");
    std::fs::create_dir(&elsewhere).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::rename(model.join(f), elsewhere.join(f)).unwrap();
    }
    let (ok, _, stderr, _) = chat_status(&model, "hello there\n", &[]);
    assert!(!ok && stderr.contains("pass --tokenizer FILE"), "{stderr}");
    let file = elsewhere.join("tokenizer.json");
    let (borrowed, _, _) = chat(&model, "hello there\n", &["--tokenizer", path_str(&file)]);
    assert_eq!(borrowed, own);
}
