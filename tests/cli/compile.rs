//! `smelt compile`: the summary it prints, the graphs, kernels and plan.json it dumps, for the
//! embedded Qwen3-0.6B config, the 8B config and the fixture models.

use std::path::Path;

use crate::common::*;

/// Total element count of every tensor in a fixture's checkpoint (single file or shards).
/// The decode program `smelt compile` dumps for the embedded config (bf16, as the config says).
fn compiled_decode_program() -> smelt::codegen::Program {
    use smelt::models::qwen3::{declare, DeclareOptions, Logits, Phase};
    let cfg = smelt::models::Qwen3Config::qwen3_0_6b();
    let options = DeclareOptions { phase: Phase::Decode, dtype: smelt::ir::DType::BF16, logits: Logits::LastPosition };
    let mut g = declare(&cfg, options).unwrap();
    smelt::passes::pipeline::standard().run(&mut g, "qwen3").unwrap();
    smelt::codegen::emit(&g).unwrap()
}

fn checkpoint_numel(dir: &Path) -> usize {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("model") && name.ends_with(".safetensors")) {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        total += st.tensors().iter().map(|(_, t)| t.shape().iter().product::<usize>()).sum::<usize>();
    }
    total
}

/// The `  decode graph: N ops: kind n, kind n, ...` line, parsed to (N, [(kind, n)]).
fn op_histogram_line(stdout: &str, graph: &str) -> (usize, Vec<(String, usize)>) {
    let prefix = format!("{graph} graph: ");
    let line = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{stdout}"));
    let rest = &line[prefix.len()..];
    let (total, hist) = rest.split_once(" ops: ").unwrap_or_else(|| panic!("bad histogram line {line:?}"));
    let total: usize = total.parse().unwrap_or_else(|_| panic!("bad op count in {line:?}"));
    let hist = hist
        .split(", ")
        .map(|kv| {
            let (k, n) = kv.rsplit_once(' ').unwrap_or_else(|| panic!("bad entry {kv:?} in {line:?}"));
            (k.to_string(), n.parse().unwrap_or_else(|_| panic!("bad count {kv:?} in {line:?}")))
        })
        .collect();
    (total, hist)
}

#[test]
fn compile_default_prints_qwen3_0_6b_summary() {
    let (stdout, _) = smelt_ok(&["compile"]);
    assert!(stdout.contains("596049920"), "parameter count missing:\n{stdout}");
    assert!(stdout.contains("114688"), "KV bytes per token (bf16) missing:\n{stdout}");
    assert!(stdout.contains("28 layers"), "{stdout}");
    let (total, hist) = op_histogram_line(&stdout, "decode");
    assert_eq!(hist.iter().map(|(_, n)| n).sum::<usize>(), total, "histogram does not add up to the op count");
    let count = |kind: &str| hist.iter().find(|(k, _)| k == kind).map(|&(_, n)| n);
    // One attention and two cache appends per layer, one greedy argmax.
    assert_eq!(count("attention"), Some(28), "{stdout}");
    assert_eq!(count("kv_append"), Some(56), "{stdout}");
    assert_eq!(count("argmax"), Some(1), "{stdout}");
    assert!(count("matmul").is_some_and(|n| n > 0), "{stdout}");
    op_histogram_line(&stdout, "prefill");
}

