//! `smelt check-kernels --emulate`: the generated programs run on the CPU emulator node by
//! node against `ir::eval`, and their logits against the CPU backend, with no GPU.

mod common;

use common::random_model::write_weights;
use common::smelt;

/// Head dim 128 (the prefill attention kernel's), two query heads sharing one KV head, a
/// small vocabulary: the prefill GEMM and flash attention run in a few seconds emulated. One
/// output tile per GEMM, so o_proj (K = 256) splits K in 2 and down_proj (K = 512) in 4.
/// `scripts/gpu-check` runs the same config on a GPU and compares it with the emulator.
const HEAD_DIM_128: &str = include_str!("fixtures/configs/head-dim-128.json");

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
        // q's norm + RoPE, k's with the append and v's append: one kernel, three nodes checked.
        assert!(out.contains("qkv_norm_rope_kv_append"), "{fixture}: {out}");
    }
    // With the grids of the CUDA graph that replays each step: attention sized for 256 tokens
    // of context (the smallest bucket) at positions 5 and 40, merged and split + combine.
    let model = common::fixture_dir("one-token");
    for (flag, kernel) in
        [(None, "attention_merged"), (Some("--no-merged-attention"), "attention_split+attention_combine")]
    {
        let mut args =
            vec!["--model", model.to_str().unwrap(), "--dtype", "f32", "--positions", "5,40", "--graph-grids"];
        args.extend(flag);
        let Some(out) = emulate(&args) else { return };
        assert!(out.contains(kernel) && out.contains(" 0 failed; 0 logits checks failed"), "{args:?}:\n{out}");
    }
    // Apart (the A/B twin): a kernel each.
    let args = ["--model", model.to_str().unwrap(), "--dtype", "f32", "--positions", "5", "--no-co-launch"];
    let Some(out) = emulate(&args) else { return };
    for kernel in ["q_norm_rope", "k_norm_rope_kv_append", "v_kv_append"] {
        assert!(out.contains(kernel), "no {kernel} kernel checked:\n{out}");
    }
    assert!(!out.contains("qkv_norm_rope_kv_append") && out.contains(" 0 failed; 0 logits checks failed"), "{out}");
}

#[test]
fn the_prefill_program_runs_its_gemm_and_flash_attention_emulated() {
    let dir = tempfile::tempdir().unwrap();
    write_weights(dir.path(), HEAD_DIM_128, 3);
    let model = dir.path().to_str().unwrap();
    // A prompt of 20, then 13 more after it (the second chunk's keys cross a 16-token block),
    // then 3 (few rows: GEMVs in place of the GEMMs); under ThreadSanitizer, blocks in a
    // seeded order, copies landing at a seeded moment.
    let args = ["--model", model, "--dtype", "bf16", "--positions", "3", "--prefill", "20,13,3", "--checker", "races"];
    let Some(out) = emulate(&args) else {
        return;
    };
    let (gemms, gemvs) =
        out.split_once("emulated prefill of 3 tokens at position 33").unwrap_or_else(|| panic!("{out}"));
    assert!(gemms.contains("emulated prefill of 13 tokens at position 20"), "{out}");
    for kernel in ["qkv_gemm", "qkv_norm_rope_kv_append", "prefill_attention", "down_residual_gemm_epilogue"] {
        assert!(gemms.contains(kernel), "no {kernel} kernel checked:\n{out}");
    }
    for kernel in ["qkv_gemv_rows", "down_residual_gemv_rows", "prefill_attention"] {
        assert!(gemvs.contains(kernel), "no {kernel} kernel checked in the 3-token chunk:\n{out}");
    }
    assert!(!gemvs.contains("_gemm"), "{out}");
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
    // Three sequences: every matmul a GEMV over the three rows (at most 4 by default); the
    // grids a replayed CUDA graph launches, sized for the bucket (256 tokens) instead of the
    // longest row (51), so attention runs splits past every row's context.
    let args = ["--model", model, "--dtype", "bf16", "--positions", "0", "--batch", "3", "--graph-grids"];
    let Some(out) = emulate(&args) else {
        return;
    };
    let batched = out.split("emulated batched decode step of 3 sequences").nth(1).unwrap_or_else(|| panic!("{out}"));
    for kernel in ["qkv_gemv_rows", "down_residual_gemv_rows", "lm_head_gemv_rows", "logits vs the CPU backend"] {
        assert!(batched.contains(kernel), "no {kernel} in the batched step's checks:\n{out}");
    }
    assert!(!batched.contains("_gemm"), "{out}");
    assert!(out.contains(" 0 failed; 0 logits checks failed"), "{out}");
}

