//! Damaged checkpoints: truncated, garbage or mis-shaped weights, broken shards and indexes,
//! values that do not fit f16.

use super::*;

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

/// Headers `safetensors` refuses with a message that names no tensor (or the wrong one) are
/// diagnosed by smelt, which names the tensor at fault.
#[test]
fn bad_header_entries_name_their_tensor() {
    let name = "model.layers.0.mlp.up_proj.weight";
    // (edit of the entry, what the error says)
    type Edit = fn(&mut serde_json::Value);
    let edits: [(Edit, &str); 4] = [
        (|e| e["dtype"] = "F64".into(), "dtype F64"),
        (|e| e["dtype"] = "Q4".into(), "is not a safetensors dtype"),
        (|e| e["shape"] = serde_json::json!([0, 64]), "bytes, but its data_offsets"),
        (|e| e["data_offsets"][1] = (1u64 << 62).into(), "lie past the end"),
    ];
    for (edit, says) in edits {
        let model = copy_fixture(ONE);
        let file = model.path().join("model.safetensors");
        let bytes = std::fs::read(&file).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        edit(&mut header[name]);
        let text = header.to_string();
        let mut out = (text.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(&bytes[8 + n..]);
        std::fs::write(&file, out).unwrap();
        let stderr = logits_fails(model.path(), PROMPT, &[]);
        mentions(&stderr, &["model.safetensors", name, says]);
    }
}

// Sharded checkpoints

#[test]
fn an_empty_weight_map_names_the_index() {
    let model = copy_fixture(SHARDED);
    let index = model.path().join("model.safetensors.index.json");
    std::fs::write(&index, r#"{"metadata": {}, "weight_map": {}}"#).unwrap();
    let stderr = logits_fails(model.path(), PROMPT, &[]);
    mentions(&stderr, &[path_str(&index), "weight_map", "empty"]);
}

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
