//! Failing fast and naming the flag: a command that needs a GPU asks for one before it reads
//! any weights and blames no flag the user did not pass; list flags name themselves; negative
//! numbers are values; a flag that does nothing here is refused; warnings do not flood.

use std::time::Duration;

use super::*;

/// Where there is no GPU (CI), each command that needs one fails within this, before reading
/// weights: the weights here are garbage, and the error must be about the GPU, not them.
#[test]
fn commands_that_need_a_gpu_probe_it_before_loading_anything() {
    if std::path::Path::new("/dev/nvidia0").exists() {
        // The probe succeeds there: this test is about machines without one.
        eprintln!("not run: this machine has a GPU");
        return;
    }
    // gqa1: its context (512) holds check-kernels' default positions.
    let model = copy_fixture("gqa1-tied-f32");
    std::fs::write(model.path().join("model.safetensors"), b"garbage").unwrap();
    let dir = path_str(model.path());
    let out = OutDir::new();
    let out_file = out.file("logits.safetensors");
    for (args, command) in [
        (vec!["check-kernels", "--model", dir], "smelt check-kernels needs an NVIDIA GPU"),
        (vec!["check-kernels", "--model", dir, "--tensor-parallel", "2"], "smelt check-kernels needs an NVIDIA GPU"),
        (vec!["bench", "--model", dir, "--contexts", "128"], "smelt bench needs an NVIDIA GPU"),
        (vec!["bench"], "smelt bench needs an NVIDIA GPU"),
        (vec!["generate", "--model", dir, "--prompt-ids", PROMPT, "--device", "cuda"], "--device cuda needs"),
        (
            vec!["generate", "--model", dir, "--prompt-ids", PROMPT, "--device", "cuda", "--tensor-parallel", "2"],
            "--device cuda needs",
        ),
        (
            vec!["logits", "--model", dir, "--prompt-ids", PROMPT, "--out", path_str(&out_file), "--device", "cuda"],
            "--device cuda needs",
        ),
    ] {
        let (code, stdout, stderr, took) = run_in(&root(), None, &args);
        failed_cleanly(&args, code, &stdout, &stderr);
        mentions(&stderr, &[command]);
        assert!(!stderr.contains("model.safetensors"), "read the weights first:\n{stderr}");
        assert!(took < Duration::from_secs(2), "{args:?} took {took:?}");
        if args[0] != "generate" && args[0] != "logits" {
            assert!(!stderr.contains("--device"), "blames a flag the user did not pass:\n{stderr}");
        }
    }
}

#[test]
fn list_flags_name_themselves() {
    let model = fixture_dir(ONE);
    let dir = path_str(&model);
    for (args, flag, bad) in [
        (vec!["bench", "--contexts", "a,b"], "--contexts", "\"a\""),
        (vec!["bench", "--prefill", "2k"], "--prefill", "\"2k\""),
        (vec!["bench", "--batch", "8,x"], "--batch", "\"x\""),
        (vec!["check-kernels", "--model", dir, "--positions", "0,one"], "--positions", "\"one\""),
        (vec!["check-kernels", "--model", dir, "--prefill", "2k"], "--prefill", "\"2k\""),
        (vec!["generate", "--model", dir, "--prompt-ids", "5,x"], "--prompt-ids", "\"x\""),
    ] {
        mentions(&fails(&args), &[flag, bad]);
    }
}

#[test]
fn negative_numbers_are_values_refused_by_name() {
    let model = fixture_dir(ONE);
    for (flag, value) in [
        ("--temperature", "-1"),
        ("--top-p", "-0.5"),
        ("--min-p", "-1"),
        ("--repetition-penalty", "-2"),
        ("--top-k", "-1"),
        ("--max-new-tokens", "-1"),
        ("--seed", "-7"),
        ("--presence-penalty", "-inf"),
        ("--temperature", "-NaN"),
        ("--top-p", "-Infinity"),
    ] {
        let stderr = generate_fails(&model, PROMPT, &[flag, value]);
        mentions(&stderr, &[flag]);
        assert!(!stderr.contains("unexpected argument"), "{flag} {value} was read as a flag:\n{stderr}");
    }
}

#[test]
fn flags_that_do_nothing_here_are_refused() {
    let model = fixture_dir(ONE);
    for flag in [
        &["--kv-tokens", "64"][..],
        &["--no-cuda-graphs"],
        &["--no-pdl"],
        &["--gpu-prefill"],
        &["--no-split-k"],
        &["--no-co-launch"],
        &["--gemv-rows", "2"],
    ] {
        let stderr = generate_fails(&model, PROMPT, flag);
        mentions(&stderr, &[flag[0], "--device cuda"]);
    }
    mentions(&fails(&["compile", "--arch", "sm_80"]), &["--arch", "--dump"]);
    mentions(&fails(&["compile", "--no-fuse", "--dump-after", "fuse_rmsnorm"]), &["--dump-after", "--no-fuse"]);
    // Greedy decoding (temperature 0, the default) ignores the sampling flags.
    for flag in [&["--top-k", "5"][..], &["--top-p", "0.9"], &["--min-p", "0.1"], &["--seed", "3"]] {
        let stderr = generate_fails(&model, PROMPT, flag);
        mentions(&stderr, &[flag[0], "--temperature 0 is greedy"]);
    }
    let tokenizer = root().join("models/assets/qwen3/tokenizer.json");
    let stderr = fails(&["tokenize", "--tokenizer", path_str(&tokenizer), "--text", "hi", "--skip-special-tokens"]);
    mentions(&stderr, &["--skip-special-tokens", "--decode"]);
}

