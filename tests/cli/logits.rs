//! `smelt logits`: the prompt's logits against the Hugging Face references, and a prompt that
//! fills the context.

use crate::common::*;
use crate::{join_ids, reference};

/// Per-row tolerance on ‖ours − HF‖/‖HF‖, as in tests/hf_fixtures.rs (worst measured 2.3e-6).
const ROW_REL_TOL: f64 = 1e-5;

fn check_logits(name: &str) {
    let r = reference(name);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("logits.safetensors");
    let dir = fixture_dir(name);
    smelt_ok(&["logits", "--model", path_str(&dir), "--prompt-ids", &join_ids(&r.prompt), "--out", path_str(&out)]);

    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.names(), ["logits"], "{name}: exactly one tensor");
    let t = st.tensor("logits").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
    let vocab = r.prefill.shape[1];
    assert_eq!(t.shape(), [r.prompt.len(), vocab], "{name}: shape [T, vocab]");
    let ours: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    for row in 0..r.prompt.len() {
        let (rel, abs) = rel_err(&ours[row * vocab..][..vocab], &r.prefill.f32s[row * vocab..][..vocab]);
        assert!(rel <= ROW_REL_TOL, "{name}: row {row}: rel err {rel:.2e} (max abs {abs:.2e})");
    }
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "{name}: stray files beside the output: {leftovers:?}");
}

#[test]
fn logits_match_hf_sharded_bf16() {
    check_logits("gqa2-untied-bf16-sharded");
}

#[test]
fn logits_match_hf_one_token() {
    check_logits("one-token");
}

#[test]
fn logits_match_hf_tied_f32() {
    check_logits("gqa1-tied-f32");
}

#[test]
fn logits_accept_a_prompt_filling_the_context() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("logits.safetensors");
    let ids = vec!["7"; 128].join(",");
    smelt_ok(&[
        "logits",
        "--model",
        path_str(&fixture_dir("one-token")),
        "--prompt-ids",
        &ids,
        "--out",
        path_str(&out),
    ]);
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("logits").unwrap().shape(), [128, 384]);
}
