//! Gather: rows of a `[V, D]` table (the embedding) picked by i32 ids. A pure copy: the table
//! is already in its storage dtype, so the rows are moved bit for bit, as `ir::eval` does.

use std::fmt::Write;

use smelt_ir::{DType, Dim, Shape};

use super::norm::{vector_elems, word_type};
use super::{dim_expr, storage_type, Grid, Kernel, Launch};
use crate::PRELUDE;

/// Grid-stride over rows: no launch needs more blocks than this.
const MAX_BLOCKS: u32 = 65535;

/// Gather: operands `table [V, d]`, `ids i32 [rows]`; output `[rows, d]`. One block per row,
/// each thread copying 16-byte words when `d * size` allows (narrower ones otherwise).
///
/// Ids are not bounds-checked (`V` is not known here): the caller guarantees `0 <= id < V`,
/// as `ir::eval` requires.
pub fn gather(name: &str, rows: Dim, d: usize, dtype: DType) -> Kernel {
    let st = storage_type(dtype);
    let vec = vector_elems(dtype, 16, &[d]);
    let word = word_type(vec * dtype.size_bytes());
    let words = d / vec;
    // Enough threads for one word each when the row is short, else a grid of 256 looping.
    let block = (words.div_ceil(32) * 32).clamp(32, 256) as u32;
    let mut s = String::from(PRELUDE);
    let _ = writeln!(
        s,
        "/* Gather: row ids[r] of a [V, {d}] table to row r, one block per row, {words} words of {} bytes each. */",
        vec * dtype.size_bytes()
    );
    let _ = writeln!(s, "extern \"C\" __global__ void __launch_bounds__({block}) {name}(");
    let _ = writeln!(
        s,
        "    const {st}* __restrict__ table,\n    const int* __restrict__ ids,\n    {st}* __restrict__ y,\n    \
         const smelt_step* __restrict__ step) {{"
    );
    let _ = writeln!(s, "  const unsigned int rows = {};", dim_expr(rows));
    s.push_str("  for (unsigned int r = blockIdx.x; r < rows; r += gridDim.x) {\n");
    let _ = writeln!(s, "    const {word}* src = (const {word}*)(table + (unsigned long long)ids[r] * {d}u);");
    let _ = writeln!(s, "    {word}* dst = ({word}*)(y + (unsigned long long)r * {d}u);");
    let _ = writeln!(s, "    for (unsigned int k = threadIdx.x; k < {words}u; k += {block}u) dst[k] = src[k];");
    s.push_str("  }\n}\n");
    Kernel {
        name: name.to_string(),
        kind: "gather",
        source: super::wait_at_entry(s),
        launch: Launch {
            block,
            grid: Grid::Cover { shape: Shape::new([rows]), per_block: 1, max: MAX_BLOCKS },
            shared_bytes: 0,
        },
    }
}
