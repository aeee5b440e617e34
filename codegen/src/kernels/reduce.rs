//! The generic reduction kernel (`Reduce`: sum, mean or max over one axis), for graphs whose
//! reductions no fusion absorbed. One warp per output element: lanes stride over the reduced
//! axis, accumulate in f32, and meet in a butterfly; the sum is then divided by the length for
//! a mean, and rounded to the output's storage. Against `ir::eval`, which adds in order, the
//! sums run in another order: equal up to a tolerance.

use std::fmt::Write;

use smelt_ir::{DType, Dim, ReduceOp, Shape};

use super::{dim_expr, load, storage_type, store, Grid, Kernel, Launch};
use crate::PRELUDE;

const WARPS: u32 = 8;
const MAX_BLOCKS: u32 = 65535;

/// The product of `dims` as a C expression (`1u` when empty).
fn product(dims: &[Dim]) -> String {
    if dims.is_empty() {
        return "1u".into();
    }
    dims.iter().map(|&d| format!("({})", dim_expr(d))).collect::<Vec<_>>().join(" * ")
}

/// Emits `name(x, y, step)`: `y = op(x, axis)` with `x` of `input` (dtype, shape) and `y` of
/// `out_dtype`, shaped as `x` with the axis kept at size 1.
pub fn reduce(name: &str, op: ReduceOp, input: (DType, &Shape), axis: usize, out_dtype: DType) -> Kernel {
    let (dtype, shape) = input;
    assert!(axis < shape.rank(), "{name}: axis {axis} of a rank-{} input", shape.rank());
    assert!(dtype != DType::I32 && out_dtype != DType::I32, "{name}: reductions of i32 are not supported");
    let dims = shape.dims();
    let (outer, len, inner) = (product(&dims[..axis]), dim_expr(dims[axis]), product(&dims[axis + 1..]));
    let (init, combine, what) = match op {
        ReduceOp::Sum => ("0.0f", "acc += v;", "sum"),
        ReduceOp::Mean => ("0.0f", "acc += v;", "mean"),
        ReduceOp::Max => ("smelt_u2f(0xff800000u)", "acc = fmaxf(acc, v);", "max"),
    };
    let lane_combine = match op {
        ReduceOp::Max => "acc = fmaxf(acc, __shfl_xor_sync(0xffffffffu, acc, m));",
        _ => "acc += __shfl_xor_sync(0xffffffffu, acc, m);",
    };
    let finish = match op {
        ReduceOp::Mean => "acc / (float)len",
        _ => "acc",
    };
    let mut s = String::from(PRELUDE);
    let _ = writeln!(s, "/* {name}: the {what} of x{shape} over axis {axis}, one warp per output. */");
    let _ = writeln!(
        s,
        "extern \"C\" __global__ void __launch_bounds__({}) {name}(const {}* __restrict__ x, {}* __restrict__ y, const smelt_step* __restrict__ step) {{",
        WARPS * 32,
        storage_type(dtype),
        storage_type(out_dtype)
    );
    let _ = writeln!(s, "  const unsigned int outer = {outer}, len = {len}, inner = {inner};");
    s.push_str("  const unsigned int lane = threadIdx.x & 31u;\n");
    let _ = writeln!(
        s,
        "  for (unsigned int r = blockIdx.x * {WARPS}u + (threadIdx.x >> 5); r < outer * inner; r += gridDim.x * {WARPS}u) {{"
    );
    s.push_str("    const unsigned int o = r / inner, i = r % inner;\n");
    let _ = writeln!(s, "    float acc = {init};");
    s.push_str("    for (unsigned int k = lane; k < len; k += 32u) {\n");
    let _ = writeln!(s, "      const float v = {};", load(dtype, "x", "((size_t)o * len + k) * inner + i"));
    let _ = writeln!(s, "      {combine}\n    }}");
    let _ = writeln!(s, "    for (int m = 16; m > 0; m >>= 1) {lane_combine}");
    // The store rounds to the output's storage.
    let _ = writeln!(s, "    if (lane == 0u) {}", store(out_dtype, "y", "r", finish));
    s.push_str("  }\n}\n");
    let mut out_dims = dims.to_vec();
    out_dims[axis] = Dim::Fixed(1);
    let grid = Grid::Cover { shape: Shape::new(out_dims), per_block: WARPS, max: MAX_BLOCKS };
    Kernel {
        name: name.to_string(),
        kind: "reduce",
        source: super::wait_at_entry(s),
        launch: Launch { block: WARPS * 32, grid, shared_bytes: 0 },
    }
}
