//! The decode GEMV: `epilogue(rmsnorm?(x) @ w^T)` for a few rows (decode: one). It is memory
//! bound, so the design serves one goal, reading each weight byte once, coalesced:
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

use std::fmt::Write;

use smelt_ir::{DType, Dim, Expr, ExprKind, Shape};

use super::{dim_expr, load, storage_type, store, Grid, Kernel, Launch, View};
use crate::expr::{f32_literal, render, Leaves, LocalNames};
use crate::PRELUDE;

const WARPS: usize = 8;
const BLOCK: usize = WARPS * 32;
/// At most this many blocks (about one wave of 256-thread blocks on an H100); past it, warps
/// loop over columns, which also spreads the prologue over more columns per block.
const MAX_BLOCKS: usize = 1024;
/// 16-byte weight vectors a lane has in flight at once (summed over the parts): enough that a
/// GEMV of 1,024 columns (one per warp) issues all its loads at once.
const LOADS_IN_FLIGHT: usize = 16;
/// Rows (M) at most: every lane keeps `rows * parts` sums in registers.
pub const GEMV_MAX_ROWS: usize = 8;
const MAX_ROWS: usize = GEMV_MAX_ROWS;
/// Dynamic shared memory without the opt-in attribute.
pub const GEMV_MAX_SHARED: usize = 48 * 1024;
const MAX_SHARED: usize = GEMV_MAX_SHARED;

/// `epilogue(rmsnorm?(x) @ w^T)` for a few rows (decode: M = 1). Operands, in the kernel's
/// parameter order: `x [M, K]` (read at `x_view`), `w [N, K]`, then `norm_w [K]` if
/// `norm_eps`, then the epilogue's extra inputs; then the output `y [M, N_out]`
/// (`N_out = N / parts` when the epilogue reads accumulator parts, else N), then the step.
pub struct GemvSpec<'a> {
    /// M (fixed; 1 for decode).
    pub rows: usize,
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
}

/// The accumulator parts an expression reads (`Acc { parts }`), and which inputs it reads.
pub(super) fn leaves(e: &Expr, parts: &mut Vec<usize>, inputs: &mut Vec<usize>) {
    match &e.kind {
        ExprKind::Acc { parts: p, .. } if !parts.contains(p) => parts.push(*p),
        ExprKind::Input(i) if !inputs.contains(i) => inputs.push(*i),
        ExprKind::Unary(_, x) | ExprKind::Cast(x) => leaves(x, parts, inputs),
        ExprKind::Binary(_, a, b) => {
            leaves(a, parts, inputs);
            leaves(b, parts, inputs);
        }
        _ => {}
    }
}

/// A matmul's epilogue, checked: its body (`acc` when there is none), how many parts the N
/// weight rows split into (`Acc { parts }`), and the extra inputs it reads, in order.
pub(super) struct Epilogue {
    pub body: Expr,
    pub parts: usize,
    pub inputs: Vec<usize>,
}

impl Epilogue {
    /// Panics (naming `name`) on an epilogue the kernels cannot run: callers check shapes first.
    pub fn of(
        name: &str,
        epilogue: Option<&Expr>,
        dtype: DType,
        n: usize,
        out_dtype: DType,
        extras: usize,
    ) -> Epilogue {
        let (mut part_counts, mut inputs) = (Vec::new(), Vec::new());
        let body = epilogue.cloned().unwrap_or_else(|| Expr::new(ExprKind::Acc { part: 0, parts: 1 }, dtype));
        leaves(&body, &mut part_counts, &mut inputs);
        inputs.sort_unstable();
        assert!(part_counts.len() <= 1, "{name}: the epilogue {body} cuts the accumulator in different ways");
        let parts = part_counts.first().copied().unwrap_or(1);
        assert!(n % parts == 0, "{name}: N = {n} does not split into {parts} parts");
        assert_eq!(
            body.dtype, out_dtype,
            "{name}: the epilogue {body} yields {}, the output is {out_dtype}",
            body.dtype
        );
        if let Some(&i) = inputs.last() {
            assert!(i < extras, "{name}: the epilogue reads input {i} of {extras} extras");
        }
        Epilogue { body, parts, inputs }
    }
}

