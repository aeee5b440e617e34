//! Bad model paths and output paths, and a GPU that is not there.

use super::*;

#[test]
fn missing_model_dir_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let gone = tmp.path().join("no-such-model");
    let stderr = logits_fails(&gone, PROMPT, &[]);
    mentions(&stderr, &[path_str(&gone), "does not exist"]);
    let stderr = generate_fails(&gone, PROMPT, &[]);
    mentions(&stderr, &[path_str(&gone), "does not exist"]);
    let stderr = fails(&["compile", "--model", path_str(&gone)]);
    mentions(&stderr, &[path_str(&gone), "does not exist"]);
}

#[test]
fn model_path_that_is_a_file_is_named() {
    let weights = fixture_dir(ONE).join("model.safetensors");
    let stderr = logits_fails(&weights, PROMPT, &[]);
    mentions(&stderr, &[path_str(&weights), "not a directory"]);
}

/// On a machine without a GPU (CI), `--device cuda` is a clear error, not a panic in the
/// dynamically loaded driver. (With a GPU, this fixture's bf16 head dim of 32 has no decode
/// attention kernel: also an error, naming the node.)
#[test]
fn device_cuda_without_a_usable_gpu_is_a_clear_error() {
    let model = fixture_dir(ONE);
    for stderr in [
        logits_fails(&model, PROMPT, &["--device", "cuda", "--dtype", "bf16"]),
        generate_fails(&model, PROMPT, &["--device", "cuda", "--dtype", "bf16"]),
    ] {
        mentions(&stderr, &["--device cuda"]);
        assert!(
            stderr.contains("no CUDA driver") || stderr.contains("CUDA device") || stderr.contains("head dim"),
            "{stderr}"
        );
    }
}

#[test]
fn logits_out_in_missing_directory_is_named_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("no-such-dir/logits.safetensors");
    let model = fixture_dir(ONE);
    let args = ["logits", "--model", path_str(&model), "--prompt-ids", PROMPT, "--out", path_str(&out)];
    let stderr = fails(&args);
    mentions(&stderr, &[path_str(&tmp.path().join("no-such-dir"))]);
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none(), "something was written");
}

#[test]
fn logits_out_that_is_a_directory_is_refused_without_leftovers() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let model = fixture_dir(ONE);
    for out in [path_str(&out_dir).to_string(), format!("{}/", out_dir.display())] {
        let stderr = fails(&["logits", "--model", path_str(&model), "--prompt-ids", PROMPT, "--out", &out]);
        mentions(&stderr, &[path_str(&out_dir), "directory"]);
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["out"], "leftovers beside the output directory");
        assert!(std::fs::read_dir(&out_dir).unwrap().next().is_none(), "something was written into {out}");
    }
}

#[test]
fn logits_out_with_trailing_slash_is_refused_without_leftovers() {
    // `out/` where `out` does not exist: must not write `.out.partial` beside it.
    let tmp = tempfile::tempdir().unwrap();
    let out = format!("{}/logits.safetensors/", tmp.path().display());
    let stderr = fails(&["logits", "--model", path_str(&fixture_dir(ONE)), "--prompt-ids", PROMPT, "--out", &out]);
    mentions(&stderr, &["logits.safetensors"]);
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "leftovers: {left:?}");
}

#[test]
fn failed_logits_keeps_an_existing_out_file_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("logits.safetensors");
    std::fs::write(&out, b"previous contents").unwrap();
    let model = fixture_dir(ONE);
    let args = ["logits", "--model", path_str(&model), "--prompt-ids", "5,999999", "--out", path_str(&out)];
    fails(&args);
    assert_eq!(std::fs::read(&out).unwrap(), b"previous contents", "--out was clobbered by a failed run");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "leftovers beside --out");
}

#[test]
fn generate_ids_out_in_missing_directory_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("no-such-dir/ids.json");
    let stderr = fails(&[
        "generate",
        "--model",
        path_str(&fixture_dir(ONE)),
        "--prompt-ids",
        PROMPT,
        "--max-new-tokens",
        "2",
        "--ids-out",
        path_str(&out),
    ]);
    mentions(&stderr, &[path_str(&tmp.path().join("no-such-dir"))]);
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none(), "something was written");
}
