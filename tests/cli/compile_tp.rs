//! `smelt compile --tensor-parallel N` on the embedded Qwen3-0.6B config: what each rank reads
//! and exchanges, the predicted time per token, each rank's dumped graphs (its weights' slices,
//! its collectives) and kernels, and the refusal of a world its heads do not allow.

use crate::common::*;

#[test]
fn compile_over_two_ranks_reports_and_dumps_each_rank() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d");
    let (stdout, _) = smelt_ok(&["compile", "--tensor-parallel", "2", "--dump", path_str(&out)]);
    assert!(stdout.contains("tensor parallelism over 2 ranks"), "{stdout}");
    // Per layer an all-reduce after o_proj and one after down_proj; one after the partial
    // embedding gather; the logits all-gathered: 58 exchanges per rank.
    for r in 0..2 {
        let line = stdout.lines().find(|l| l.trim_start().starts_with(&format!("rank {r}:"))).expect("a rank line");
        assert!(line.contains("58 exchanges"), "{line}");
    }
    for n in [1, 2, 4, 8] {
        assert!(stdout.contains(&format!("  N={n}: ")), "no prediction for {n} ranks:\n{stdout}");
    }
    for r in 0..2 {
        let text = std::fs::read_to_string(out.join(format!("rank{r}/decode.txt"))).unwrap();
        assert!(text.contains(&format!("rank {r} of 2")), "rank{r}/decode.txt");
        assert_eq!(text.matches("all_reduce[sum, world=2]").count(), 57, "rank{r}/decode.txt");
        assert_eq!(text.matches("all_gather[axis=1, world=2]").count(), 1, "rank{r}/decode.txt");
        // Rank r holds query heads 8r..8r+8 (rows of 128) and o_proj's matching columns.
        let (q, o) = (r * 1024, (r + 1) * 1024);
        assert!(text.contains(&format!("model.layers.0.self_attn.q_proj.weight[{q}:{o}]")), "rank{r}: q rows");
        assert!(text.contains(&format!("model.layers.0.self_attn.o_proj.weight[:, {q}:{o}]")), "rank{r}: o columns");
        assert!(out.join(format!("rank{r}/kernels/embed_partial_gather.cu")).is_file());
        assert!(out.join(format!("rank{r}/plan.json")).is_file());
    }
}

#[test]
fn a_world_the_heads_do_not_allow_is_refused() {
    let out = smelt(&["compile", "--tensor-parallel", "3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "3 ranks accepted");
    assert!(stderr.contains("2048 rows in 16 groups of 128") && stderr.contains("over 3 ranks"), "{stderr}");
    let out = smelt(&["compile", "--tensor-parallel", "2", "--no-fuse"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--no-fuse"));
}
