//! Bad input to the `smelt` command line: every case must exit non-zero (not by a signal, not
//! by a panic) with an `error:` on stderr that names the file, field, tensor or id at fault,
//! and must leave no output file (or `.partial` leftover) behind.
//!
//! Damaged models are temporary copies of the fixtures in tests/fixtures/models.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fixture_dir;
use safetensors::Dtype;

/// No error case should take long; a hang is a bug.
const TIMEOUT: Duration = Duration::from_secs(120);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Runs `smelt args...` from the repository root with a timeout; returns (exit code, stdout,
/// stderr). Output goes to files so a chatty child cannot block on a full pipe.
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let logs = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning smelt {args:?}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("smelt {args:?} hung for more than {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
    (status.code(), read(&out_path), read(&err_path))
}

/// Runs a command that must fail cleanly and returns its stderr.
fn fails(args: &[&str]) -> String {
    let (code, stdout, stderr) = run(args);
    assert!(!stderr.contains("panicked"), "smelt {args:?} panicked:\n{stderr}");
    match code {
        None => panic!("smelt {args:?} was killed by a signal:\n{stderr}"),
        Some(0) => panic!("smelt {args:?} exited 0 on bad input:\nstdout:\n{stdout}\nstderr:\n{stderr}"),
        Some(_) => {}
    }
    assert!(stderr.contains("error"), "smelt {args:?}: no error message on stderr:\n{stderr}");
    eprintln!(
        "=== {}\n{stderr}",
        args.iter().map(|a| if a.len() > 60 { "<long>" } else { a }).collect::<Vec<_>>().join(" ")
    );
    stderr
}

/// Asserts `stderr` contains every one of `needles`.
fn mentions(stderr: &str, needles: &[&str]) {
    for needle in needles {
        assert!(stderr.contains(needle), "stderr does not mention {needle:?}:\n{stderr}");
    }
}

/// An output location in an empty directory of its own, so leftovers are easy to spot.
struct OutDir {
    dir: tempfile::TempDir,
}

impl OutDir {
    fn new() -> OutDir {
        OutDir { dir: tempfile::tempdir().unwrap() }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Nothing at all was written: no output, no `.partial`.
    fn assert_empty(&self) {
        let left: Vec<_> = std::fs::read_dir(self.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "files left behind after a failure: {left:?}");
    }
}

/// `smelt logits` that must fail; checks that `--out` was not written. Returns stderr.
fn logits_fails(model: &Path, prompt_ids: &str, extra: &[&str]) -> String {
    let out = OutDir::new();
    let file = out.file("logits.safetensors");
    let mut args = vec!["logits", "--model", path_str(model), "--prompt-ids", prompt_ids, "--out", path_str(&file)];
    args.extend_from_slice(extra);
    let stderr = fails(&args);
    assert!(!file.exists(), "{} exists after a failed run", file.display());
    out.assert_empty();
    stderr
}

/// `smelt generate` that must fail; checks that `--ids-out` was not written. Returns stderr.
fn generate_fails(model: &Path, prompt_ids: &str, extra: &[&str]) -> String {
    let out = OutDir::new();
    let file = out.file("ids.json");
    let mut args = vec![
        "generate",
        "--model",
        path_str(model),
        "--prompt-ids",
        prompt_ids,
        "--max-new-tokens",
        "4",
        "--ids-out",
        path_str(&file),
    ];
    args.extend_from_slice(extra);
    let stderr = fails(&args);
    assert!(!file.exists(), "{} exists after a failed run", file.display());
    out.assert_empty();
    stderr
}

/// A copy of a fixture's model files (not the reference outputs) that a test may damage.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_dir(name)).unwrap() {
        let path = entry.unwrap().path();
        let file_name = path.file_name().unwrap();
        if file_name != "reference.safetensors" {
            std::fs::copy(&path, tmp.path().join(file_name)).unwrap();
        }
    }
    tmp
}