/// `x` rounded to `dtype` (an f32 expression).
fn round(dtype: DType, x: &str) -> String {
    match dtype {
        DType::BF16 => format!("smelt_round_bf16({x})"),
        DType::F16 => format!("smelt_round_f16({x})"),
        _ => x.to_string(),
    }
}

/// The flat index of an extra input of `shape` at output coordinates `(r, col)` of
/// `[rows, n_out]`, NumPy broadcasting: size-1 dims against a wider output contribute nothing.
pub(super) fn extra_index(shape: &Shape, rows: Dim, n_out: usize, name: &str) -> String {
    let dims = shape.dims();
    let rank = dims.len();
    let out = [rows, Dim::Fixed(n_out)];
    let (mut terms, mut stride) = (Vec::new(), String::new());
    for (j, d) in dims.iter().enumerate().rev() {
        let axis = (j + 2).checked_sub(rank);
        match axis {
            Some(a) if *d != Dim::Fixed(1) || out[a] == Dim::Fixed(1) => {
                let coord = ["r", "col"][a];
                terms.push(if stride.is_empty() { coord.to_string() } else { format!("{coord} * {stride}") });
            }
            Some(_) => {}
            None => assert_eq!(*d, Dim::Fixed(1), "{name}: extra input {shape} has more dims than [M, N_out]"),
        }
        stride = if stride.is_empty() { dim_expr(*d) } else { format!("{stride} * {}", dim_expr(*d)) };
    }
    if terms.is_empty() {
        "0u".into()
    } else {
        terms.reverse();
        terms.join(" + ")
    }
}

/// The dot-product helper for one 16-byte vector pair of `dtype`, and the values per vector.
fn dot_helper(dtype: DType) -> (String, usize) {
    let (what, vec, body) = match dtype {
        DType::BF16 => (
            "the 8 bf16 pairs in a and b (two per 32-bit word, low half first)",
            8,
            "    acc += smelt_u2f(av[i] << 16) * smelt_u2f(bv[i] << 16);\n    acc += smelt_u2f(av[i] & 0xffff0000u) * smelt_u2f(bv[i] & 0xffff0000u);\n",
        ),
        DType::F16 => (
            "the 8 f16 pairs in a and b (two per 32-bit word, low half first)",
            8,
            "    acc += smelt_load_f16((unsigned short)(av[i] & 0xffffu)) * smelt_load_f16((unsigned short)(bv[i] & 0xffffu));\n    acc += smelt_load_f16((unsigned short)(av[i] >> 16)) * smelt_load_f16((unsigned short)(bv[i] >> 16));\n",
        ),
        DType::F32 => ("the 4 f32 pairs in a and b", 4, "    acc += smelt_u2f(av[i]) * smelt_u2f(bv[i]);\n"),
        DType::I32 => panic!("linear_gemv: i32 weights are not supported"),
    };
    let src = format!(
        "/* acc + the dot product of {what}, in f32. */\n\
         SMELT_FN float gemv_dot(uint4 a, uint4 b, float acc) {{\n\
         \x20 const unsigned int av[4] = {{a.x, a.y, a.z, a.w}}, bv[4] = {{b.x, b.y, b.z, b.w}};\n\
         #pragma unroll\n\
         \x20 for (int i = 0; i < 4; i++) {{\n{body}  }}\n\
         \x20 return acc;\n}}\n"
    );
    (src, vec)
}