#[test]
fn compile_dump_writes_text_and_dot_graphs() {
    let tmp = tempfile::tempdir().unwrap();
    // A directory that does not exist yet, nested: --dump creates it.
    let dir = tmp.path().join("graphs/qwen3");
    let (stdout, _) = smelt_ok(&["compile", "--dump", path_str(&dir)]);
    assert!(stdout.contains(path_str(&dir)), "{stdout}");
    for graph in ["decode", "prefill"] {
        let txt = std::fs::read_to_string(dir.join(format!("{graph}.txt"))).unwrap();
        assert!(txt.starts_with(&format!("graph qwen3.{graph} {{")), "{graph}.txt starts with {:?}", &txt[..80]);
        assert!(txt.len() > 1000, "{graph}.txt is suspiciously short");
        let dot = std::fs::read_to_string(dir.join(format!("{graph}.dot"))).unwrap();
        assert!(dot.starts_with("digraph"), "{graph}.dot starts with {:?}", &dot[..40.min(dot.len())]);
        assert!(dot.contains(&format!("qwen3.{graph}")) && dot.contains("->"), "{graph}.dot has no edges");
    }
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let expected = [
        ".smelt-dump.json",
        "decode.dot",
        "decode.primitive.dot",
        "decode.primitive.txt",
        "decode.txt",
        "kernels",
        "kernels.json",
        "kernels.prefill.json",
        "passes",
        "plan.json",
        "prefill.dot",
        "prefill.primitive.dot",
        "prefill.primitive.txt",
        "prefill.txt",
    ];
    assert_eq!(names, expected, "no stray (partial) files");
    // One dump per pass, numbered in pipeline order; the last is the final graph.
    let mut passes: Vec<String> = std::fs::read_dir(dir.join("passes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    passes.sort();
    assert_eq!(passes.first().map(String::as_str), Some("01-canonicalize.txt"), "{passes:?}");
    assert!(passes.iter().any(|p| p.ends_with("-fuse_rmsnorm.txt")), "{passes:?}");
    let last = std::fs::read_to_string(dir.join("passes").join(passes.last().unwrap())).unwrap();
    assert_eq!(last, without_kernel_files(&std::fs::read_to_string(dir.join("decode.txt")).unwrap()));
    // Every kernel's CUDA C, and kernels.json listing them with their launches.
    let cu = std::fs::read_to_string(dir.join("kernels/qkv_gemv_rmsnorm.cu")).unwrap();
    assert!(cu.contains("extern \"C\" __global__") && cu.contains(" qkv_gemv_rmsnorm("), "{cu}");
    // The prelude once, included by each kernel: prelude + the rest is what NVRTC compiles.
    let prelude = std::fs::read_to_string(dir.join("kernels/smelt_prelude.h")).unwrap();
    assert_eq!(prelude, smelt::codegen::PRELUDE);
    let own = cu.strip_prefix("#include \"smelt_prelude.h\"\n").expect("the .cu includes the prelude");
    assert!(!own.contains("smelt_round_bf16(float x) {"), "the prelude is not repeated");
    let program = compiled_decode_program();
    let source = &program.kernels.iter().find(|k| k.name == "qkv_gemv_rmsnorm").unwrap().source;
    assert_eq!(format!("{prelude}{own}"), *source);
    let kernels: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("kernels.json")).unwrap()).unwrap();
    let list = kernels["kernels"].as_array().unwrap();
    assert_eq!(list.len(), 8);
    assert!(list.iter().all(|k| k["name"].is_string() && k["launch"]["block"].as_u64().unwrap() > 0));
    let calls: u64 = list.iter().map(|k| k["calls_per_step"].as_u64().unwrap()).sum();
    // Six launches per layer: q's norm + RoPE and k's and v's appends are one; the lm_head
    // computes the greedy token too.
    assert_eq!(calls, 28 * 6 + 2);
    // The prefill program's kernels (tensor-core GEMMs, flash attention) in their own folder.
    let prefill = std::fs::read_to_string(dir.join("kernels/prefill/gate_up_swiglu_gemm_epilogue.cu")).unwrap();
    assert!(prefill.starts_with("#include \"../smelt_prelude.h\"\n"), "{prefill}");
    // The GEMM uses tensor cores: the prelude's mma.sync wrapper.
    assert!(prefill.contains("smelt_mma_bf16("), "{prefill}");
    let prelude_file = std::fs::read_to_string(dir.join("kernels/smelt_prelude.h")).unwrap();
    assert!(prelude_file.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"), "{prelude_file}");
    assert!(dir.join("kernels/prefill/prefill_attention.cu").is_file());
    // Each GEMM's GEMV for chunks of at most 4 tokens, dumped beside it and named on its line.
    let gemv = std::fs::read_to_string(dir.join("kernels/prefill/down_residual_gemv_rows.cu")).unwrap();
    assert!(gemv.contains("step->new_tokens < ROWS ? step->new_tokens : ROWS"), "{gemv}");
    let prefill_txt = std::fs::read_to_string(dir.join("prefill.txt")).unwrap();
    let down = prefill_txt.lines().find(|l| l.contains("down_residual_gemm_epilogue.cu")).expect("the down_proj line");
    let gemm_then_gemv =
        "kernels/prefill/down_residual_gemm_epilogue.cu (T > 4), kernels/prefill/down_residual_gemv_rows.cu (T <= 4)";
    assert!(down.contains(gemm_then_gemv), "{down}");
    let prefill_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("kernels.prefill.json")).unwrap()).unwrap();
    let of = |name: &str| prefill_json["kernels"].as_array().unwrap().iter().find(|k| k["name"] == name).cloned();
    let (gemv, gemm) = (of("down_residual_gemv_rows").unwrap(), of("down_residual_gemm_epilogue").unwrap());
    assert_eq!((gemv["at_most_rows"].as_u64(), gemv["calls_per_step"].as_u64()), (Some(4), Some(28)), "{gemv}");
    assert!(gemm["at_most_rows"].is_null(), "{gemm}");
}

