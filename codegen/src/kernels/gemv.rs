//! The decode GEMV: `epilogue(rmsnorm?(x) @ w^T)` for a few rows (decode: one; a prefill or
//! batched step of few rows: the step's T, in place of the GEMM). It is memory bound, so the
//! design serves one goal, reading each weight byte once, coalesced:
//!
//! - a block of 8 warps first stages its input rows in shared memory, normalized (when the op
//!   has the RMSNorm prologue) and rounded exactly where `ir::eval` rounds them;
//! - each warp then owns one output column at a time: it reads the column's weight rows (one
//!   per accumulator part) in 16-byte vectors, lane `l` taking vectors `l, l + 32, …`, so a warp
//!   reads 512 contiguous bytes per load; sums are f32, combined with `__shfl_xor_sync`;
//! - one lane per row rounds the accumulators to storage, applies the epilogue and stores.
//!
//! The staged rows are kept in the storage dtype, not f32: the normalized row is rounded to it
//! anyway (`round(norm_w * round(x * inv))`), so this is exact, takes half the shared memory,
//! and each 16-byte weight vector meets one 16-byte, bank-conflict-free vector of `x`.

use smelt_ir::{DType, Dim, Expr, Shape, Sym};

use super::epilogue::{round, Epilogue};
use super::{load, storage_type, store, Grid, Kernel, Launch, Params, Scratch, View, GRID_WAIT};
use crate::expr::f32_literal;
use crate::{Template, PRELUDE};

const WARPS: usize = 8;
const BLOCK: usize = WARPS * 32;
/// At most this many blocks (about one wave of 256-thread blocks on an H100); past it, warps
/// loop over columns, which also spreads the prologue over more columns per block.
const MAX_BLOCKS: usize = 1024;
/// 16-byte weight vectors a lane has in flight at once (summed over the parts): enough that a
/// GEMV of 1,024 columns (one per warp) issues all its loads at once.
const LOADS_IN_FLIGHT: usize = 16;
/// Rows (M) at most: every lane keeps `rows * parts` sums in registers.
const MAX_ROWS: usize = 8;
/// Dynamic shared memory without the opt-in attribute.
const MAX_SHARED: usize = 48 * 1024;

/// `epilogue(rmsnorm?(x) @ w^T)` for a few rows (decode: M = 1). Operands, in the kernel's
/// parameter order: `x [M, K]` (read at `x_view`), `w [N, K]`, then `norm_w [K]` if
/// `norm_eps`, then the epilogue's extra inputs; then the output `y [M, N_out]`
/// (`N_out = N / parts` when the epilogue reads accumulator parts, else N), then the step.
pub struct GemvSpec<'a> {
    /// M (1 for decode); with `rows_from_step`, the most rows the kernel takes.
    pub rows: usize,
    /// The rows are the step's T new tokens (at most `rows`; the runtime launches the kernel
    /// only then): the GEMV a prefill or batched step of few rows runs instead of the GEMM.
    /// Shared memory and registers are sized for `rows`; rows past T are neither read nor
    /// written.
    pub rows_from_step: bool,
    pub k: usize,
    /// The weight is `[n, k]`.
    pub n: usize,
    /// Of x, w, norm_w and the accumulator's storage (bf16, f16 or f32).
    pub dtype: DType,
    /// How x rows are addressed (a slice of a wider tensor is a view).
    pub x_view: View,
    pub norm_eps: Option<f32>,
    pub epilogue: Option<&'a Expr>,
    /// The epilogue's inputs (contiguous), broadcast against `[M, N_out]`.
    pub extras: &'a [(DType, Shape)],
    pub out_dtype: DType,
    /// Before its wait, each warp also prefetches into L2 every weight row it will read
    /// (`Variants::l2_prefetch`).
    pub l2_prefetch: bool,
    /// Also the ArgMax of the one output row, as the argmax kernel computes it (the greedy
    /// token): the parameters go on `logits_in` (the output again, unused: the argmax's
    /// operand), `int* greedy`, a scratch buffer and one arrival counter (see [`linear_gemv`]).
    pub argmax: bool,
}

/// The `l2_prefetch` variant, after the first batch's loads: the lines of every weight row this
/// warp reads, into L2 while the previous kernel finishes (a 0.6B layer's 31.5 MB fit an H200's
/// 50 MB L2), so the loads after the wait hit L2 instead of HBM.
const L2_PREFETCH: &str = "
  for (unsigned int c = col; c < N_OUT; c += stride)
#pragma unroll
    for (unsigned int p = 0; p < PARTS; p++)
      for (unsigned int line = lane; line * 128u < K * sizeof(*w); line += 32u)
        SMELT_PREFETCH_L2((const char*)(w + (unsigned long long)(p * N_OUT + c) * K) + line * 128u);";

