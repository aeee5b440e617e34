//! `smelt --help` and `--version`: every subcommand and its flags are listed.

use crate::common::*;

#[test]
fn help_lists_subcommands_and_flags() {
    let (stdout, _) = smelt_ok(&["--help"]);
    for sub in ["compile", "logits", "generate", "tokenize", "random-model", "serve"] {
        assert!(stdout.contains(sub), "smelt --help does not mention {sub}:\n{stdout}");
    }
    let flags: [(&str, &[&str]); 6] = [
        ("compile", &["--model", "--config", "--dump", "--dtype"]),
        ("logits", &["--model", "--prompt-ids", "--out", "--device", "--dtype"]),
        (
            "generate",
            &[
                "--model",
                "--prompt",
                "--prompt-ids",
                "--max-new-tokens",
                "--temperature",
                "--seed",
                "--ids-out",
                "--tokenizer",
                "--device",
                "--dtype",
            ],
        ),
        ("tokenize", &["--tokenizer", "--text", "--decode", "--skip-special-tokens"]),
        ("random-model", &["--config", "--out", "--dtype", "--seed", "tiny", "qwen3-8b"]),
        (
            "serve",
            &[
                "--model",
                "--host",
                "--port",
                "--device",
                "--dtype",
                "--served-model-name",
                "--max-batch",
                "--kv-memory",
                "--max-waiting",
                "--api-key",
                "--reasoning-parser",
            ],
        ),
    ];
    for (sub, flags) in flags {
        let (stdout, _) = smelt_ok(&[sub, "--help"]);
        for flag in flags {
            assert!(stdout.contains(flag), "smelt {sub} --help does not mention {flag}:\n{stdout}");
        }
    }
}

#[test]
fn version_flag() {
    let (stdout, _) = smelt_ok(&["--version"]);
    assert!(stdout.starts_with("smelt ") && stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout:?}");
}
