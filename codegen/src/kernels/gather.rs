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

/// [`TEMPLATE`] for one rank's part of a table split by rows: rows `$START..` of it, `$PART_ROWS`.
const PARTIAL: Template = Template::new("partial_gather.cu", include_str!("partial_gather.cu"));

/// Gather: operands `table [V, d]`, `ids i32 [rows]`; output `[rows, d]`. One block per row,
/// each thread copying 16-byte words when `d * size` allows (narrower ones otherwise).
///
/// Ids are not bounds-checked (`V` is not known here): the caller guarantees `0 <= id < V`,
/// as `ir::eval` requires.
pub fn gather(name: &str, rows: Dim, d: usize, dtype: DType) -> Kernel {
    copy_rows(&TEMPLATE, &[], name, rows, d, dtype)
}

/// One rank's part of a gather from a table split by rows (`Op::PartialGather`): operands
/// `table [part_rows, d]` (rows `start..start + part_rows` of the whole), `ids i32 [rows]`;
/// output `[rows, d]`, zeros where an id is another rank's.
pub fn partial_gather(name: &str, rows: Dim, d: usize, dtype: DType, start: usize, part_rows: usize) -> Kernel {
    let (start, part_rows) = (start.to_string(), part_rows.to_string());
    let mut kernel = copy_rows(&PARTIAL, &[("START", &start), ("PART_ROWS", &part_rows)], name, rows, d, dtype);
    kernel.kind = "partial_gather";
    kernel
}

/// A row-copying kernel from `template`, with `extra` slots besides the ones every copy has.
fn copy_rows(template: &Template, extra: &[(&str, &str)], name: &str, rows: Dim, d: usize, dtype: DType) -> Kernel {
    let rows_dim = rows;
    let vec = vector_elems(dtype, 16, &[d]);
    let word_bytes = vec * dtype.size_bytes();
    let words = d / vec;
    // Enough threads for one word each when the row is short, else a grid of 256 looping.
    let block = (words.div_ceil(32) * 32).clamp(32, 256) as u32;
    let (d, words, word_bytes_s, block_s, rows) =
        (d.to_string(), words.to_string(), word_bytes.to_string(), block.to_string(), dim_expr(rows));
    let mut slots: Vec<(&str, &str)> = vec![
        ("D", &d),
        ("WORDS", &words),
        ("WORD_BYTES", &word_bytes_s),
        ("BLOCK", &block_s),
        ("NAME", name),
        ("STORAGE", storage_type(dtype)),
        ("GRID_WAIT", GRID_WAIT),
        ("ROWS", &rows),
        ("WORD", word_type(word_bytes)),
    ];
    slots.extend_from_slice(extra);
    let kernel = template.fill(&slots);
    Kernel {
        name: name.to_string(),
        kind: "gather",
        source: format!("{PRELUDE}{kernel}"),
        launch: Launch {
            block,
            grid: Grid::Cover { shape: Shape::new([rows_dim]), per_block: 1, max: MAX_BLOCKS },
            shared_bytes: 0,
        },
        params: Params::Standard,
    }
}