/// One tensor of a safetensors file, owned.
struct Stored {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// Rewrites a safetensors file through `edit`, which may change, drop or add tensors.
fn rewrite_tensors(path: &Path, edit: impl FnOnce(&mut Vec<Stored>)) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<Stored> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| Stored { name, dtype: t.dtype(), shape: t.shape().to_vec(), data: t.data().to_vec() })
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|t| (t.name.clone(), safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn find<'a>(tensors: &'a mut [Stored], name: &str) -> &'a mut Stored {
    tensors.iter_mut().find(|t| t.name == name).unwrap_or_else(|| panic!("fixture has no tensor {name}"))
}

/// Edits a copied fixture's config.json as JSON.
fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// The one-token fixture (vocab 384, max_position_embeddings 128) takes single-id prompts.
const ONE: &str = "one-token";
const PROMPT: &str = "5,17";

// ---------------------------------------------------------------------------------------------
// Damaged weights

#[test]
fn truncated_weights_file_names_the_file() {
    let model = copy_fixture(ONE);
    let weights = model.path().join("model.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&weights).unwrap();
    file.set_len(len - 100).unwrap();
    drop(file);
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&weights), "not a valid safetensors file"]);
    let stderr = generate_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&weights)]);
}

#[test]
fn text_instead_of_weights_file_names_the_file() {
    let model = copy_fixture(ONE);
    let weights = model.path().join("model.safetensors");
    std::fs::write(&weights, "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 12345\n").unwrap();
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&weights), "not a valid safetensors file"]);
}

#[test]
fn garbage_bytes_weights_file_names_the_file() {
    let model = copy_fixture(ONE);
    let weights = model.path().join("model.safetensors");
    // A header length far beyond the file, then noise.
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80).collect();
    std::fs::write(&weights, garbage).unwrap();
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&weights)]);
}

#[test]
fn empty_weights_file_names_the_file() {
    let model = copy_fixture(ONE);
    let weights = model.path().join("model.safetensors");
    std::fs::write(&weights, b"").unwrap();
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&weights)]);
}

#[test]
fn header_json_that_is_not_safetensors_names_the_file() {
    let model = copy_fixture(ONE);
    let weights = model.path().join("model.safetensors");
    let header = br#"{"model.norm.weight": "not a tensor"}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    std::fs::write(&weights, bytes).unwrap();
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&weights)]);
}

#[test]
fn no_weights_in_model_dir_is_reported() {
    let model = copy_fixture(ONE);
    std::fs::remove_file(model.path().join("model.safetensors")).unwrap();
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(model.path()), "model.safetensors"]);
}

#[test]
fn missing_tensor_is_named() {
    let model = copy_fixture(ONE);
    let weights = model.path().join("model.safetensors");
    let gone = "model.layers.1.mlp.up_proj.weight";
    rewrite_tensors(&weights, |ts| {
        let before = ts.len();
        ts.retain(|t| t.name != gone);
        assert_eq!(ts.len(), before - 1);
    });
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[gone, "missing", path_str(&weights)]);
    let stderr = generate_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[gone, "missing"]);
}

#[test]
fn missing_lm_head_of_untied_model_is_named() {
    let model = copy_fixture(ONE);
    rewrite_tensors(&model.path().join("model.safetensors"), |ts| ts.retain(|t| t.name != "lm_head.weight"));
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &["lm_head.weight", "missing"]);
}

#[test]
fn wrong_shape_shows_expected_and_found() {
    let model = copy_fixture(ONE);
    let weights = model.path().join("model.safetensors");
    let name = "model.layers.0.mlp.up_proj.weight";
    rewrite_tensors(&weights, |ts| {
        let t = find(ts, name);
        assert_eq!(t.shape, [128, 64], "fixture changed");
        t.shape = vec![64, 128]; // same byte count, transposed shape
    });
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[name, path_str(&weights), "[64, 128]", "expected [128, 64]"]);
}

#[test]
fn wrong_shape_with_wrong_size_shows_expected_and_found() {
    let model = copy_fixture(ONE);
    let name = "model.embed_tokens.weight";
    rewrite_tensors(&model.path().join("model.safetensors"), |ts| {
        let t = find(ts, name);
        assert_eq!(t.shape, [384, 64], "fixture changed");
        t.shape = vec![383, 64];
        t.data.truncate(383 * 64 * 2);
    });
    let stderr = generate_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[name, "[383, 64]", "expected [384, 64]"]);
}