/// A dumped graph's text without the kernel files its lines name (` => kernels/….cu`).
fn without_kernel_files(text: &str) -> String {
    let strip = |l: &str| match (l.find("  => "), l.find("  # => ")) {
        (_, Some(i)) | (Some(i), None) => l[..i].to_string(),
        (None, None) => l.to_string(),
    };
    text.lines().map(|l| strip(l) + "\n").collect()
}

/// Each line of decode.txt and prefill.txt that launches kernels names their files in the dump.
#[test]
fn compile_dump_graph_lines_name_their_kernel_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dump");
    smelt_ok(&["compile", "--dump", path_str(&dir)]);
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("plan.json")).unwrap()).unwrap();
    for graph in ["decode", "prefill"] {
        let text = std::fs::read_to_string(dir.join(format!("{graph}.txt"))).unwrap();
        let mut noted = 0;
        for line in text.lines().filter(|l| l.contains(" => ")) {
            noted += 1;
            let files = &line[line.find(" => ").unwrap() + 4..];
            // A GEMM's file and its GEMV's carry the steps each runs at: `(T > 4)`, `(T <= 4)`.
            for file in files.split(", ").map(|f| f.split(" (T ").next().unwrap_or(f)) {
                assert!(dir.join(file).is_file(), "{graph}.txt names {file}, which is not in the dump: {line}");
                let folder = if graph == "prefill" { "kernels/prefill/" } else { "kernels/" };
                assert!(
                    file.starts_with(folder)
                        && file[folder.len()..].ends_with(".cu")
                        && !file[folder.len()..].contains('/')
                );
            }
        }
        // One line per fused op, each of which is a kernel (or two).
        assert_eq!(noted, plan[graph]["ops"].as_u64().unwrap(), "{graph}.txt:\n{text}");
    }
    let decode = std::fs::read_to_string(dir.join("decode.txt")).unwrap();
    let attention = decode.lines().find(|l| l.ends_with("# l00.attn.attention  => kernels/attention_merged.cu"));
    assert!(attention.is_some(), "{decode}");
    assert!(decode.contains("# l00.mlp.gate_up  => kernels/gate_up_swiglu_gemv_rmsnorm.cu\n"), "{decode}");
    // The primitive graphs have no kernels.
    assert!(!std::fs::read_to_string(dir.join("decode.primitive.txt")).unwrap().contains(" => "));
}

/// `plan.json` is a contract for outside checks.
#[test]
fn compile_writes_plan_json() {
    let tmp = tempfile::tempdir().unwrap();
    let (stdout, _) = smelt_ok(&["compile", "--dump", path_str(tmp.path())]);
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("plan.json")).unwrap()).unwrap();
    let decode = &plan["decode"];
    assert_eq!(decode["ops_per_layer"], 8, "{plan}");
    assert_eq!(decode["ops"], 28 * 8 + 3, "{plan}");
    assert!(decode["arena_bytes"].as_u64().unwrap() <= 2 << 20, "{plan}");
    assert!(plan["prefill"]["ops"].as_u64().unwrap() > 0 && plan["prefill"]["arena_bytes"].as_u64().unwrap() > 0);
    assert_eq!(plan["kv"]["dtype"], "bf16");
    assert_eq!(plan["kv"]["block_tokens"], 16);
    assert_eq!(plan["kv"]["bytes_per_token"], 114_688);
    // The kernel table adds up to the model's weights plus KV reads at context 1024.
    // One attention launch per layer (merged splits); split and combine are one more each.
    // The q, k and v heads' three nodes are one launch; apart, three.
    assert!(stdout.contains("total: 170 launches of 8 kernels"), "{stdout}");
    let (split, _) = smelt_ok(&["compile", "--no-merged-attention"]);
    assert!(split.contains("total: 198 launches of 9 kernels"), "{split}");
    let (apart, _) = smelt_ok(&["compile", "--no-co-launch"]);
    assert!(apart.contains("total: 227 launches of 11 kernels"), "{apart}");
    // One card, named with the bandwidth it is priced at, in the header and the total.
    assert!(stdout.contains("floor at 4.25 TB/s, an H200's copy rate"), "{stdout}");
    assert!(stdout.contains("floor 0.312 ms/token on an H200") && !stdout.contains("H100"), "{stdout}");
    // The same figures are printed.
    assert!(stdout.contains("227 fused ops, at most 8 per layer, 3 outside the layers"), "{stdout}");
    assert!(stdout.contains("113 tensor-core GEMMs, each a GEMV at steps of at most 4 tokens)"), "{stdout}");
    let (gemms_only, _) = smelt_ok(&["compile", "--gemv-rows", "0"]);
    assert!(gemms_only.contains("(113 tensor-core GEMMs)"), "{gemms_only}");
    assert!(stdout.contains(&format!("activation arena: {} bytes", decode["arena_bytes"])), "{stdout}");
}

