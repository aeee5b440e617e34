//! `smelt tokenize`: text to the Hugging Face ids and back, with and without special tokens.

use crate::common::*;
use crate::join_ids;

struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

fn tokenizer_case(name: &str) -> Case {
    let path = root().join("tests/fixtures/tokenizer/cases.json");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let c = cases.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no tokenizer case {name}"));
    Case {
        text: c["text"].as_str().unwrap().to_string(),
        ids: c["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect(),
        decoded: c["decoded"].as_str().unwrap().to_string(),
    }
}

const TOKENIZER_CASES: [&str; 8] = [
    "ascii_sentence",
    "code_python",
    "chinese",
    "emoji_zwj_family",
    "crlf",
    "special_im_start_end",
    "special_adjacent",
    "special_think_block",
];

#[test]
fn tokenize_text_prints_the_hf_ids() {
    let tok = tokenizer_path();
    for name in TOKENIZER_CASES {
        let case = tokenizer_case(name);
        let (stdout, _) = smelt_ok(&["tokenize", "--tokenizer", path_str(&tok), "--text", &case.text]);
        assert_eq!(stdout, format!("{}\n", serde_json::to_string(&case.ids).unwrap()), "{name}");
    }
}

#[test]
fn tokenize_decode_prints_the_text() {
    let tok = tokenizer_path();
    for name in TOKENIZER_CASES {
        let case = tokenizer_case(name);
        let (stdout, _) = smelt_ok(&["tokenize", "--tokenizer", path_str(&tok), "--decode", &join_ids(&case.ids)]);
        // The text, then a newline (as `--text` prints its ids: a shell prompt starts below).
        assert_eq!(stdout, format!("{}\n", case.decoded), "{name}");
    }
}

#[test]
fn tokenize_decode_can_skip_special_tokens() {
    let case = tokenizer_case("special_im_start_end");
    let tok = tokenizer_path();
    let ids = join_ids(&case.ids);
    let (stdout, _) = smelt_ok(&["tokenize", "--tokenizer", path_str(&tok), "--decode", &ids, "--skip-special-tokens"]);
    assert_eq!(stdout, "user\nhi\n");
}

/// Runs `smelt tokenize --tokenizer TOK` with `input` on stdin (a pipe); returns stdout.
fn tokenize_stdin(input: &[u8]) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let tok = tokenizer_path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(["tokenize", "--tokenizer", path_str(&tok)])
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Written from a thread, so a child that printed before reading cannot deadlock the test.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tokenize from stdin failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn tokenize_reads_the_text_from_stdin_without_text() {
    for name in TOKENIZER_CASES {
        let case = tokenizer_case(name);
        let stdout = tokenize_stdin(case.text.as_bytes());
        assert_eq!(stdout, format!("{}\n", serde_json::to_string(&case.ids).unwrap()), "{name}");
    }
    // Read whole and as it is: a trailing newline is text (`Hello` is 9707, `\n` 198).
    assert_eq!(tokenize_stdin(b"Hello\n"), "[9707,198]\n");
}