#[test]
fn wrong_dtype_i32_names_tensor_and_dtype() {
    let model = copy_fixture(ONE);
    let weights = model.path().join("model.safetensors");
    let name = "model.norm.weight";
    rewrite_tensors(&weights, |ts| {
        let t = find(ts, name);
        t.dtype = Dtype::I32;
        t.data = vec![0; t.shape.iter().product::<usize>() * 4];
    });
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[name, "I32", path_str(&weights)]);
}

#[test]
fn wrong_dtype_f64_names_tensor_and_dtype() {
    let model = copy_fixture(ONE);
    let name = "model.layers.1.self_attn.k_proj.weight";
    rewrite_tensors(&model.path().join("model.safetensors"), |ts| {
        let t = find(ts, name);
        t.dtype = Dtype::F64;
        t.data = (0..t.shape.iter().product::<usize>()).flat_map(|i| (i as f64 * 1e-3).to_le_bytes()).collect();
    });
    let stderr = generate_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[name, "F64"]);
}

// ---------------------------------------------------------------------------------------------
// Sharded checkpoints

const SHARDED: &str = "gqa2-untied-bf16-sharded";

#[test]
fn missing_shard_names_index_and_shard() {
    let model = copy_fixture(SHARDED);
    let shard = model.path().join("model-00002-of-00003.safetensors");
    std::fs::remove_file(&shard).unwrap();
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&shard), "model.safetensors.index.json"]);
}

#[test]
fn truncated_shard_names_the_shard() {
    let model = copy_fixture(SHARDED);
    let shard = model.path().join("model-00003-of-00003.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&shard).unwrap().set_len(len - 100).unwrap();
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&shard)]);
}

#[test]
fn index_that_is_not_json_names_the_index() {
    let model = copy_fixture(SHARDED);
    let index = model.path().join("model.safetensors.index.json");
    std::fs::write(&index, "{ weight_map: oops").unwrap();
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&index)]);
}

#[test]
fn index_pointing_outside_model_dir_is_refused() {
    let model = copy_fixture(SHARDED);
    let index = model.path().join("model.safetensors.index.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    v["weight_map"]["model.norm.weight"] = "../model-00001-of-00003.safetensors".into();
    std::fs::write(&index, v.to_string()).unwrap();
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&index), "model.norm.weight"]);
}

// ---------------------------------------------------------------------------------------------
// Bad config.json / generation_config.json

#[test]
fn config_kv_heads_not_dividing_heads_names_the_field() {
    let model = copy_fixture("gqa1-tied-f32"); // 4 heads
    edit_config(model.path(), |c| {
        c.insert("num_key_value_heads".into(), 3.into());
    });
    let config = model.path().join("config.json");
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&config), "num_key_value_heads", "num_attention_heads (4)"]);
    let stderr = fails(&["compile", "--model", path_str(model.path())]);
    mentions(&stderr, &[path_str(&config), "num_key_value_heads"]);
}

#[test]
fn config_hidden_size_zero_names_the_field() {
    let model = copy_fixture(ONE);
    edit_config(model.path(), |c| {
        c.insert("hidden_size".into(), 0.into());
    });
    let config = model.path().join("config.json");
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&config), "hidden_size"]);
    let stderr = fails(&["compile", "--config", path_str(&config)]);
    mentions(&stderr, &[path_str(&config), "hidden_size"]);
}

#[test]
fn config_yarn_rope_parameters_names_the_field() {
    // transformers 5.x shape: rope_parameters.
    let model = copy_fixture(ONE);
    edit_config(model.path(), |c| {
        assert!(c.contains_key("rope_parameters"), "fixture changed");
        c.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32}),
        );
    });
    let stderr = generate_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&model.path().join("config.json")), "rope_parameters", "yarn"]);
}

