//! ArgMax over the last axis (greedy sampling from the logits), one block per row.
//!
//! The answer is the first index of the largest value, or -1 when the row holds a NaN or an
//! infinity (`Op::ArgMax`): the runtime reads -1 with the token and fails the step, so broken
//! logits cost no extra check or transfer. The parallel version keeps (value, index) pairs
//! ordered by value, then lower index; a non-finite value enters as index -1, which beats
//! everything.

use smelt_ir::{DType, Dim, Shape};

use super::norm::{vector_elems, Access};
use super::{dim_expr, load, storage_type, Grid, Kernel, Launch, Params, GRID_WAIT};
use crate::{Template, PRELUDE};

/// Grid-stride over rows: no launch needs more blocks than this.
const MAX_BLOCKS: u32 = 65535;

/// The kernel after the prelude: the pair comparison and warp fold, then the entry point.
/// Thread k reads chunks k, k + `$BLOCK`, ... of `$VEC` elements (`$XV_DECL` and `$XV_LOAD`
/// declare and load the chunk `xv`, `$ELEMENT` is its element e as a float). The index of "no
/// value yet", `none_i = 0x7fffffff`, is past any real index, so a real value wins every tie
/// with it.
const TEMPLATE: Template = Template::new("argmax.cu", include_str!("argmax.cu"));

/// ArgMax: operand `x [rows, v]` (f32, bf16 or f16); output `i32 [rows]`.
pub fn argmax(name: &str, rows: Dim, v: usize, dtype: DType) -> Kernel {
    assert!(dtype.is_float(), "argmax over {dtype} is not supported");
    assert!(v > 0 && v < i32::MAX as usize, "argmax over {v} elements");
    let vec = vector_elems(dtype, 16, &[v]);
    let a = Access::new(dtype, vec, vec);
    let chunks = v / vec;
    // A long row (the vocabulary) gets the biggest block: one row is the whole decode step.
    let block = (chunks.div_ceil(32) * 32).clamp(32, 1024) as u32;
    let warps = block / 32;
    // One line per word, each ending in a newline; the template's slot is a line of its own.
    let xv_load = a.load("      ", "xv", "xr", &format!("c * {vec}u"));
    let kernel = TEMPLATE.fill(&[
        ("V", &v.to_string()),
        ("BLOCK", &block.to_string()),
        ("VEC", &vec.to_string()),
        ("NAME", name),
        ("STORAGE", storage_type(dtype)),
        ("GRID_WAIT", GRID_WAIT),
        ("WARPS", &warps.to_string()),
        ("ROWS", &dim_expr(rows)),
        ("CHUNKS", &chunks.to_string()),
        ("XV_DECL", &a.decl("xv")),
        ("XV_LOAD", xv_load.strip_suffix('\n').expect("one line per word")),
        ("ELEMENT", &load(dtype, "xv.e", "e")),
    ]);
    Kernel {
        name: name.to_string(),
        kind: "argmax",
        source: format!("{PRELUDE}{kernel}"),
        launch: Launch {
            block,
            grid: Grid::Cover { shape: Shape::new([rows]), per_block: 1, max: MAX_BLOCKS },
            shared_bytes: 0,
        },
        params: Params::Standard,
    }
}
