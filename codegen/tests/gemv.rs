//! The decode GEMV (`linear_gemv`): the Qwen3-0.6B decode projections compile with NVRTC for
//! sm_80 and sm_90 without spills; the source reads well (snapshot); and the kernel, run on
//! the host by the CUDA emulator (a fiber per CUDA thread, real barriers and warp shuffles,
//! AddressSanitizer on), computes what `ir::eval` computes for `Op::Linear`.
//!
//! Without libnvrtc (or a C++ compiler) these tests say so and pass, except under `CI=true`,
//! where a missing NVRTC is a failure (.ci/run installs it).

mod common;
#[path = "gemv/emulation.rs"]
mod emulation;

use smelt_codegen::kernels::gemv::{linear_gemv, GemvSpec};
use smelt_codegen::kernels::{Grid, Kernel, View};
use smelt_codegen::PRELUDE;
use smelt_ir::{shape, BinaryOp, DType, Dim, Expr, ExprKind, Shape, Sym};

const EPS: f32 = 1e-6;

use common::epilogues::{acc, node, residual, swiglu, to_f32};

/// One GEMV case: the spec's parts, owned.
struct Case {
    name: String,
    rows: usize,
    k: usize,
    n: usize,
    dtype: DType,
    x_view: View,
    norm: bool,
    epilogue: Option<Expr>,
    extras: Vec<(DType, Shape)>,
    out_dtype: DType,
    /// Blocks the host emulation launches, when not the kernel's own grid.
    emulated_grid: Option<u32>,
    /// The step's new tokens T: rows in x when the view reads its last row.
    new_tokens: usize,
    /// The L2-prefetch variant (issue 17 A4).
    l2_prefetch: bool,
    /// The fused ArgMax of the one row (the greedy token), over logits made to hold this.
    argmax: Option<Logits>,
    /// `rows` is the most: the step's `new_tokens` rows are computed (a GEMM's GEMV).
    rows_from_step: bool,
}

/// What the weights of an argmax case make of the logits.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Logits {
    /// Columns 5 and 190 equal and the largest (in blocks 0 and 2 of a 3-block grid): 5 wins.
    Tie,
    /// Column 150 infinite: the token is -1.
    NonFinite,
}

impl Case {
    fn new(name: &str, dtype: DType, k: usize, n: usize, norm: bool, epilogue: Option<Expr>) -> Case {
        let out_dtype = epilogue.as_ref().map_or(dtype, |e| e.dtype);
        let residual = matches!(&epilogue, Some(e) if e.to_string().contains("in0"));
        Case {
            name: format!("{name}_{dtype}"),
            rows: 1,
            k,
            n,
            dtype,
            x_view: View::contiguous(k),
            norm,
            epilogue,
            extras: if residual { vec![(dtype, shape![1, n])] } else { vec![] },
            out_dtype,
            emulated_grid: None,
            new_tokens: 1,
            l2_prefetch: false,
            argmax: None,
            rows_from_step: false,
        }
    }

    fn kernel(&self) -> Kernel {
        linear_gemv(
            &self.name,
            &GemvSpec {
                rows: self.rows,
                rows_from_step: self.rows_from_step,
                k: self.k,
                n: self.n,
                dtype: self.dtype,
                x_view: self.x_view,
                norm_eps: self.norm.then_some(EPS),
                epilogue: self.epilogue.as_ref(),
                extras: &self.extras,
                out_dtype: self.out_dtype,
                l2_prefetch: self.l2_prefetch,
                argmax: self.argmax.is_some(),
            },
        )
    }

    fn n_out(&self) -> usize {
        if self.epilogue.as_ref().is_some_and(|e| e.to_string().contains("/2]")) {
            self.n / 2
        } else {
            self.n
        }
    }
}