#[test]
fn config_yarn_rope_scaling_names_the_field() {
    // transformers 4.x shape (the published Qwen3 configs): top-level rope_theta, rope_scaling.
    let model = copy_fixture(SHARDED);
    edit_config(model.path(), |c| {
        assert!(c.contains_key("rope_scaling") && !c.contains_key("rope_parameters"), "fixture changed");
        c.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}),
        );
    });
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&model.path().join("config.json")), "rope_scaling", "yarn"]);
}

#[test]
fn config_that_is_not_json_names_the_file() {
    let model = copy_fixture(ONE);
    let config = model.path().join("config.json");
    std::fs::write(&config, "vocab_size = 384\nhidden_size = 64\n").unwrap();
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&config), "not a valid config"]);
    let stderr = fails(&["compile", "--model", path_str(model.path())]);
    mentions(&stderr, &[path_str(&config)]);
}

#[test]
fn config_with_wrong_field_type_names_the_file_and_field() {
    let model = copy_fixture(ONE);
    edit_config(model.path(), |c| {
        c.insert("vocab_size".into(), "many".into());
    });
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&model.path().join("config.json")), "many"]);
}

#[test]
fn missing_config_names_the_file() {
    let model = copy_fixture(ONE);
    let config = model.path().join("config.json");
    std::fs::remove_file(&config).unwrap();
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&config)]);
}

#[test]
fn compile_missing_config_file_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("nope.json");
    let stderr = fails(&["compile", "--config", path_str(&config)]);
    mentions(&stderr, &[path_str(&config)]);
}

#[test]
fn generation_config_that_is_not_json_names_the_file() {
    let model = copy_fixture(ONE);
    let gen = model.path().join("generation_config.json");
    std::fs::write(&gen, "{ eos_token_id: 383 ").unwrap();
    let stderr = generate_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&gen)]);
}

#[test]
fn generation_config_bad_eos_names_the_field() {
    let model = copy_fixture(ONE);
    let gen = model.path().join("generation_config.json");
    std::fs::write(&gen, r#"{"eos_token_id": -1}"#).unwrap();
    let stderr = generate_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&gen), "eos_token_id"]);
}

// ---------------------------------------------------------------------------------------------
// Bad prompts

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

// ---------------------------------------------------------------------------------------------
// Bad paths and flags

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

// ---------------------------------------------------------------------------------------------
// Tokenizer

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

// ---------------------------------------------------------------------------------------------
// Usage errors (clap)

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

/// gqa1 (f32) with every element of `tensor` set to `value`.
fn with_constant_tensor(tensor: &str, value: f32) -> tempfile::TempDir {
    let model = copy_fixture("gqa1-tied-f32");
    rewrite_tensors(&model.path().join("model.safetensors"), |ts| {
        let t = find(ts, tensor);
        assert_eq!(t.dtype, Dtype::F32);
        t.data = t.data.chunks(4).flat_map(|_| value.to_le_bytes()).collect();
    });
    model
}

#[test]
fn f16_overflow_names_the_node_or_the_tensor_and_bf16_runs() {
    // A norm weight of 30,000 fits f16, but the normalized activations it scales (|x| up to
    // about 3) do not.
    let norm = "model.layers.0.post_attention_layernorm.weight";
    let model = with_constant_tensor(norm, 30000.0);
    let stderr = generate_fails(model.path(), "5,17,42,7", &["--dtype", "f16"]);
    mentions(&stderr, &["f16 overflow", "l00", "post_attn_norm", "bf16 or f32"]);
    let stderr = logits_fails(model.path(), "5,17,42,7", &["--dtype", "f16"]);
    mentions(&stderr, &["f16 overflow"]);
    let (code, _, stderr) = run(&[
        "generate",
        "--model",
        path_str(model.path()),
        "--prompt-ids",
        "5,17,42,7",
        "--max-new-tokens",
        "2",
        "--dtype",
        "bf16",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    // 100,000 does not fit f16 at all: the loader names the tensor.
    let model = with_constant_tensor(norm, 100000.0);
    let stderr = generate_fails(model.path(), "5,17,42,7", &["--dtype", "f16"]);
    mentions(&stderr, &[norm, "do not fit f16"]);
}
