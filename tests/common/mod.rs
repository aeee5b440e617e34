//! Helpers shared by the integration tests: fixture paths, reading reference tensors, and
//! the tolerance arithmetic every numeric comparison uses.

#![allow(dead_code)]

pub mod random_model;

use std::path::PathBuf;

/// Greedy generation of up to `n` tokens after `prompt`, ids only (no tokenizer).
pub fn greedy(prompt: &[u32], n: usize) -> smelt::models::Continuation<'static> {
    let request = smelt::models::Request { prompt: prompt.to_vec(), max_new_tokens: n, ..Default::default() };
    smelt::models::Continuation::new(&request, None)
}

pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(name)
}

pub const FIXTURES: [&str; 4] = ["gqa1-tied-f32", "gqa2-untied-bf16-sharded", "gqa4-long-rope", "one-token"];

/// A tensor from a reference safetensors file: (shape, values as f32 or i32-as-i64).
pub struct RefTensor {
    pub shape: Vec<usize>,
    pub f32s: Vec<f32>,
    pub i32s: Vec<i32>,
}

pub fn read_tensor(path: &std::path::Path, name: &str) -> RefTensor {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{}: {name}: {e}", path.display()));
    let data = t.data();
    let words = data.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]);
    let (f32s, i32s) = match t.dtype() {
        safetensors::Dtype::F32 => (words.map(f32::from_le_bytes).collect(), Vec::new()),
        safetensors::Dtype::I32 => (Vec::new(), words.map(i32::from_le_bytes).collect()),
        d => panic!("{name}: unexpected dtype {d:?}"),
    };
    RefTensor { shape: t.shape().to_vec(), f32s, i32s }
}

/// ‖ours − reference‖₂ / ‖reference‖₂ and max |ours − reference|.
pub fn rel_err(ours: &[f32], reference: &[f32]) -> (f64, f64) {
    assert_eq!(ours.len(), reference.len(), "length mismatch");
    let (mut num, mut den, mut max_abs) = (0.0f64, 0.0f64, 0.0f64);
    for (&a, &b) in ours.iter().zip(reference) {
        let d = (a as f64) - (b as f64);
        num += d * d;
        den += (b as f64) * (b as f64);
        max_abs = max_abs.max(d.abs());
    }
    ((num / den.max(f64::MIN_POSITIVE)).sqrt(), max_abs)
}

pub fn argmax(row: &[f32]) -> u32 {
    smelt::models::sample::argmax(row)
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real Qwen3 tokenizer (ids below 384 decode to short pieces of text).
pub fn tokenizer_path() -> PathBuf {
    root().join("models/assets/qwen3/tokenizer.json")
}

pub fn path_str(p: &std::path::Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Runs `smelt args...` from the repository root, with its module cache under target/ rather
/// than the user's home.
pub fn smelt(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(args)
        .current_dir(root())
        .env("SMELT_CACHE_DIR", root().join("target/test-module-cache"))
        .output()
        .unwrap_or_else(|e| panic!("running smelt {args:?}: {e}"))
}

/// Runs `smelt args...`, asserts it succeeded, and returns (stdout, stderr).
pub fn smelt_ok(args: &[&str]) -> (String, String) {
    let out = smelt(args);
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "smelt {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(!stderr.contains("panicked"), "smelt {args:?} panicked:\n{stderr}");
    (stdout, stderr)
}