/// Element access of a 16-byte vector of `dtype` values (the element index is a constant after
/// unrolling, so the union stays in registers).
fn elem_helpers(dtype: DType) -> String {
    let (lanes, get, set) = match dtype {
        DType::BF16 => ("unsigned short h[8]", "smelt_load_bf16(u.h[e])", "u.h[e] = smelt_store_bf16(x)"),
        DType::F16 => ("unsigned short h[8]", "smelt_load_f16(u.h[e])", "u.h[e] = smelt_store_f16(x)"),
        _ => ("float f[4]", "u.f[e]", "u.f[e] = x"),
    };
    format!(
        "/* Element e of a 16-byte vector; setting one stores x rounded to the element type. */\n\
         SMELT_FN float gemv_elem(uint4 v, unsigned int e) {{ union {{ uint4 v; {lanes}; }} u; u.v = v; return {get}; }}\n\
         SMELT_FN void gemv_set(uint4& v, unsigned int e, float x) {{ union {{ uint4 v; {lanes}; }} u; u.v = v; {set}; v = u.v; }}\n"
    )
}

const WARP_SUM: &str = "/* The sum of v over the warp, in every lane: a butterfly, so every lane adds in the same
   order and holds the same bits. */
SMELT_FN float gemv_warp_sum(float v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
  return v;
}
";