/// GPU commands check their counts against the model before looking for a GPU.
#[test]
fn gpu_command_counts_are_bounded_by_the_model() {
    let model = fixture_dir(ONE);
    let dir = path_str(&model);
    for (args, needles) in [
        (vec!["bench", "--contexts", "40960"], &["--contexts 40960", "context"][..]),
        (vec!["bench", "--steps", "0"], &["--steps"]),
        (vec!["bench", "--batch", "0"], &["--batch"]),
        (vec!["bench", "--batch", "100000"], &["--batch 100000"]),
        (vec!["check-kernels", "--model", dir, "--positions", "0,500"], &["--positions 500", "127"]),
        (vec!["check-kernels", "--model", dir, "--positions", "0", "--prefill", "100,100"], &["--prefill", "200"]),
        (vec!["check-kernels", "--model", dir, "--positions", "0", "--batch", "0"], &["--batch"]),
    ] {
        let stderr = fails(&args);
        mentions(&stderr, needles);
        assert!(!stderr.contains("GPU"), "looked for a GPU before checking the flags:\n{stderr}");
    }
}

#[test]
fn empty_stop_strings_are_refused() {
    let model = fixture_dir(ONE);
    mentions(&generate_fails(&model, PROMPT, &["--stop", ""]), &["--stop", "empty"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("requests.jsonl");
    std::fs::write(&file, "{\"prompt_ids\": [5]}\n{\"prompt_ids\": [5], \"stop\": [\"x\", \"\"]}\n").unwrap();
    let tokenizer = root().join("models/assets/qwen3/tokenizer.json");
    let args =
        ["generate", "--model", path_str(&model), "--batch", path_str(&file), "--tokenizer", path_str(&tokenizer)];
    mentions(&fails(&args), &["requests.jsonl:2", "stop string is empty"]);
}

#[test]
fn many_unused_tensors_make_one_warning_line() {
    let model = copy_fixture("gqa1-tied-f32");
    rewrite_tensors(&model.path().join("model.safetensors"), |ts| {
        for i in 0..5000 {
            ts.push(Stored { name: format!("extra.{i}"), dtype: Dtype::F32, shape: vec![1], data: vec![0; 4] });
        }
    });
    let (code, _, stderr) =
        run(&["generate", "--model", path_str(model.path()), "--prompt-ids", PROMPT, "--max-new-tokens", "1"]);
    assert_eq!(code, Some(0), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    mentions(warnings[0], &["5000 tensors are not used", "and 4995 more"]);
}

#[test]
fn endless_or_binary_stdin_ends_the_chat_with_an_error() {
    let model = tempfile::tempdir().unwrap();
    common::random_model::write_random_qwen3(model.path(), 4);
    let args = ["chat", "--model", path_str(model.path()), "--max-new-tokens", "1"];
    let (code, stdout, stderr, _) = run_in(&root(), Some(Path::new("/dev/zero")), &args);
    failed_cleanly(&args, code, &stdout, &stderr);
    mentions(&stderr, &["stdin line 1 is longer than"]);
    let garbage = model.path().join("garbage");
    std::fs::write(&garbage, [b'h', b'i', b'\n', 0xff, 0xfe, b'\n']).unwrap();
    let (code, stdout, stderr, _) = run_in(&root(), Some(&garbage), &args);
    failed_cleanly(&args, code, &stdout, &stderr);
    mentions(&stderr, &["line 2", "UTF-8"]);
}

#[test]
fn endless_or_binary_stdin_ends_tokenize_with_an_error() {
    let tokenizer = root().join("models/assets/qwen3/tokenizer.json");
    let args = ["tokenize", "--tokenizer", path_str(&tokenizer)];
    let (code, stdout, stderr, _) = run_in(&root(), Some(Path::new("/dev/zero")), &args);
    failed_cleanly(&args, code, &stdout, &stderr);
    mentions(&stderr, &["stdin holds more than"]);
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, [b'h', b'i', 0xff, 0xfe]).unwrap();
    let (code, stdout, stderr, _) = run_in(&root(), Some(&garbage), &args);
    failed_cleanly(&args, code, &stdout, &stderr);
    mentions(&stderr, &["stdin", "UTF-8", "byte 2"]);
}