/// Tensor parallelism: every rank's program of a group, its all-reduces and the logits'
/// all-gather run as kernels between the ranks' launches; each rank's nodes against
/// `ir::eval`, each exchange's output on every rank against the evaluator's collective over
/// the parts the ranks wrote, every rank's logits equal, bit for bit, and equal to the CPU
/// backend's. Four ranks over two KV heads replicate each KV head to two ranks.
#[test]
fn every_ranks_decode_program_and_its_exchanges_match() {
    let model = common::fixture_dir("gqa2-untied-bf16-sharded");
    for world in ["2", "4"] {
        let args =
            ["--model", model.to_str().unwrap(), "--dtype", "f32", "--positions", "0,20", "--tensor-parallel", world];
        let Some(out) = emulate(&args) else { return };
        let last_rank = format!("rank {}: ", world.parse::<u32>().unwrap() - 1);
        for what in [&last_rank[..], "all_reduce_", "all_gather_", "partial_gather"] {
            assert!(out.contains(what), "{world} ranks: nothing of {what} checked:\n{out}");
        }
        assert_eq!(out.matches("every rank's logits equal rank 0's, bit for bit: ok").count(), 2, "{out}");
        assert!(out.contains(" 0 failed; 0 logits checks failed"), "{world} ranks:\n{out}");
    }
}

/// Two ranks of the head-dim-128 model (one KV head, replicated): the prefill program's GEMMs
/// and flash attention and a batched step, per rank.
#[test]
fn every_ranks_prefill_and_batched_programs_match() {
    let dir = tempfile::tempdir().unwrap();
    write_weights(dir.path(), HEAD_DIM_128, 5);
    let model = dir.path().to_str().unwrap();
    let args = [
        "--model",
        model,
        "--dtype",
        "bf16",
        "--positions",
        "2",
        "--prefill",
        "19",
        "--batch",
        "3",
        "--tensor-parallel",
        "2",
    ];
    let Some(out) = emulate(&args) else { return };
    for what in ["rank 1: ", "prefill_attention", "qkv_gemm", "all_reduce_", "emulated batched decode step of 3"] {
        assert!(out.contains(what), "nothing of {what} checked:\n{out}");
    }
    assert_eq!(out.matches("every rank's logits equal rank 0's, bit for bit: ok").count(), 3, "{out}");
    assert!(out.contains(" 0 failed; 0 logits checks failed"), "{out}");
}

/// `scripts/compare-checks` (the GPU check's emulator/GPU report) matches the two runs' nodes
/// by section and name, and fails on a node one side passes and the other fails, or whose
/// errors differ by more than half its tolerance.
#[test]
fn the_emulator_gpu_report_flags_each_disagreement() {
    let header = "  node                                 kernels                           dtype    rel err    max abs       tol  result";
    let run = |prefix: &str, attention: &str, gemm: &str| {
        format!(
            "{prefix}prefill of 13 tokens at position 20: 2 nodes\n{header}\n  \
             l00.attn.attention                   prefill_attention                  bf16   {attention}\n  \
             l00.attn.q_proj+k_proj+v_proj        qkv_gemm                           bf16   {gemm}\n"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ok = "2.113e-3   9.766e-4    1.0e-2  ok";
    let emulated = write("emulated.txt", run("emulated ", ok, "0.000e0    0.000e0    1.0e-2  ok"));
    let report = |gpu: String| {
        let gpu = write("gpu.txt", gpu);
        let out = std::process::Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/compare-checks"))
            .args([&emulated, &gpu])
            .output()
            .expect("python3 runs");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (agree, out) = report(run("", "2.500e-3   9.766e-4    1.0e-2  ok", "0.000e0    0.000e0    1.0e-2  ok"));
    assert!(agree && out.contains("0 disagreements"), "{out}");
    let (agree, out) =
        report(run("", "2.113e-3   9.766e-4    1.0e-2  FAIL (0 non-finite)", "8.000e-3    1.0e-3    1.0e-2  ok"));
    assert!(!agree && out.contains("2 disagreements"), "{out}");
    let (agree, out) =
        report(run("", ok, "0.000e0    0.000e0    1.0e-2  ok").replace("prefill of 13", "prefill of 12"));
    assert!(!agree && out.contains("only in the emulated run"), "{out}");
}
