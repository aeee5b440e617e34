//! `smelt check-kernels --emulate`: the generated programs run on the CPU emulator node by
//! node against `ir::eval`, and their logits against the CPU backend, with no GPU.

mod common;

use common::random_model::write_weights;
use common::smelt;

/// Head dim 128 (the prefill attention kernel's), two query heads sharing one KV head, a
/// small vocabulary: the prefill GEMM and flash attention run in a few seconds emulated. One
/// output tile per GEMM, so o_proj (K = 256) splits K in 2 and down_proj (K = 512) in 4.
const HEAD_DIM_128: &str = r#"{
  "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
  "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2,
  "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 128,
  "vocab_size": 512, "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
  "rope_theta": 1000000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "bos_token_id": 1, "eos_token_id": 2
}"#;

fn emulate(args: &[&str]) -> Option<String> {
    let out = smelt(&[&["check-kernels", "--emulate"], args].concat());
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if stderr.contains("no C++20 compiler") && std::env::var_os("CI").is_none() {
        eprintln!("skipped: {stderr}");
        return None;
    }
    assert!(out.status.success(), "{args:?}:\n{stdout}\n{stderr}");
    Some(stdout.into_owned())
}

/// The decode program of every fixture the kernels support (head dim 32, in f32 only; the
/// other two have head dim 16, which no kernel takes), at the first position, one in the
/// first KV block and one in the third.
#[test]
fn every_fixtures_decode_program_matches_node_by_node() {
    for fixture in ["gqa2-untied-bf16-sharded", "one-token"] {
        let model = common::fixture_dir(fixture);
        let args = ["--model", model.to_str().unwrap(), "--dtype", "f32", "--positions", "0,5,40"];
        let Some(out) = emulate(&args) else { return };
        assert!(out.contains("emulated decode at position 40:"), "{fixture}: {out}");
        assert_eq!(out.matches("logits vs the CPU backend").count(), 3, "{fixture}: {out}");
        assert!(out.contains(" 0 failed; 0 logits checks failed"), "{fixture}: {out}");
    }
}

#[test]
fn the_prefill_program_runs_its_gemm_and_flash_attention_emulated() {
    let dir = tempfile::tempdir().unwrap();
    write_weights(dir.path(), HEAD_DIM_128, 3);
    let model = dir.path().to_str().unwrap();
    // A prompt of 20, then 13 more after it (the second chunk's keys cross a 16-token block);
    // under ThreadSanitizer, blocks in a seeded order, copies landing at a seeded moment.
    let args = ["--model", model, "--dtype", "bf16", "--positions", "3", "--prefill", "20,13", "--checker", "races"];
    let Some(out) = emulate(&args) else {
        return;
    };
    assert!(out.contains("emulated prefill of 13 tokens at position 20"), "{out}");
    for kernel in ["qkv_gemm", "prefill_attention", "down_residual_gemm_epilogue"] {
        assert!(out.contains(kernel), "no {kernel} kernel checked:\n{out}");
    }
    assert!(out.contains(" 0 failed; 0 logits checks failed"), "{out}");
}

#[test]
fn a_batched_decode_step_matches_each_sequence_alone() {
    let dir = tempfile::tempdir().unwrap();
    write_weights(dir.path(), HEAD_DIM_128, 4);
    let model = dir.path().to_str().unwrap();
    // Five sequences of 1, 38, 14, 51 and 27 tokens, each through blocks of its own.
    let Some(out) = emulate(&["--model", model, "--dtype", "bf16", "--positions", "0", "--batch", "5"]) else {
        return;
    };
    let batched = out.split("emulated batched decode step of 5 sequences").nth(1).unwrap_or_else(|| panic!("{out}"));
    // Row-wise kernels node by node (the GEMMs: rows are what they batch), the attention and
    // appends through each row's logits against the same sequence run alone on the CPU.
    for kernel in ["qkv_gemm", "down_residual_gemm_epilogue", "lm_head_gemm_epilogue", "logits vs the CPU backend"] {
        assert!(batched.contains(kernel), "no {kernel} in the batched step's checks:\n{out}");
    }
    assert!(out.contains(" 0 failed; 0 logits checks failed"), "{out}");
}