/// The dot-product helper of one 16-byte vector pair of `dtype`: what it sums (for its
/// comment), its loop body, and the values per vector.
fn dot_helper(dtype: DType) -> (&'static str, &'static str, usize) {
    match dtype {
        DType::BF16 => (
            "the 8 bf16 pairs in a and b (two per 32-bit word, low half first)",
            "    acc += smelt_u2f(av[i] << 16) * smelt_u2f(bv[i] << 16);\n    acc += smelt_u2f(av[i] & 0xffff0000u) * smelt_u2f(bv[i] & 0xffff0000u);",
            8,
        ),
        DType::F16 => (
            "the 8 f16 pairs in a and b (two per 32-bit word, low half first)",
            "    acc += smelt_load_f16((unsigned short)(av[i] & 0xffffu)) * smelt_load_f16((unsigned short)(bv[i] & 0xffffu));\n    acc += smelt_load_f16((unsigned short)(av[i] >> 16)) * smelt_load_f16((unsigned short)(bv[i] >> 16));",
            8,
        ),
        DType::F32 => ("the 4 f32 pairs in a and b", "    acc += smelt_u2f(av[i]) * smelt_u2f(bv[i]);", 4),
        DType::I32 => panic!("linear_gemv: i32 weights are not supported"),
    }
}

/// Element access of a 16-byte vector of `dtype` values: the union's lanes, reading element
/// `e`, and setting it to `x` (the element index is a constant after unrolling, so the union
/// stays in registers).
fn elem_access(dtype: DType) -> (&'static str, &'static str, &'static str) {
    match dtype {
        DType::BF16 => ("unsigned short h[8]", "smelt_load_bf16(u.h[e])", "u.h[e] = smelt_store_bf16(x)"),
        DType::F16 => ("unsigned short h[8]", "smelt_load_f16(u.h[e])", "u.h[e] = smelt_store_f16(x)"),
        _ => ("float f[4]", "u.f[e]", "u.f[e] = x"),
    }
}

/// The helpers (dot product, vector element access), then the entry point:
/// `$PROLOGUE` stages the input rows in shared memory (one of the prologues below, which
/// holds the PDL wait), `$EPILOGUE` computes and stores element `(r, col)` from `sum[r][p]`.
const TEMPLATE: Template = Template::new("gemv.cu", include_str!("gemv.cu"));
/// The prologues: with or without the RMSNorm, reading x as 16-byte vectors (when the view
/// keeps them aligned) or value by value.
const RMSNORM_VEC: Template = prologue("gemv_rmsnorm_vec.cu", include_str!("gemv_rmsnorm_vec.cu"));
const RMSNORM: Template = prologue("gemv_rmsnorm.cu", include_str!("gemv_rmsnorm.cu"));
const STAGE_VEC: Template = prologue("gemv_stage_vec.cu", include_str!("gemv_stage_vec.cu"));
const STAGE: Template = prologue("gemv_stage.cu", include_str!("gemv_stage.cu"));

/// A prologue fills the `$PROLOGUE` line of `gemv.cu`, which ends the line: its file's last
/// newline is dropped.
const fn prologue(name: &'static str, text: &'static str) -> Template {
    Template::new(name, text.trim_ascii_end())
}

/// Why a GEMV of `rows` rows of K = `k` in `dtype` has no kernel (None: it has one), stated
/// once: a code generator refuses cleanly with it, `linear_gemv` panics with it. x rows are
/// staged whole in shared memory, and read as 16-byte vectors.
pub fn gemv_unsupported(rows: usize, k: usize, dtype: DType) -> Option<String> {
    let bytes = k * dtype.size_bytes();
    if !(1..=MAX_ROWS).contains(&rows) {
        Some(format!("a GEMV of {rows} rows (1 to {MAX_ROWS})"))
    } else if k == 0 || bytes % 16 != 0 {
        let vector = 16 / dtype.size_bytes();
        Some(format!("K = {k} in {dtype} (it must be a multiple of {vector}, for 16-byte vectors)"))
    } else if rows * bytes > MAX_SHARED {
        Some(format!("{rows} rows of K = {k} in {dtype} (more than {MAX_SHARED} bytes of shared memory)"))
    } else {
        None
    }
}