/// The decode projections of Qwen3-0.6B in `dtype`, as the fused decode graph has them.
fn qwen3_decode(dtype: DType) -> Vec<Case> {
    vec![
        Case::new("l00_attn_qkv_gemv", dtype, 1024, 4096, true, None),
        Case::new("l00_attn_residual_gemv", dtype, 2048, 1024, false, Some(residual(dtype))),
        Case::new("l00_mlp_gate_up_gemv", dtype, 1024, 6144, true, Some(swiglu(dtype))),
        Case::new("l00_ffn_residual_gemv", dtype, 3072, 1024, false, Some(residual(dtype))),
        Case::new("logits_f32_gemv", dtype, 1024, 151936, true, Some(to_f32(dtype))),
    ]
}

#[test]
fn qwen3_decode_gemvs_compile_for_every_arch_without_spills() {
    let Some(tc) = common::toolchain() else { return };
    let mut kernels: Vec<Kernel> =
        [DType::BF16, DType::F16].into_iter().flat_map(qwen3_decode).map(|c| c.kernel()).collect();
    // The L2-prefetch variant of each (bf16).
    kernels.extend(qwen3_decode(DType::BF16).into_iter().map(|mut c| {
        (c.name, c.l2_prefetch) = (format!("{}_l2", c.name), true);
        c.kernel()
    }));
    // The lm_head with the greedy token's argmax (f32 and 16-bit logits).
    for dtype in [DType::BF16, DType::F16] {
        for epilogue in [Some(to_f32(dtype)), None] {
            let mut case = Case::new("lm_head_argmax", dtype, 1024, 151936, true, epilogue);
            case.name = format!("{}_{}", case.name, case.out_dtype);
            case.argmax = Some(Logits::Tie);
            kernels.push(case.kernel());
        }
    }
    // A batched or prefill step's GEMVs (the GEMMs' stand-ins at few rows): 4 rows (the
    // default) and 8 (the most) of the step's, with the batch graph's epilogues (no norm).
    for (dtype, rows) in [(DType::BF16, 4), (DType::F16, 4), (DType::BF16, 8)] {
        kernels.extend(qwen3_step_rows(dtype, rows).iter().map(Case::kernel));
    }
    assert!(kernels.iter().all(|k| k.kind == "linear_gemv"));
    tc.check_all(&kernels);
}

/// The projections of Qwen3-0.6B's batched (or prefill) graph as a GEMV over the step's rows,
/// at most `rows` of them: RMSNorm is an op of its own there, and the residual is `[T, N]`.
fn qwen3_step_rows(dtype: DType, rows: usize) -> Vec<Case> {
    let residual_rows = || vec![(dtype, Shape::new([Dim::Sym(Sym::NewTokens), Dim::Fixed(1024)]))];
    let mut cases = vec![
        Case::new("qkv_gemv_rows", dtype, 1024, 4096, false, None),
        Case::new("o_residual_gemv_rows", dtype, 2048, 1024, false, Some(residual(dtype))),
        Case::new("gate_up_swiglu_gemv_rows", dtype, 1024, 6144, false, Some(swiglu(dtype))),
        Case::new("down_residual_gemv_rows", dtype, 3072, 1024, false, Some(residual(dtype))),
        Case::new("lm_head_gemv_rows", dtype, 1024, 151936, false, Some(to_f32(dtype))),
    ];
    for case in &mut cases {
        (case.name, case.rows, case.rows_from_step) = (format!("{}_{rows}", case.name), rows, true);
        if !case.extras.is_empty() {
            case.extras = residual_rows();
        }
    }
    cases
}

/// The down projection's GEMV over a step's rows (at most 4): the row count read from the
/// step, and every row loop stopping there.
#[test]
fn step_rows_source_snapshot() {
    let case = qwen3_step_rows(DType::BF16, 4).remove(3);
    let k = case.kernel();
    let body = k.source.strip_prefix(PRELUDE).expect("the source starts with the prelude");
    insta::assert_snapshot!(
        "gemv_down_step_rows_bf16",
        format!("// launch: {:?}\n// (prelude omitted)\n{body}", k.launch)
    );
    assert!(body.contains("const unsigned int rows = step->new_tokens < ROWS ? step->new_tokens : ROWS;"), "{body}");
    assert!(body.contains("const float in0 = smelt_load_bf16(extra0[r * 1024u + col]);"), "{body}");
    assert_eq!(k.launch.shared_bytes, 4 * 3072 * 2);
}

