//! The prefill GEMM (`linear_gemm`): the Qwen3-0.6B prefill projections compile with NVRTC for
//! sm_80 and sm_90 without spills; the source reads well (snapshot); the launch covers every
//! output tile for any T; shapes it cannot take are refused.
//!
//! Without libnvrtc these tests say so and pass, except under `CI=true`, where a missing NVRTC
//! is a failure (.ci/run installs it).

mod common;
#[path = "gemm/emulation.rs"]
mod emulation;

use smelt_codegen::kernels::gemm::{linear_gemm, GemmSpec};
use smelt_codegen::kernels::{Grid, Kernel, SplitK, View};
use smelt_codegen::PRELUDE;
use smelt_ir::{shape, BinaryOp, Bindings, DType, Expr, ExprKind, Shape, Sym};

use common::epilogues::{acc, node, residual, swiglu, to_f32};

/// One GEMM: the spec's parts, owned.
#[derive(Clone)]
struct Case {
    name: String,
    k: usize,
    n: usize,
    dtype: DType,
    x_view: View,
    epilogue: Option<Expr>,
    extras: Vec<(DType, Shape)>,
    split_k: bool,
}

impl Case {
    fn new(name: &str, dtype: DType, k: usize, n: usize, epilogue: Option<Expr>) -> Case {
        let residual = matches!(&epilogue, Some(e) if e.to_string().contains("in0"));
        Case {
            name: format!("{name}_{dtype}"),
            k,
            n,
            dtype,
            x_view: View::contiguous(k),
            epilogue,
            extras: if residual { vec![(dtype, shape![Sym::NewTokens, n])] } else { vec![] },
            split_k: true,
        }
    }

    /// The same GEMM emitted never to split K (the A/B switch off).
    fn unsplit(mut self) -> Case {
        self.split_k = false;
        self.name.push_str("_unsplit");
        self
    }

    fn spec(&self) -> GemmSpec<'_> {
        GemmSpec {
            k: self.k,
            n: self.n,
            dtype: self.dtype,
            x_view: self.x_view,
            epilogue: self.epilogue.as_ref(),
            extras: &self.extras,
            out_dtype: self.epilogue.as_ref().map_or(self.dtype, |e| e.dtype),
            split_k: self.split_k,
        }
    }

    fn kernel(&self) -> Kernel {
        linear_gemm(&self.name, &self.spec())
    }
}

/// The prefill projections of Qwen3-0.6B in `dtype`, as the fused prefill graph has them.
fn qwen3_prefill(dtype: DType) -> Vec<Case> {
    vec![
        Case::new("l00_attn_qkv_gemm", dtype, 1024, 4096, None),
        Case::new("l00_attn_residual_gemm", dtype, 2048, 1024, Some(residual(dtype))),
        Case::new("l00_mlp_gate_up_gemm", dtype, 1024, 6144, Some(swiglu(dtype))),
        Case::new("l00_ffn_residual_gemm", dtype, 3072, 1024, Some(residual(dtype))),
        Case::new("logits_f32_gemm", dtype, 1024, 151936, Some(to_f32(dtype))),
    ]
}

#[test]
fn qwen3_prefill_gemms_compile_for_every_arch_without_spills() {
    let Some(tc) = common::toolchain() else { return };
    // Split-K on (the default) and off (the A/B variant).
    let kernels: Vec<Kernel> = [DType::BF16, DType::F16]
        .into_iter()
        .flat_map(qwen3_prefill)
        .flat_map(|c| {
            let off = Case { split_k: false, name: format!("{}_unsplit", c.name), ..c.clone() }.kernel();
            [c.kernel(), off]
        })
        .collect();
    assert!(kernels.iter().all(|k| k.kind == "linear_gemm"));
    tc.check_all(&kernels);
}

#[test]
fn gate_up_source_snapshot() {
    let k = Case::new("l00_mlp_gate_up_gemm", DType::BF16, 1024, 6144, Some(swiglu(DType::BF16))).kernel();
    let body = k.source.strip_prefix(PRELUDE).expect("the source starts with the prelude");
    insta::assert_snapshot!("gemm_gate_up_bf16", format!("// launch: {:?}\n// (prelude omitted)\n{body}", k.launch));
}

fn tokens(t: usize) -> Bindings {
    Bindings { batch: 1, new_tokens: t, cached_tokens: 0 }
}