/// Emits `name(x, w, [norm_w], extra0…, y, step)` computing `spec`.
pub fn linear_gemv(name: &str, spec: &GemvSpec) -> Kernel {
    let GemvSpec {
        rows,
        rows_from_step,
        k,
        n,
        dtype,
        x_view,
        norm_eps,
        epilogue,
        extras,
        out_dtype,
        l2_prefetch,
        argmax,
    } = *spec;
    if let Some(why) = gemv_unsupported(rows, k, dtype) {
        panic!("{name}: linear_gemv has no kernel for {why} (check gemv_unsupported first)");
    }
    assert!(!argmax || (rows == 1 && !rows_from_step), "{name}: the fused argmax takes one row, not {rows}");
    assert!(!rows_from_step || !x_view.from_last_row, "{name}: the step's rows cannot be its last row");
    let (dot_what, dot_body, vec) = dot_helper(dtype);
    let fused = Epilogue::of(name, epilogue, dtype, n, out_dtype, extras.len());
    let (body, parts) = (&fused.body, fused.parts);
    let n_out = n / parts;
    let ty = storage_type(dtype);
    let kv = k / vec; // 16-byte vectors per row
    let steps = kv.div_ceil(32); // vectors per lane per row
                                 // Loads in flight per lane: a batch that divides the steps needs no guard, but the
                                 // largest divisor can be far below what may be in flight (Qwen3-4B's down_proj: 38 steps,
                                 // 2 at a time); under half of it, the batch is the most allowed and the last one, past K,
                                 // is guarded.
    let most = (LOADS_IN_FLIGHT / parts).min(steps).max(1);
    let divisor = (1..=most).rev().find(|b| steps % b == 0).unwrap_or(1);
    let batch = if 2 * divisor >= most { divisor } else { most };
    let (lanes, elem_get, elem_set) = elem_access(dtype);

    let norm = norm_eps.map_or(String::new(), |e| format!("rmsnorm(eps = {e:e}) "));
    // Loads can pass K only in a partial last step (KV not a multiple of 32) or a partial
    // last batch: guard them then only.
    let exact = kv % 32 == 0 && steps % batch == 0;
    let (guard, zero) = if exact { ("", "") } else { ("i < KV ? ", " : uint4{0u, 0u, 0u, 0u}") };

    // x (and the norm weight) as 16-byte vectors when the view keeps them aligned.
    let vector_x = x_view.offset % vec == 0 && x_view.row_stride % vec == 0;
    let (block, warps) = (BLOCK.to_string(), WARPS.to_string());
    let prologue = staging_prologue(dtype, kv, norm_eps, vector_x);
    let epi = fused.statements(
        "      ",
        |p| format!("sum[r][{p}]"),
        (dtype, out_dtype),
        extras,
        (if rows_from_step { Dim::Sym(Sym::NewTokens) } else { Dim::Fixed(rows) }, n_out),
        name,
    );
    let (rows_now, rows_what) = if rows_from_step {
        ("step->new_tokens < ROWS ? step->new_tokens : ROWS", "the step's new tokens, at most ROWS")
    } else {
        ("ROWS", "all ROWS")
    };

    let kernel = TEMPLATE.fill(&[
        ("DOT_WHAT", dot_what),
        ("DOT_BODY", dot_body),
        ("LANES", lanes),
        ("ELEM_GET", elem_get),
        ("ELEM_SET", elem_set),
        ("NAME", name),
        ("ROWS", &rows.to_string()),
        ("M", &if rows_from_step { format!("T <= {rows}") } else { rows.to_string() }),
        ("ROWS_NOW", rows_now),
        ("ROWS_WHAT", rows_what),
        ("N_OUT", &n_out.to_string()),
        ("EPILOGUE_TEXT", &body.to_string()),
        ("NORM_TEXT", &norm),
        ("K", &k.to_string()),
        ("N", &n.to_string()),
        ("BLOCK", &block),
        ("PARAMS", &params(spec).join(",\n    ")),
        ("PARTS", &parts.to_string()),
        ("WARPS", &warps),
        ("VEC", &vec.to_string()),
        ("X_VIEW", &x_view_text(x_view)),
        ("KV", &kv.to_string()),
        ("STEPS", &steps.to_string()),
        ("BATCH", &batch.to_string()),
        ("SEEN", if norm_eps.is_some() { "normalized, in" } else { "in" }),
        ("DTYPE", &dtype.to_string()),
        ("STORAGE", ty),
        ("GUARD", guard),
        ("ZERO", zero),
        ("PROLOGUE", &prologue),
        ("L2_PREFETCH", if l2_prefetch { L2_PREFETCH } else { "" }),
        ("EPILOGUE", &epi.join("\n")),
        ("ARGMAX_DECL", if argmax { ARGMAX_DECL } else { "" }),
        ("ARGMAX_TRACK", &if argmax { argmax_track(out_dtype) } else { String::new() }),
        ("ARGMAX_MERGE", if argmax { ARGMAX_MERGE.trim_ascii_end() } else { "" }),
    ]);
    let blocks = n_out.div_ceil(WARPS).clamp(1, MAX_BLOCKS) as u32;
    // One (value, index) pair of f32 words per block, one arrival counter.
    let params = if argmax {
        let writer_grid = Grid::Fixed(blocks);
        Params::SplitK {
            scratch: Scratch { header_bytes: 0, item_bytes: 8, writer_grid, min_items_per_token: 0 },
            counters: 1,
        }
    } else {
        Params::Standard
    };
    Kernel {
        name: name.to_string(),
        kind: "linear_gemv",
        source: format!("{PRELUDE}{kernel}"),
        launch: Launch {
            block: BLOCK as u32,
            grid: Grid::Fixed(blocks),
            shared_bytes: (rows * k * dtype.size_bytes()) as u32,
        },
        params,
    }
}

