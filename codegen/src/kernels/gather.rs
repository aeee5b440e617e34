//! Gather: rows of a `[V, D]` table (the embedding) picked by i32 ids. A pure copy: the table
//! is already in its storage dtype, so the rows are moved bit for bit, as `ir::eval` does.

use smelt_ir::{DType, Dim, Shape};

use super::norm::{vector_elems, word_type};
use super::{dim_expr, storage_type, Grid, Kernel, Launch, Params, GRID_WAIT};
use crate::{Template, PRELUDE};

/// Grid-stride over rows: no launch needs more blocks than this.
const MAX_BLOCKS: u32 = 65535;

/// The kernel after the prelude: each row is `$WORDS` words of type `$WORD`, copied by a
/// block of `$BLOCK` threads.
const TEMPLATE: Template = Template::new("gather.cu", include_str!("gather.cu"));

/// Gather: operands `table [V, d]`, `ids i32 [rows]`; output `[rows, d]`. One block per row,
/// each thread copying 16-byte words when `d * size` allows (narrower ones otherwise).
///
/// Ids are not bounds-checked (`V` is not known here): the caller guarantees `0 <= id < V`,
/// as `ir::eval` requires.
pub fn gather(name: &str, rows: Dim, d: usize, dtype: DType) -> Kernel {
    let vec = vector_elems(dtype, 16, &[d]);
    let word_bytes = vec * dtype.size_bytes();
    let words = d / vec;
    // Enough threads for one word each when the row is short, else a grid of 256 looping.
    let block = (words.div_ceil(32) * 32).clamp(32, 256) as u32;
    let kernel = TEMPLATE.fill(&[
        ("D", &d.to_string()),
        ("WORDS", &words.to_string()),
        ("WORD_BYTES", &word_bytes.to_string()),
        ("BLOCK", &block.to_string()),
        ("NAME", name),
        ("STORAGE", storage_type(dtype)),
        ("GRID_WAIT", GRID_WAIT),
        ("ROWS", &dim_expr(rows)),
        ("WORD", word_type(word_bytes)),
    ]);
    Kernel {
        name: name.to_string(),
        kind: "gather",
        source: format!("{PRELUDE}{kernel}"),
        launch: Launch {
            block,
            grid: Grid::Cover { shape: Shape::new([rows]), per_block: 1, max: MAX_BLOCKS },
            shared_bytes: 0,
        },
        params: Params::Standard,
    }
}