/// The prefill GEMMs of a published Qwen3 size, from its config in models/assets: qkv,
/// o_proj (+ residual), gate_up (SwiGLU), down (+ residual), lm_head (f32 logits).
fn qwen3_size(size: &str, dtype: DType) -> Vec<Case> {
    let path = format!("{}/../models/assets/qwen3/configs/{size}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let cfg: serde_json::Value = serde_json::from_str(&text).expect("config JSON");
    let get = |key: &str| cfg[key].as_u64().unwrap_or_else(|| panic!("{path}: no {key}")) as usize;
    let (hidden, inter, vocab) = (get("hidden_size"), get("intermediate_size"), get("vocab_size"));
    let (q, kv) = (get("num_attention_heads") * get("head_dim"), get("num_key_value_heads") * get("head_dim"));
    vec![
        Case::new("qkv", dtype, hidden, q + 2 * kv, None),
        Case::new("o_proj", dtype, q, hidden, Some(residual(dtype))),
        Case::new("gate_up", dtype, hidden, 2 * inter, Some(swiglu(dtype))),
        Case::new("down", dtype, inter, hidden, Some(residual(dtype))),
        Case::new("lm_head", dtype, hidden, vocab, Some(to_f32(dtype))),
    ]
}

#[test]
fn launch_config() {
    // Split-K off (the A/B variant): one block per 128-row tile per column tile, as before.
    let gate_up = Case::new("gate_up", DType::BF16, 1024, 6144, Some(swiglu(DType::BF16))).unsplit().kernel();
    assert_eq!((gate_up.launch.block, gate_up.launch.shared_bytes), (256, 48 * 1024));
    // 3072 output columns, 64 per tile (times 2 parts): 48 column tiles; a block per tile of
    // 128 rows, at every T (1024 at most).
    let blocks: Vec<u32> = [1, 17, 129, 2048].iter().map(|&t| gate_up.launch.grid.blocks(&tokens(t))).collect();
    assert_eq!(blocks, [48, 48, 96, 768]);
    let qkv = Case::new("qkv", DType::F16, 1024, 4096, None).unsplit().kernel();
    let blocks: Vec<u32> = [1, 17, 2048, 4096].iter().map(|&t| qkv.launch.grid.blocks(&tokens(t))).collect();
    assert_eq!(blocks, [32, 32, 512, 1024]);
    // Split-K on: 48 tiles split 5 ways (264 / 48), 96 split 2 ways, 768 not at all; 32 qkv
    // tiles 8 ways (K = 1024: 32 steps of 4).
    let gate_up = Case::new("gate_up", DType::BF16, 1024, 6144, Some(swiglu(DType::BF16))).kernel();
    let blocks: Vec<u32> = [1, 17, 129, 2048].iter().map(|&t| gate_up.launch.grid.blocks(&tokens(t))).collect();
    assert_eq!(blocks, [240, 240, 192, 768]);
    let qkv = Case::new("qkv", DType::F16, 1024, 4096, None).kernel();
    let blocks: Vec<u32> = [1, 17, 2048, 4096].iter().map(|&t| qkv.launch.grid.blocks(&tokens(t))).collect();
    assert_eq!(blocks, [256, 256, 512, 1024]);
    let lm = Case::new("logits", DType::BF16, 1024, 151936, Some(to_f32(DType::BF16))).kernel();
    let blocks: Vec<u32> = [1, 17, 2048].iter().map(|&t| lm.launch.grid.blocks(&tokens(t))).collect();
    assert_eq!(blocks, [1024, 1024, 1024]);
}

/// Every published Qwen3 size's prefill GEMMs at T = 1..16, 127..129, 512, 2999: the grid is
/// a block per (tile, split) unit (1024 at most: then blocks loop over units), so the working
/// blocks are at least min(tiles x splits, 2 x 132); splits fill the target (blocks within
/// one tile count of 264, or every split K allows; none past 132 column tiles); unsplit, a
/// block per tile.
#[test]
fn every_qwen3_gemm_fills_the_gpu_at_every_t() {
    const TARGET: usize = 2 * 132;
    for size in ["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b"] {
        for case in qwen3_size(size, DType::BF16) {
            let (k, off) = (case.kernel(), Case { split_k: false, ..case }.kernel());
            let Grid::Tiles { column_tiles, max, split_k, .. } = k.launch.grid else {
                panic!("{size} {}: a GEMM has a tile grid", k.name)
            };
            // No split plan: more than 132 column tiles (or K too short), never a split.
            assert_eq!(split_k.is_none(), column_tiles > 132 || case.k < 8 * 32, "{size} {}", k.name);
            let split = split_k.unwrap_or(SplitK { k_steps: 1, min_steps: 1, target_blocks: 1 });
            let mut row = format!("{size} {:8} K {:5} N {:6}:", k.name, case.k, case.n);
            for t in (1..=16usize).chain([127, 128, 129, 512, 2999]) {
                let tiles = t.div_ceil(128) * column_tiles as usize;
                let splits = split.splits(tiles) as usize;
                let (blocks, before) = (k.launch.grid.blocks(&tokens(t)) as usize, off.launch.grid.blocks(&tokens(t)));
                let what = format!("{size} {} at T = {t}: {blocks} blocks for {tiles} tiles x {splits}", k.name);
                assert_eq!(blocks, (tiles * splits).min(max as usize), "{what}");
                let working = blocks.min(tiles * splits);
                assert!(working >= (tiles * splits).min(TARGET), "{what}");
                let most = if split_k.is_some() { (case.k / 32 / 4).max(1) } else { 1 };
                assert!(working >= (tiles * most).min(TARGET + 1 - tiles.min(TARGET)), "{what}: short of the target");
                assert!(splits == 1 || tiles * splits <= TARGET, "{what}: past one wave");
                assert_eq!(before as usize, tiles.min(max as usize), "{what}: unsplit");
                if [1, 16, 128, 512].contains(&t) {
                    row += &format!(" T={t} {before}->{blocks}");
                }
            }
            eprintln!("{row}");
        }
    }
}

#[test]
fn epilogue_addressing() {
    let out = Case::new("attn_out", DType::BF16, 2048, 1024, Some(residual(DType::BF16))).kernel();
    let src = &out.source;
    assert!(src.contains("const float in0 = smelt_load_bf16(extra0[r * 1024u + col]);"), "{src}");
    assert!(src.contains("y[r * N_OUT + col] = smelt_store_bf16(smelt_round_bf16((in0 + acc)));"), "{src}");
    assert!(src.contains("const float acc = smelt_round_bf16(sum[mi][0u * JP + jj][h * 2u + e]);"), "{src}");
    // A [1, N] extra broadcasts over the rows; x as a view of a wider tensor.
    let d = DType::F16;
    let mut scaled = Case::new("scaled", d, 256, 64, None);
    scaled.epilogue = Some(Expr::new(ExprKind::Binary(BinaryOp::Mul, acc(0, 1, d), node(ExprKind::Input(0), d)), d));
    (scaled.extras, scaled.x_view) =
        (vec![(d, shape![1, 64])], View { offset: 512, row_stride: 1024, from_last_row: false });
    let src = scaled.kernel().source;
    assert!(src.contains("const float in0 = smelt_load_f16(extra0[col]);"), "{src}");
    assert!(src.contains("X_OFFSET = 512u, X_STRIDE = 1024u"), "{src}");
    assert!(src.contains("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"), "{src}");
    // The logits: f32 output.
    let lm = Case::new("logits", DType::BF16, 1024, 151936, Some(to_f32(DType::BF16))).kernel();
    assert!(lm.source.contains("float* __restrict__ y,"), "{}", lm.source);
    assert!(lm.source.contains("y[r * N_OUT + col] = acc;"), "{}", lm.source);
}

#[test]
fn parameters_in_operand_order() {
    let k = Case::new("attn_out", DType::BF16, 2048, 1024, Some(residual(DType::BF16))).kernel();
    let x = k.source.find("__restrict__ x,").expect("x");
    let w = k.source.find("__restrict__ w,").expect("w");
    let e = k.source.find("__restrict__ extra0,").expect("extra0");
    let y = k.source.find("__restrict__ y,").expect("y");
    let step = k.source.find("__restrict__ step)").expect("step");
    assert!(x < w && w < e && e < y && y < step);
    assert!(k.source.contains("SMELT_GRID_WAIT();\n  SMELT_GRID_LAUNCH();"));
}

#[test]
#[should_panic(expected = "must be a multiple of 32")]
fn k_off_the_step_is_refused() {
    Case::new("odd_k", DType::BF16, 1000, 64, None).kernel();
}

#[test]
#[should_panic(expected = "must be a multiple of 8")]
fn n_off_the_mma_tile_is_refused() {
    Case::new("odd_n", DType::BF16, 1024, 100, None).kernel();
}

#[test]
#[should_panic(expected = "16-byte aligned")]
fn unaligned_x_view_is_refused() {
    let mut c = Case::new("odd_view", DType::BF16, 256, 64, None);
    c.x_view = View { offset: 4, row_stride: 512, from_last_row: false };
    c.kernel();
}

#[test]
#[should_panic(expected = "bf16 or f16")]
fn f32_operands_are_refused() {
    Case::new("f32", DType::F32, 256, 64, None).kernel();
}