/// The fused argmax's part before the column loop: this warp's best so far (lane 0, the one
/// row's), none yet being -inf at an index past the end.
const ARGMAX_DECL: &str = "
  const float NONE_V = smelt_u2f(0xff800000u);
  const int NONE_I = 0x7fffffff;
  float best_v = NONE_V;
  int best_i = NONE_I;";

/// The fused argmax's part after the column loop: the block's best, then the last block's fold.
const ARGMAX_MERGE: &str = include_str!("gemv_argmax.cu");

/// The fused argmax's part after a column's epilogue: the logit as stored, read back (what
/// the argmax op reads), against the warp's best.
fn argmax_track(out_dtype: DType) -> String {
    format!(
        "
      {{
        const float v = {};
        const int i = fabsf(v) <= 3.402823466e+38f ? (int)col : -1;
        if (smelt_argmax_better(v, i, best_v, best_i)) {{ best_v = v; best_i = i; }}
      }}",
        load(out_dtype, "y", "r * N_OUT + col")
    )
}

/// The kernel's parameters: `x, w, [norm_w], extra0…, y, [logits_in, greedy, scratch,
/// counters,] step`.
fn params(spec: &GemvSpec) -> Vec<String> {
    let ty = storage_type(spec.dtype);
    let mut params = vec![format!("const {ty}* __restrict__ x"), format!("const {ty}* __restrict__ w")];
    if spec.norm_eps.is_some() {
        params.push(format!("const {ty}* __restrict__ norm_w"));
    }
    for (i, (d, _)) in spec.extras.iter().enumerate() {
        params.push(format!("const {}* __restrict__ extra{i}", storage_type(*d)));
    }
    params.push(format!("{}* __restrict__ y", storage_type(spec.out_dtype)));
    if spec.argmax {
        params.push(format!("const {}* logits_in", storage_type(spec.out_dtype)));
        params.push("int* __restrict__ greedy".into());
        params.push("float* __restrict__ scratch".into());
        params.push("unsigned int* __restrict__ counters".into());
    }
    params.push("const smelt_step* __restrict__ step".into());
    params
}

/// `X_OFFSET` and `X_STRIDE`: where row r of x starts.
fn x_view_text(View { offset, row_stride, from_last_row }: View) -> String {
    if from_last_row {
        // The rows start at the step's last new token (the last position of a prefill).
        format!(
            "  constexpr unsigned int X_STRIDE = {row_stride}u;\n  const unsigned long long X_OFFSET = {offset}ull + (unsigned long long)(step->new_tokens - 1u) * X_STRIDE;"
        )
    } else {
        format!("  constexpr unsigned int X_OFFSET = {offset}u, X_STRIDE = {row_stride}u;")
    }
}

/// The prologue that stages x's rows in shared memory (`kv` 16-byte vectors per row),
/// normalized when `norm_eps` is set, read as vectors when `vector_x`.
fn staging_prologue(dtype: DType, kv: usize, norm_eps: Option<f32>, vector_x: bool) -> String {
    let (block, warps) = (BLOCK.to_string(), WARPS.to_string());
    match norm_eps {
        Some(eps) if vector_x => RMSNORM_VEC.fill(&[
            ("XPT", &kv.div_ceil(BLOCK).to_string()),
            ("GRID_WAIT", GRID_WAIT),
            ("EPS", &f32_literal(eps)),
            ("XN", &round(dtype, "gemv_elem(xr[j], e) * inv")),
        ]),
        Some(eps) => {
            let xk = load(dtype, "x", "X_OFFSET + r * X_STRIDE + k");
            RMSNORM.fill(&[
                ("GRID_WAIT", GRID_WAIT),
                ("WARPS", &warps),
                ("BLOCK", &block),
                ("X_K", &xk),
                ("EPS", &f32_literal(eps)),
                ("XN", &round(dtype, &format!("{xk} * inv"))),
                ("STORE_XS", &store(dtype, "xs", "r * K + k", &format!("{} * xn", load(dtype, "norm_w", "k")))),
            ])
        }
        None if vector_x => STAGE_VEC.fill(&[("GRID_WAIT", GRID_WAIT), ("BLOCK", &block)]),
        None => STAGE.fill(&[("GRID_WAIT", GRID_WAIT), ("BLOCK", &block)]),
    }
}
