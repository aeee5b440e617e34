//! `smelt random-model`: the tiny model it writes runs `generate` and `chat`, loads in bf16 and
//! f32 with exactly `Qwen3Cpu::with_random_weights`'s values, is byte-identical for one seed,
//! and bad flags fail naming the flag or file at fault, leaving nothing behind.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use smelt::ir::DType;
use smelt::models::qwen3::Logits;
use smelt::models::{LoadOptions, Qwen3Config, Qwen3Cpu};

use crate::common::*;

/// Writes the tiny model into new folder `dir`.
fn tiny(dir: &Path, extra: &[&str]) {
    let mut args = vec!["random-model", "--config", "tiny", "--out", path_str(dir)];
    args.extend_from_slice(extra);
    smelt_ok(&args);
}

/// Runs `smelt args...`, which must fail cleanly; returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = smelt(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "smelt {args:?} panicked:\n{stderr}");
    assert!(matches!(out.status.code(), Some(c) if c != 0), "smelt {args:?}: {}\n{stderr}", out.status);
    assert!(stderr.contains("error:"), "smelt {args:?}: no error:\n{stderr}");
    stderr
}

#[test]
fn the_tiny_model_generates_and_chats() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    tiny(&model, &[]);
    let (stdout, _) =
        smelt_ok(&["generate", "--model", path_str(&model), "--prompt", "Hello", "--max-new-tokens", "5"]);
    assert!(!stdout.trim().is_empty(), "no text: {stdout:?}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(["chat", "--model", path_str(&model), "--max-new-tokens", "8"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "smelt chat: {}\n{stderr}", out.status);
    assert!(!out.stdout.is_empty() && stderr.contains("generation: 8 tokens"), "{stderr}");
}

#[test]
fn the_tiny_checkpoint_is_small_and_holds_with_random_weights_values() {
    let dir = tempfile::tempdir().unwrap();
    let (bf16, f32) = (dir.path().join("bf16"), dir.path().join("f32"));
    tiny(&bf16, &["--seed", "11"]);
    tiny(&f32, &["--seed", "11", "--dtype", "f32"]);
    let bytes = std::fs::metadata(bf16.join("model.safetensors")).unwrap().len();
    assert!((1_000_000..20_000_000).contains(&bytes), "{bytes} bytes");
    let config = Qwen3Config::from_file(&f32.join("config.json")).unwrap();
    assert_eq!(config.checkpoint_dtype, Some(DType::F32));
    let reference = Qwen3Cpu::with_random_weights(config, LoadOptions::new(DType::F32), 11).unwrap();
    let ids = [9707, 11, 1879, 0, 151_644];
    let logits = |mut m: Qwen3Cpu| m.forward(&ids, Logits::AllPositions).unwrap().f32s().unwrap().to_vec();
    let expected = logits(reference);
    assert_eq!(logits(Qwen3Cpu::load(&f32, DType::F32).unwrap()), expected, "the same weights exactly");
    let rounded = logits(Qwen3Cpu::load(&bf16, DType::BF16).unwrap());
    let (rel, _) = rel_err(&rounded, &expected);
    assert!(rel < 0.05, "bf16 against f32: relative error {rel}");
}

#[test]
fn a_seed_writes_the_same_bytes_and_another_seed_others() {
    let dir = tempfile::tempdir().unwrap();
    let read = |name: &str| std::fs::read(dir.path().join(name).join("model.safetensors")).unwrap();
    for (name, seed) in [("a", "5"), ("b", "5"), ("c", "6")] {
        tiny(&dir.path().join(name), &["--seed", seed]);
    }
    assert!(read("a") == read("b"), "seed 5 twice");
    assert!(read("a") != read("c"), "seeds 5 and 6");
    // An earlier output of smelt's is replaced whole, but not by a command that reads it.
    tiny(&dir.path().join("a"), &["--seed", "6"]);
    assert!(read("a") == read("c"));
    let a = dir.path().join("a");
    let e = fails(&["random-model", "--config", path_str(&a.join("config.json")), "--out", path_str(&a)]);
    assert!(e.contains("--out") && e.contains("config.json") && e.contains("reads"), "{e}");
    assert!(read("a") == read("c"));
}

#[test]
fn bad_flags_name_the_flag_or_file_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let e = fails(&["random-model", "--config", "qwen3-9b", "--out", path_str(&out)]);
    assert!(e.contains("--config") && e.contains("qwen3-9b") && e.contains("qwen3-8b"), "{e}");

    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::write(theirs.join("notes.txt"), "mine").unwrap();
    let e = fails(&["random-model", "--config", "tiny", "--out", path_str(&theirs)]);
    assert!(e.contains("--out") && e.contains("not empty"), "{e}");
    assert_eq!(std::fs::read_to_string(theirs.join("notes.txt")).unwrap(), "mine");
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 1);

    let config = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let path = dir.path().join(name);
        let text = std::fs::read_to_string(root().join("models/assets/qwen3/configs/qwen3-0.6b.json")).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        edit(&mut json);
        std::fs::write(&path, json.to_string()).unwrap();
        path
    };
    let heads = config("heads.json", &|j| j["num_key_value_heads"] = 3.into());
    let e = fails(&["random-model", "--config", path_str(&heads), "--out", path_str(&out)]);
    assert!(e.contains("--config") && e.contains("heads.json") && e.contains("num_key_value_heads"), "{e}");
    let vocab = config("vocab.json", &|j| j["vocab_size"] = 384.into());
    let e = fails(&["random-model", "--config", path_str(&vocab), "--out", path_str(&out)]);
    assert!(e.contains("--config") && e.contains("vocab.json") && e.contains("vocab_size"), "{e}");
    let e = fails(&["random-model", "--config", path_str(&dir.path().join("absent.json")), "--out", path_str(&out)]);
    assert!(e.contains("--config") && e.contains("absent.json"), "{e}");

    let mut left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["heads.json", "theirs", "vocab.json"], "nothing written, nothing left beside");
}