#[test]
fn compile_no_fuse_and_dump_after() {
    let (stdout, _) = smelt_ok(&["compile", "--no-fuse"]);
    assert!(stdout.contains("primitive ops (--no-fuse)") && !stdout.contains("pass pipeline"), "{stdout}");
    let (stdout, _) = smelt_ok(&["compile", "--dump-after", "fuse_rmsnorm"]);
    assert!(stdout.contains("graph qwen3.decode {") && stdout.contains("rmsnorm[eps=1e-6]"), "{stdout}");
    let out = smelt(&["compile", "--dump-after", "no_such_pass"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fuse_rmsnorm"), "the error lists the passes: {stderr}");
    // Each pass once; dce, which runs seven times, by the steps that name it apart.
    assert!(stderr.contains("passes: canonicalize, cse, dce, fuse_horizontal,"), "{stderr}");
    assert!(!stderr.contains("dce, dce") && stderr.contains("dce runs as 03-dce, 05-dce,"), "{stderr}");
    // Bare `dce` is ambiguous; a step label, as passes/ names the dumps, is not.
    let out = smelt(&["compile", "--dump-after", "dce"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("dce runs 7 times: name one step"));
    let (stdout, _) = smelt_ok(&["compile", "--dump-after", "07-dce"]);
    let graph = &stdout[stdout.find("graph qwen3.decode {").expect("the graph is printed")..];
    let graph = &graph[..graph.find("\n}\n").expect("the graph ends")];
    assert!(graph.contains("rmsnorm[eps=1e-6]") && !graph.contains("norm_rope"), "after fuse_rmsnorm's dce: {graph}");
}

#[test]
fn compile_with_qwen3_8b_config() {
    let (stdout, _) = smelt_ok(&["compile", "--config", "models/assets/qwen3/configs/qwen3-8b.json"]);
    assert!(stdout.contains("qwen3-8b.json"), "{stdout}");
    assert!(stdout.contains("36 layers") && stdout.contains("hidden 4096"), "{stdout}");
    // Untied 8B: 8,190,735,360 parameters; KV = 36 layers * 2 * 8 heads * 128 * 2 bytes.
    assert!(stdout.contains("8190735360"), "{stdout}");
    assert!(stdout.contains("147456"), "{stdout}");
    let (_, hist) = op_histogram_line(&stdout, "decode");
    assert!(hist.contains(&("attention".to_string(), 36)), "{stdout}");
}

#[test]
fn compile_with_fixture_model_dir() {
    for name in FIXTURES {
        let dir = fixture_dir(name);
        let (stdout, _) = smelt_ok(&["compile", "--model", path_str(&dir)]);
        assert!(stdout.contains(path_str(&dir.join("config.json"))), "{name}: origin missing:\n{stdout}");
        // The graph's parameter count is exactly what the checkpoint holds.
        let params = checkpoint_numel(&dir);
        assert!(stdout.contains(&format!("parameters: {params} ")), "{name}: expected {params} parameters:\n{stdout}");
        op_histogram_line(&stdout, "decode");
    }
    // one-token: 2 layers * 2 (K, V) * 1 KV head * head_dim 32 * 2 bytes (bf16 checkpoint).
    let (stdout, _) = smelt_ok(&["compile", "--model", path_str(&fixture_dir("one-token"))]);
    assert!(stdout.contains("dtype bf16") && stdout.contains("+ 256 of KV cache"), "{stdout}");
}

/// The kernel table's lines: its column header to the last row, before `total:`.
fn kernel_table(stdout: &str) -> Vec<&str> {
    let lines: Vec<&str> = stdout.lines().collect();
    let start = lines.iter().position(|l| l.trim_start().starts_with("node ")).expect("a kernel table");
    let end = lines.iter().position(|l| l.trim_start().starts_with("total: ")).expect("a total line");
    lines[start..end].to_vec()
}

/// Right-aligned numbers end in one column (every line as long as the header), and each
/// kernel name starts where the header's `kernel` does, after at least two spaces.
fn assert_kernel_table_aligned(stdout: &str) {
    let table = kernel_table(stdout);
    let chars = |l: &str| l.chars().collect::<Vec<char>>();
    let header = chars(table[0]);
    let kernel = table[0].find("kernel").expect("a kernel column");
    for line in &table[1..] {
        let row = chars(line);
        assert_eq!(row.len(), header.len(), "numbers end where the header does:\n{}", table.join("\n"));
        if line.trim_start().starts_with("(layer") {
            continue;
        }
        assert!(
            row[kernel - 2] == ' ' && row[kernel - 1] == ' ' && row[kernel] != ' ',
            "{line:?}:\n{}",
            table.join("\n")
        );
    }
}

#[test]
fn compile_kernel_table_columns_align() {
    let (stdout, _) = smelt_ok(&["compile"]);
    assert_kernel_table_aligned(&stdout);
    let (stdout, _) = smelt_ok(&["compile", "--config", "models/assets/qwen3/configs/qwen3-8b.json"]);
    assert_kernel_table_aligned(&stdout);
    assert!(stdout.contains("gate_up_swiglu_gemv_rmsnorm") && stdout.contains("(layers 1-35: 210 more launches)"));
}

/// The merged attention kernel writes its splits' partials and its last blocks read them back:
/// twice the scratch at context 1024; with `--no-merged-attention`, the combine kernel reads
/// back what the split kernel wrote.
#[test]
fn compile_kernel_table_shows_the_scratch_attention_writes_and_reads() {
    let program = compiled_decode_program();
    let scratch = program
        .launches
        .iter()
        .find_map(|l| match &l.params {
            smelt::codegen::Params::SplitK { scratch, .. } => Some(scratch.bytes(1024, 1)),
            _ => None,
        })
        .expect("merged attention");
    assert!(scratch > 100_000, "{scratch}");
    let row_bytes = |stdout: &str, kind: &str| -> usize {
        let row = kernel_table(stdout).into_iter().find(|l| l.contains(kind)).unwrap_or_else(|| panic!("{stdout}"));
        row.split_whitespace().nth(2).unwrap().parse::<usize>().unwrap()
    };
    let (merged, _) = smelt_ok(&["compile"]);
    let (split, _) = smelt_ok(&["compile", "--no-merged-attention"]);
    assert_eq!(row_bytes(&split, "attention_combine"), scratch);
    assert_eq!(row_bytes(&merged, "attention_merged"), row_bytes(&split, "attention_split") + scratch);
    for stdout in [&merged, &split] {
        // The lm_head's 1024 blocks each write a (value, index) pair the last one reads back.
        assert!(stdout.contains(&format!("{} of scratch", 2 * 28 * scratch + 2 * 1024 * 8)), "{stdout}");
    }
    assert!(!merged.contains("attention_combine") && !split.contains("attention_merged"));
}

/// Counts agree with their nouns ("1 layer", "1 KV head") and small sizes get small units.
#[test]
fn compile_counts_and_sizes_read_naturally() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir("one-token").join("config.json")).unwrap()).unwrap();
    cfg["num_hidden_layers"] = 1.into();
    cfg["layer_types"] = serde_json::json!(["full_attention"]);
    let path = tmp.path().join("config.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let (stdout, _) = smelt_ok(&["compile", "--config", path_str(&path), "--dtype", "f32"]);
    assert!(stdout.contains("  1 layer, hidden 64, 2 heads / 1 KV head x head_dim 32"), "{stdout}");
    assert!(!stdout.contains("GB") && !stdout.contains("(layer"), "{stdout}");
    // 2 layers of the fixture: in KB, and the other layer's row says "layer 1".
    let (stdout, _) = smelt_ok(&["compile", "--model", path_str(&fixture_dir("one-token"))]);
    assert!(stdout.contains("parameters: 123328 (246.7 KB in bf16)"), "{stdout}");
    assert!(
        stdout.contains("197632 of weights (197.6 KB)") && stdout.contains("at context 1024: 459.8 KB"),
        "{stdout}"
    );
    let (stdout, _) = smelt_ok(&["compile", "--model", path_str(&fixture_dir("one-token")), "--dtype", "f32"]);
    assert!(stdout.contains("(layer 1: 6 more launches)"), "{stdout}");
    assert!(stdout.contains(" µs/token on an H200"), "a tiny step's floor in µs: {stdout}");
    assert_kernel_table_aligned(&stdout);
}

/// `smelt compile | head -1`: a reader that goes away leaves smelt to end quietly, not to
/// panic on the broken pipe.
#[test]
fn compile_into_a_closed_pipe_ends_quietly() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_smelt"))
        .arg("compile")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("panicked"), "{}: {stderr}", out.status);
}
