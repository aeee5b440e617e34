//! ArgMax over the last axis (greedy sampling from the logits), one block per row.
//!
//! The answer is the first index of the largest value, or -1 when the row holds a NaN or an
//! infinity (`Op::ArgMax`): the runtime reads -1 with the token and fails the step, so broken
//! logits cost no extra check or transfer. The parallel version keeps (value, index) pairs
//! ordered by value, then lower index; a non-finite value enters as index -1, which beats
//! everything.

use std::fmt::Write;

use smelt_ir::{DType, Dim, Shape};

use super::norm::{vector_elems, Access};
use super::{dim_expr, load, storage_type, Grid, Kernel, Launch};
use crate::PRELUDE;

/// Grid-stride over rows: no launch needs more blocks than this.
const MAX_BLOCKS: u32 = 65535;
/// The index of "no value yet": past any real index, so a real value wins every tie with it.
const NONE: &str = "0x7fffffff";

/// ArgMax: operand `x [rows, v]` (f32, bf16 or f16); output `i32 [rows]`.
pub fn argmax(name: &str, rows: Dim, v: usize, dtype: DType) -> Kernel {
    assert!(dtype.is_float(), "argmax over {dtype} is not supported");
    assert!(v > 0 && v < i32::MAX as usize, "argmax over {v} elements");
    let st = storage_type(dtype);
    let vec = vector_elems(dtype, 16, &[v]);
    let a = Access::new(dtype, vec, vec);
    let chunks = v / vec;
    // A long row (the vocabulary) gets the biggest block: one row is the whole decode step.
    let block = (chunks.div_ceil(32) * 32).clamp(32, 1024) as u32;
    let warps = block / 32;
    let mut s = String::from(PRELUDE);
    s.push_str(concat!(
        "/* ArgMax as ir::eval's: the first index of the largest value; -1 for a row holding a NaN\n",
        "   or an infinity. */\n",
        "/* Whether (v, i) beats (bv, bi): a non-finite value (i = -1) beats all, then larger, then\n",
        "   equal and earlier. */\n",
        "SMELT_FN bool smelt_argmax_better(float v, int i, float bv, int bi) {\n",
        "  if (bi < 0) return false;\n",
        "  if (i < 0) return true;\n",
        "  return v > bv || (v == bv && i < bi);\n",
        "}\n",
        "/* Folds the lanes' candidates together; every lane ends with the warp's winner. */\n",
        "SMELT_FN void smelt_argmax_warp(float& bv, int& bi) {\n",
        "  for (int o = 16; o > 0; o >>= 1) {\n",
        "    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);\n",
        "    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);\n",
        "    if (smelt_argmax_better(ov, oi, bv, bi)) { bv = ov; bi = oi; }\n",
        "  }\n",
        "}\n",
    ));
    let _ = writeln!(
        s,
        "/* Rows of {v}: thread k reads words k, k + {block}, ... of {vec} elements, so a warp's loads are contiguous. */"
    );
    let _ = writeln!(s, "extern \"C\" __global__ void __launch_bounds__({block}) {name}(");
    let _ = writeln!(
        s,
        "    const {st}* __restrict__ x,\n    int* __restrict__ y,\n    const smelt_step* __restrict__ step) {{"
    );
    let _ = writeln!(s, "  __shared__ float warp_v[{warps}];\n  __shared__ int warp_i[{warps}];");
    let _ = writeln!(
        s,
        "  const unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, rows = {};",
        dim_expr(rows)
    );
    s.push_str("  /* No value yet: -inf at an index past the end, which any real value (-inf too) beats. */\n");
    let _ = writeln!(s, "  const float none_v = smelt_u2f(0xff800000u);\n  const int none_i = {NONE};");
    s.push_str("  for (unsigned int row = blockIdx.x; row < rows; row += gridDim.x) {\n");
    let _ = writeln!(s, "    const {st}* xr = x + (unsigned long long)row * {v}u;");
    s.push_str("    float bv = none_v;\n    int bi = none_i;\n");
    s.push_str(
        "    /* Unrolled so that several loads are in flight: one block reads the whole row. */\n#pragma unroll 4\n",
    );
    let _ = writeln!(s, "    for (unsigned int c = threadIdx.x; c < {chunks}u; c += {block}u) {{");
    let _ = writeln!(s, "      {}", a.decl("xv"));
    s.push_str(&a.load("      ", "xv", "xr", &format!("c * {vec}u")));
    let _ = writeln!(s, "#pragma unroll\n      for (int e = 0; e < {vec}; ++e) {{");
    let _ = writeln!(
        s,
        "        const float v = {};\n        const int i = fabsf(v) <= 3.402823466e+38f ? (int)(c * {vec}u) + e : -1;",
        load(dtype, "xv.e", "e")
    );
    s.push_str("        if (smelt_argmax_better(v, i, bv, bi)) { bv = v; bi = i; }\n      }\n    }\n");
    s.push_str("    smelt_argmax_warp(bv, bi);\n");
    s.push_str("    if (lane == 0) { warp_v[warp] = bv; warp_i[warp] = bi; }\n");
    s.push_str("    __syncthreads();\n");
    s.push_str("    if (warp == 0) {\n");
    let _ = writeln!(
        s,
        "      bv = lane < {warps}u ? warp_v[lane] : none_v;\n      bi = lane < {warps}u ? warp_i[lane] : none_i;"
    );
    s.push_str("      smelt_argmax_warp(bv, bi);\n");
    s.push_str("      if (lane == 0) y[row] = bi;\n    }\n");
    s.push_str("    __syncthreads();  /* warp_v and warp_i are reused by the next row */\n  }\n}\n");
    Kernel {
        name: name.to_string(),
        kind: "argmax",
        source: super::wait_at_entry(s),
        launch: Launch {
            block,
            grid: Grid::Cover { shape: Shape::new([rows]), per_block: 1, max: MAX_BLOCKS },
            shared_bytes: 0,
        },
    }
}