/// The lm_head with the argmax folded in: its column loop tracks each warp's best logit as
/// stored, and its last block folds the blocks' (the part after the loop).
#[test]
fn lm_head_argmax_source_snapshot() {
    let mut case = Case::new("lm_head_gemv_rmsnorm_argmax", DType::BF16, 1024, 151936, true, Some(to_f32(DType::BF16)));
    case.argmax = Some(Logits::Tie);
    let k = case.kernel();
    let body = k.source.strip_prefix(PRELUDE).expect("the source starts with the prelude");
    insta::assert_snapshot!(
        "gemv_lm_head_argmax_bf16",
        format!("// launch: {:?}\n// (prelude omitted)\n{body}", k.launch)
    );
}

#[test]
fn gate_up_source_snapshot() {
    let k = Case::new("l00_mlp_gate_up_gemv", DType::BF16, 1024, 6144, true, Some(swiglu(DType::BF16))).kernel();
    let body = k.source.strip_prefix(PRELUDE).expect("the source starts with the prelude");
    insta::assert_snapshot!("gemv_gate_up_bf16", format!("// launch: {:?}\n// (prelude omitted)\n{body}", k.launch));
}

#[test]
fn launch_and_epilogue_addressing() {
    let lm = Case::new("logits", DType::BF16, 1024, 151936, true, Some(to_f32(DType::BF16))).kernel();
    assert_eq!((lm.launch.block, lm.launch.grid.clone(), lm.launch.shared_bytes), (256, Grid::Fixed(1024), 2048));
    let gate_up = Case::new("gate_up", DType::F16, 1024, 6144, true, Some(swiglu(DType::F16))).kernel();
    assert_eq!(gate_up.launch.grid, Grid::Fixed(3072 / 8));
    // The residual is read at (row, column); a [1, N] extra is broadcast over three rows.
    let out = Case::new("attn_out", DType::BF16, 2048, 1024, false, Some(residual(DType::BF16))).kernel();
    assert!(out.source.contains("const float in0 = smelt_load_bf16(extra0[r * 1024u + col]);"), "{}", out.source);
    let d = DType::BF16;
    let mut rows3 = Case::new("rows3", d, 256, 64, false, None);
    rows3.epilogue = Some(Expr::new(ExprKind::Binary(BinaryOp::Mul, acc(0, 1, d), node(ExprKind::Input(0), d)), d));
    (rows3.rows, rows3.extras) = (3, vec![(d, shape![1, 64])]);
    let rows3 = rows3.kernel();
    assert!(rows3.source.contains("const float in0 = smelt_load_bf16(extra0[col]);"), "{}", rows3.source);
    assert_eq!(rows3.launch.shared_bytes, 3 * 256 * 2);
}

#[test]
#[should_panic(expected = "must be a multiple of 8")]
fn unaligned_k_is_refused() {
    Case::new("odd", DType::BF16, 1020, 64, false, None).kernel();
}

/// A decode GEMV loads its matrix before the grid-dependency wait (while the previous kernel
/// finishes), which is right only for a weight: a matmul by another value is refused by name
/// instead of reading it before it is written.
#[test]
fn a_gemv_reads_only_weights_before_its_wait() {
    let matmul_by = |weight: bool| {
        let mut b = smelt_ir::Builder::new();
        let x = b.input("x", DType::BF16, smelt_ir::shape![1, 64]);
        let w = if weight {
            b.weight("w", DType::BF16, smelt_ir::shape![32, 64]).unwrap()
        } else {
            b.input("w", DType::BF16, smelt_ir::shape![32, 64])
        };
        let y = b.matmul("y", x, w).unwrap();
        b.output("y", y).unwrap();
        smelt_codegen::emit(&b.finish().unwrap())
    };
    let p = matmul_by(true).expect("a matmul by a weight has a GEMV");
    assert_eq!(p.kernels[0].kind, "linear_gemv");
    let e = matmul_by(false).expect_err("a matmul by an input is refused").to_string();
    assert!(e.contains("operand 1 is not a weight") && e.contains("PDL wait"), "{e}");
}