/// Emits `name(x, w, [norm_w], extra0…, y, step)` computing `spec`.
pub fn linear_gemv(name: &str, spec: &GemvSpec) -> Kernel {
    let GemvSpec { rows, k, n, dtype, x_view, norm_eps, epilogue, extras, out_dtype } = *spec;
    let (dot, vec) = dot_helper(dtype);
    let elt = dtype.size_bytes();
    assert!((1..=MAX_ROWS).contains(&rows), "{name}: linear_gemv takes 1..={MAX_ROWS} rows, not {rows}");
    assert!(k > 0 && k % vec == 0, "{name}: K = {k} must be a multiple of {vec} for 16-byte {dtype} vectors");
    assert!(
        rows * k * elt <= MAX_SHARED,
        "{name}: {rows} x {k} {dtype} rows exceed {MAX_SHARED} bytes of shared memory"
    );
    let Epilogue { body, parts, inputs } = Epilogue::of(name, epilogue, dtype, n, out_dtype, extras.len());
    let body = &body;
    let n_out = n / parts;
    let ty = storage_type(dtype);
    let kv = k / vec; // 16-byte vectors per row
    let steps = kv.div_ceil(32); // vectors per lane per row
    let batch = (1..=(LOADS_IN_FLIGHT / parts).max(1)).rev().find(|b| steps % b == 0).unwrap_or(1);

    let mut s = String::from(PRELUDE);
    s.push_str(&dot);
    s.push_str(&elem_helpers(dtype));
    s.push_str(WARP_SUM);
    let mut params = vec![format!("const {ty}* __restrict__ x"), format!("const {ty}* __restrict__ w")];
    if norm_eps.is_some() {
        params.push(format!("const {ty}* __restrict__ norm_w"));
    }
    for (i, (d, _)) in extras.iter().enumerate() {
        params.push(format!("const {}* __restrict__ extra{i}", storage_type(*d)));
    }
    params.push(format!("{}* __restrict__ y", storage_type(out_dtype)));
    params.push("const smelt_step* __restrict__ step".into());
    let norm = norm_eps.map_or(String::new(), |e| format!("rmsnorm(eps = {e:e}) "));
    let _ = writeln!(s, "/* {name}: y[{rows}, {n_out}] = {body} over acc = {norm}x[{rows}, {k}] @ w[{n}, {k}]^T. */");
    let _ = writeln!(
        s,
        "extern \"C\" __global__ void __launch_bounds__({BLOCK}) {name}(\n    {}) {{",
        params.join(",\n    ")
    );
    let _ = writeln!(s, "  constexpr unsigned int ROWS = {rows}u, K = {k}u, N_OUT = {n_out}u, PARTS = {parts}u;");
    let _ = writeln!(s, "  constexpr unsigned int WARPS = {WARPS}u, BLOCK = {BLOCK}u, VEC = {vec}u;");
    if x_view.from_last_row {
        // The rows start at the step's last new token (the last position of a prefill).
        let _ = writeln!(s, "  constexpr unsigned int X_STRIDE = {}u;", x_view.row_stride);
        let _ = writeln!(
            s,
            "  const unsigned long long X_OFFSET = {}ull + (unsigned long long)(step->new_tokens - 1u) * X_STRIDE;",
            x_view.offset
        );
    } else {
        let _ =
            writeln!(s, "  constexpr unsigned int X_OFFSET = {}u, X_STRIDE = {}u;", x_view.offset, x_view.row_stride);
    }
    let _ = writeln!(s, "  /* K as 16-byte vectors of {vec} values; lane l takes vectors l, l + 32, ... of each row,");
    let _ = writeln!(s, "     BATCH at a time, so that BATCH x PARTS weight loads are in flight together. */");
    let _ = writeln!(s, "  constexpr unsigned int KV = {kv}u, STEPS = {steps}u, BATCH = {batch}u;");
    let seen = if norm_eps.is_some() { "normalized, in" } else { "in" };
    let _ = writeln!(s, "  /* The input rows as the matmul sees them ({seen} {dtype}), shared by the warps. */");
    let _ = writeln!(s, "  extern __shared__ uint4 xs_vec[];");
    let _ = writeln!(s, "  {ty}* xs = ({ty}*)xs_vec;");
    let _ = writeln!(s, "  const unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;");
    // The last step is partial only when KV is not a multiple of 32: guard it then only.
    let (guard, zero) = if kv % 32 == 0 { ("", "") } else { ("i < KV ? ", " : uint4{0u, 0u, 0u, 0u}") };
    s.push_str("  const unsigned int stride = gridDim.x * WARPS;\n");
    let _ = writeln!(s, "  unsigned int col = blockIdx.x * WARPS + warp;");
    s.push_str("  /* Part p of a column's accumulator is weight row p * N_OUT + col. */\n");
    s.push_str("  uint4 wb[BATCH][PARTS];\n");
    let _ = writeln!(s, "#define GEMV_LOAD_BATCH(s0) \\");
    let _ = writeln!(s, "  _Pragma(\"unroll\") for (unsigned int b = 0; b < BATCH; b++) \\");
    let _ = writeln!(s, "    _Pragma(\"unroll\") for (unsigned int p = 0; p < PARTS; p++) {{ \\");
    let _ = writeln!(s, "      const unsigned int i = ((s0) + b) * 32u + lane; \\");
    let _ = writeln!(
        s,
        "      wb[b][p] = {guard}((const uint4*)(w + (unsigned long long)(p * N_OUT + col) * K))[i]{zero}; \\"
    );
    let _ = writeln!(s, "    }}");
    s.push_str("  /* Weights are constants: the first batch of this warp's first column loads before the\n");
    s.push_str("     wait, overlapping the previous kernel's tail (see SMELT_GRID_WAIT). */\n");
    s.push_str("  if (col < N_OUT) {\n    GEMV_LOAD_BATCH(0u)\n  }\n");
    // x (and the norm weight) as 16-byte vectors when the view keeps them aligned.
    let vector_x = x_view.offset % vec == 0 && x_view.row_stride % vec == 0;
    let xpt = kv.div_ceil(BLOCK);
    match norm_eps {
        Some(eps) if vector_x => {
            let _ = writeln!(s, "  constexpr unsigned int XPT = {xpt}u; /* x vectors per thread and row */");
            s.push_str("  uint4 nw[XPT];\n#pragma unroll\n");
            s.push_str(
                "  for (unsigned int j = 0; j < XPT; j++) {\n    const unsigned int v = threadIdx.x + j * BLOCK;\n",
            );
            s.push_str("    if (v < KV) nw[j] = ((const uint4*)norm_w)[v];\n  }\n");
            s.push_str("  SMELT_GRID_WAIT();\n  SMELT_GRID_LAUNCH();\n");
            s.push_str(
                "  /* RMSNorm prologue, as HF's Qwen3RMSNorm: in f32, cast to storage, then times the weight. */\n",
            );
            let _ = writeln!(s, "  __shared__ float warp_ss[WARPS];");
            s.push_str("  for (unsigned int r = 0; r < ROWS; r++) {\n    uint4 xr[XPT];\n    float ss = 0.0f;\n#pragma unroll\n");
            s.push_str(
                "    for (unsigned int j = 0; j < XPT; j++) {\n      const unsigned int v = threadIdx.x + j * BLOCK;\n",
            );
            s.push_str("      if (v >= KV) continue;\n");
            s.push_str("      xr[j] = ((const uint4*)(x + X_OFFSET + r * X_STRIDE))[v];\n#pragma unroll\n");
            s.push_str("      for (unsigned int e = 0; e < VEC; e++) { const float f = gemv_elem(xr[j], e); ss += f * f; }\n    }\n");
            s.push_str("    ss = gemv_warp_sum(ss);\n    if (lane == 0u) warp_ss[warp] = ss;\n    __syncthreads();\n");
            s.push_str("    /* Every thread sums the warps' partials in one order: one value of inv per row. */\n");
            s.push_str("    ss = 0.0f;\n    for (unsigned int i = 0; i < WARPS; i++) ss += warp_ss[i];\n");
            let _ = writeln!(s, "    const float inv = 1.0f / sqrtf(ss / (float)K + {});", f32_literal(eps));
            s.push_str("#pragma unroll\n    for (unsigned int j = 0; j < XPT; j++) {\n      const unsigned int v = threadIdx.x + j * BLOCK;\n");
            s.push_str("      if (v >= KV) continue;\n      uint4 o;\n#pragma unroll\n      for (unsigned int e = 0; e < VEC; e++) {\n");
            let _ = writeln!(s, "        const float xn = {};", round(dtype, "gemv_elem(xr[j], e) * inv"));
            s.push_str(
                "        gemv_set(o, e, gemv_elem(nw[j], e) * xn);\n      }\n      xs_vec[r * KV + v] = o;\n    }\n",
            );
            s.push_str("    /* warp_ss is reused by the next row; after the last, xs is complete. */\n");
            s.push_str("    __syncthreads();\n  }\n");
        }
        Some(eps) => {
            let xr = |k: &str| load(dtype, "x", &format!("X_OFFSET + r * X_STRIDE + {k}"));
            s.push_str("  SMELT_GRID_WAIT();\n  SMELT_GRID_LAUNCH();\n");
            s.push_str(
                "  /* RMSNorm prologue, as HF's Qwen3RMSNorm: in f32, cast to storage, then times the weight. */\n",
            );
            let _ = writeln!(s, "  __shared__ float warp_ss[{WARPS}];");
            s.push_str("  for (unsigned int r = 0; r < ROWS; r++) {\n    float ss = 0.0f;\n");
            let _ = writeln!(s, "    for (unsigned int k = threadIdx.x; k < K; k += {BLOCK}u) {{");
            let _ = writeln!(s, "      const float v = {};\n      ss += v * v;\n    }}", xr("k"));
            s.push_str("    ss = gemv_warp_sum(ss);\n    if (lane == 0u) warp_ss[warp] = ss;\n    __syncthreads();\n");
            s.push_str("    /* Every thread sums the warps' partials in one order: one value of inv per row. */\n");
            let _ = writeln!(s, "    ss = 0.0f;\n    for (unsigned int i = 0; i < {WARPS}u; i++) ss += warp_ss[i];");
            let _ = writeln!(s, "    const float inv = 1.0f / sqrtf(ss / (float)K + {});", f32_literal(eps));
            let _ = writeln!(s, "    for (unsigned int k = threadIdx.x; k < K; k += {BLOCK}u) {{");
            let _ = writeln!(s, "      const float xn = {};", round(dtype, &format!("{} * inv", xr("k"))));
            let _ = writeln!(
                s,
                "      {}",
                store(dtype, "xs", "r * K + k", &format!("{} * xn", load(dtype, "norm_w", "k")))
            );
            s.push_str("    }\n    /* warp_ss is reused by the next row; after the last, xs is complete. */\n");
            s.push_str("    __syncthreads();\n  }\n");
        }
        None if vector_x => {
            s.push_str("  SMELT_GRID_WAIT();\n  SMELT_GRID_LAUNCH();\n");
            let _ = writeln!(s, "  for (unsigned int i = threadIdx.x; i < ROWS * KV; i += {BLOCK}u) {{");
            s.push_str("    const unsigned int r = i / KV, v = i % KV;\n");
            s.push_str("    xs_vec[i] = ((const uint4*)(x + X_OFFSET + r * X_STRIDE))[v];\n  }\n  __syncthreads();\n");
        }
        None => {
            s.push_str("  SMELT_GRID_WAIT();\n  SMELT_GRID_LAUNCH();\n");
            let _ = writeln!(s, "  for (unsigned int i = threadIdx.x; i < ROWS * K; i += {BLOCK}u) {{");
            s.push_str("    const unsigned int r = i / K, k = i % K;\n");
            s.push_str("    xs[i] = x[X_OFFSET + r * X_STRIDE + k];\n  }\n  __syncthreads();\n");
        }
    }
    s.push_str("  const uint4* xv = (const uint4*)xs; /* row r's vector i is xv[r * KV + i] */\n");
    s.push_str("  bool prefetched = col < N_OUT;\n");
    s.push_str("  for (; col < N_OUT; col += stride) {\n");
    s.push_str("    float sum[ROWS][PARTS] = {};\n");
    s.push_str("    for (unsigned int s0 = 0; s0 < STEPS; s0 += BATCH) {\n");
    s.push_str("      if (!prefetched) {\n        GEMV_LOAD_BATCH(s0)\n      }\n      prefetched = false;\n");
    s.push_str("#pragma unroll\n      for (unsigned int b = 0; b < BATCH; b++) {\n");
    s.push_str("        const unsigned int i = (s0 + b) * 32u + lane;\n#pragma unroll\n");
    s.push_str("        for (unsigned int r = 0; r < ROWS; r++) {\n");
    let _ = writeln!(s, "          const uint4 a = {guard}xv[r * KV + i]{zero};\n#pragma unroll");
    s.push_str("          for (unsigned int p = 0; p < PARTS; p++) sum[r][p] = gemv_dot(a, wb[b][p], sum[r][p]);\n");
    s.push_str(
        "        }\n      }\n    }\n#pragma unroll\n    for (unsigned int r = 0; r < ROWS; r++) {\n#pragma unroll\n",
    );
    s.push_str("      for (unsigned int p = 0; p < PARTS; p++) sum[r][p] = gemv_warp_sum(sum[r][p]);\n    }\n");
    let _ = writeln!(s, "    /* Epilogue, lane r for row r: the accumulator rounded to {dtype} as the matmul's output is, then the fused body. */");
    s.push_str("#pragma unroll\n    for (unsigned int r = 0; r < ROWS; r++) {\n      if (lane != r) continue;\n");
    for p in 0..parts {
        let name = LocalNames.acc(p, parts);
        let _ = writeln!(s, "      const float {name} = {};", round(dtype, &format!("sum[r][{p}]")));
    }
    for &i in &inputs {
        let (d, shape) = &extras[i];
        let idx = extra_index(shape, Dim::Fixed(rows), n_out, name);
        let _ = writeln!(s, "      const float in{i} = {};", load(*d, &format!("extra{i}"), &idx));
    }
    let _ = writeln!(s, "      {}", store(out_dtype, "y", "r * N_OUT + col", &render(body, &LocalNames)));
    s.push_str("    }\n  }\n}\n");
    let blocks = n_out.div_ceil(WARPS).clamp(1, MAX_BLOCKS) as u32;
    Kernel {
        name: name.to_string(),
        kind: "linear_gemv",
        source: s,
        launch: Launch { block: BLOCK as u32, grid: Grid::Fixed(blocks), shared_bytes: (rows * k * elt) as u32 },
    }
}
