//! The generic reduction kernel (`Reduce`: sum, mean or max over one axis), for graphs whose
//! reductions no fusion absorbed. One warp per output element: lanes stride over the reduced
//! axis, accumulate in f32, and meet in a butterfly; the sum is then divided by the length for
//! a mean, and rounded to the output's storage. Against `ir::eval`, which adds in order, the
//! sums run in another order: equal up to a tolerance.

use smelt_ir::{DType, Dim, ReduceOp, Shape};

use super::{dim_expr, load, storage_type, store, Grid, Kernel, Launch, Params, GRID_WAIT};
use crate::{Template, PRELUDE};

const WARPS: u32 = 8;
const MAX_BLOCKS: u32 = 65535;

/// The product of `dims` as a C expression (`1u` when empty).
fn product(dims: &[Dim]) -> String {
    if dims.is_empty() {
        return "1u".into();
    }
    dims.iter().map(|&d| format!("({})", dim_expr(d))).collect::<Vec<_>>().join(" * ")
}

/// The kernel after the prelude: x is `[outer, len, inner]` around the axis; `$INIT`,
/// `$COMBINE` (of a lane's value `v`) and `$LANE_COMBINE` (of lane `m` away) are the op's, and
/// `$STORE` stores the finished `acc` (a mean divides it by `len`), rounding to the output's
/// storage.
const TEMPLATE: Template = Template::new("reduce.cu", include_str!("reduce.cu"));

/// Emits `name(x, y, step)`: `y = op(x, axis)` with `x` of `input` (dtype, shape) and `y` of
/// `out_dtype`, shaped as `x` with the axis kept at size 1.
pub fn reduce(name: &str, op: ReduceOp, input: (DType, &Shape), axis: usize, out_dtype: DType) -> Kernel {
    let (dtype, shape) = input;
    assert!(axis < shape.rank(), "{name}: axis {axis} of a rank-{} input", shape.rank());
    assert!(dtype != DType::I32 && out_dtype != DType::I32, "{name}: reductions of i32 are not supported");
    let dims = shape.dims();
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
    let kernel = TEMPLATE.fill(&[
        ("NAME", name),
        ("WHAT", what),
        ("SHAPE", &shape.to_string()),
        ("AXIS", &axis.to_string()),
        ("BLOCK", &(WARPS * 32).to_string()),
        ("X_TYPE", storage_type(dtype)),
        ("Y_TYPE", storage_type(out_dtype)),
        ("GRID_WAIT", GRID_WAIT),
        ("OUTER", &product(&dims[..axis])),
        ("LEN", &dim_expr(dims[axis])),
        ("INNER", &product(&dims[axis + 1..])),
        ("WARPS", &WARPS.to_string()),
        ("INIT", init),
        ("LOAD", &load(dtype, "x", "((size_t)o * len + k) * inner + i")),
        ("COMBINE", combine),
        ("LANE_COMBINE", lane_combine),
        ("STORE", &store(out_dtype, "y", "r", finish)),
    ]);
    let mut out_dims = dims.to_vec();
    out_dims[axis] = Dim::Fixed(1);
    let grid = Grid::Cover { shape: Shape::new(out_dims), per_block: WARPS, max: MAX_BLOCKS };
    Kernel {
        name: name.to_string(),
        kind: "reduce",
        source: format!("{PRELUDE}{kernel}"),
        launch: Launch { block: WARPS * 32, grid, shared_bytes: 0 },
        params: Params::Standard,
    }
}
