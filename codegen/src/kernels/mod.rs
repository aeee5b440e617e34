//! Kernel emitters, one per fused-op kind, all with one calling convention:
//! `name(inputs…, outputs…, const smelt_step* step)`: device pointers in operand order (the
//! op's operands, then its one output), then the step's run-time values (`smelt_step` in the
//! prelude), which live in device memory so that a captured CUDA graph replays unchanged.
//!
//! Storage: f32 as `float`, bf16/f16 as `unsigned short` (loaded and stored with the
//! prelude's helpers), i32 as `int`; row-major, contiguous. Views (reshape, slice) are folded
//! into a consumer's addressing by the emitter that reads through them.
//!
//! KV caches are paged: a cache (one layer's K or V) is physically
//! `[blocks, block_tokens, KVH, D]`; logical position `p` lives in block
//! `step->block_table[p / step->block_tokens]`, row `p % step->block_tokens`.
//!
//! Each kind's emitters (and its support rules) are a module of their own, named by callers
//! through it (`kernels::norm::norm_rope`): a kernel added to a module is listed nowhere else.

pub mod argmax;
pub mod attention;
pub mod elementwise;
mod epilogue;
pub mod exchange;
pub mod gather;
pub mod gemm;
pub mod gemv;
pub mod norm;
pub mod prefill_attention;
pub mod reduce;

use smelt_ir::{Bindings, DType, Dim, Shape, Sym};

/// How a kernel reads the rows of a 2-D operand that may be a view: row `r`, element `c` is
/// `ptr[offset + r * row_stride + c]` (a last-axis slice of a wider tensor has a nonzero
/// offset and a stride wider than its rows). With `from_last_row`, row `r` is the source's row
/// `T - 1 + r`: the last position of a prefill (`T` is the step's new tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub offset: usize,
    pub row_stride: usize,
    pub from_last_row: bool,
}

impl View {
    /// Rows of `width` elements, back to back from the start of the buffer.
    pub fn contiguous(width: usize) -> View {
        View { offset: 0, row_stride: width, from_last_row: false }
    }
}

/// A generated kernel: one `extern "C" __global__` entry point in self-contained CUDA C.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// Stable and meaningful (`qkv_gemv_rmsnorm`): also the entry point's name.
    pub name: String,
    pub kind: &'static str,
    pub source: String,
    pub launch: Launch,
    /// How it is called: the emitter that chose the kernel knows its parameter list.
    pub params: Params,
}

/// A launch's parameter list. Every kernel ends with `const smelt_step* step`.
#[derive(Clone, Debug, PartialEq)]
pub enum Params {
    /// `(operands…, output, step)`.
    Standard,
    /// `(operands…, output, scratch, step)`: writes partial results to a scratch buffer of at
    /// least [`Scratch::bytes`] (flash-decoding's split kernel).
    WritesScratch(Scratch),
    /// `(scratch, output, step)`: reads them (the combine kernel).
    ReadsScratch,
    /// `(operands…, output, scratch, counters, step)`: a kernel whose blocks combine their own
    /// partial results (split-K GEMM): partials to a scratch buffer of at least
    /// [`Scratch::bytes`], and `counters` u32 arrival counters, in a buffer of their own that
    /// nothing else writes, zero before the first launch; every launch leaves them zero.
    SplitK { scratch: Scratch, counters: usize },
}

/// How a kernel is launched, as a function of the step's sizes.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    /// Threads per block.
    pub block: u32,
    pub grid: Grid,
    /// Dynamic shared memory per block.
    pub shared_bytes: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Grid {
    Fixed(u32),
    /// `ceil(volume(shape) / per_block)` blocks, at most `max`.
    Cover {
        shape: Shape,
        per_block: u32,
        max: u32,
    },
    /// One block per tile of `tile_rows` rows of `rows` by one of `column_tiles`:
    /// `ceil(rows / tile_rows) * column_tiles` blocks, at most `max`; with `split_k`, one per
    /// (tile, split) at the step's split count (never more than `max` then).
    Tiles {
        rows: Dim,
        tile_rows: u32,
        column_tiles: u32,
        max: u32,
        split_k: Option<SplitK>,
    },
}

/// Split-K of a tile grid: each output tile's `k_steps` K steps are divided among `splits`
/// blocks, balanced (sizes differ by at most one step), whose f32 partial sums the last of them
/// to arrive adds up in split order (the GEMM: see `gemm.rs`). The kernel computes the same
/// split count from the same rule, at run time, as the tile count depends on T.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitK {
    pub k_steps: u32,
    /// The fewest K steps a split may have.
    pub min_steps: u32,
    /// The blocks that splitting aims for, and never exceeds (a wave of resident blocks).
    pub target_blocks: u32,
}

impl SplitK {
    /// The most splits K allows: each at least `min_steps` steps.
    pub fn max_splits(&self) -> u32 {
        (self.k_steps / self.min_steps.max(1)).max(1)
    }

    /// Splits per tile with `tiles` output tiles: as many as keep `tiles * splits` within the
    /// target (so a split grid is at most one wave), at most [`SplitK::max_splits`], at least 1
    /// (more than half the target in tiles: no split).
    pub fn splits(&self, tiles: usize) -> u32 {
        let fit = self.target_blocks as usize / tiles.max(1);
        fit.clamp(1, self.max_splits() as usize) as u32
    }

    /// Partial-sum slots (one per (tile, split)) a launch with up to `rows` rows of
    /// `tile_rows`-row tiles writes at most: over every row count up to it, as the slots are
    /// not monotonic in the rows (more tiles, fewer splits).
    pub fn max_slots(&self, rows: usize, tile_rows: u32, column_tiles: u32) -> usize {
        let row_tiles = rows.div_ceil(tile_rows.max(1) as usize);
        (1..=row_tiles)
            .map(|m| m * column_tiles as usize)
            .take_while(|&tiles| self.splits(tiles) > 1)
            .map(|tiles| tiles * self.splits(tiles) as usize)
            .max()
            .unwrap_or(0)
    }

    /// Arrival counters (one per output tile that splits) a launch needs at most: a tile count
    /// that splits is at most half the target.
    pub fn counters(&self) -> usize {
        self.target_blocks as usize / 2
    }
}

impl Grid {
    pub fn blocks(&self, b: &Bindings) -> u32 {
        match self {
            Grid::Fixed(n) => *n,
            Grid::Cover { shape, per_block, max } => {
                let n: usize = shape.resolve(b).iter().product();
                (n.div_ceil(*per_block as usize) as u32).clamp(1, *max)
            }
            Grid::Tiles { rows, tile_rows, column_tiles, max, split_k } => {
                let tiles = b.dim(*rows).div_ceil(*tile_rows as usize).saturating_mul(*column_tiles as usize);
                let splits = split_k.map_or(1, |s| s.splits(tiles)) as usize;
                (tiles.saturating_mul(splits).min(u32::MAX as usize) as u32).clamp(1, *max)
            }
        }
    }

    /// Records a kernel with this grid writes to scratch at most, over every step up to `b`'s
    /// sizes: one per block, except a split-K grid's partial slots.
    fn scratch_items(&self, b: &Bindings) -> usize {
        match self {
            Grid::Tiles { rows, tile_rows, column_tiles, split_k: Some(s), .. } => {
                s.max_slots(b.dim(*rows), *tile_rows, *column_tiles)
            }
            _ => self.blocks(b) as usize,
        }
    }
}

/// A buffer one kernel writes partial results to and the next one reads (flash-decoding's
/// split and combine): a header, then a record per work item of the writer. A runtime lays it
/// out from this alone, knowing nothing of the kernels.
#[derive(Clone, Debug, PartialEq)]
pub struct Scratch {
    pub header_bytes: usize,
    pub item_bytes: usize,
    /// The writer's grid: its blocks at a step's sizes bound the work items...
    pub writer_grid: Grid,
    /// ...as do this many items per new token, whichever is more.
    pub min_items_per_token: usize,
}

impl Scratch {
    /// Bytes for a step of `new_tokens` at a context of `context` tokens (the new ones
    /// included). Grows with both, so sizing for the largest context and T covers every
    /// smaller launch.
    pub fn bytes(&self, context: usize, new_tokens: usize) -> usize {
        let b = Bindings { batch: 1, new_tokens, cached_tokens: context.saturating_sub(new_tokens) };
        let items = self.writer_grid.scratch_items(&b).max(new_tokens * self.min_items_per_token);
        self.header_bytes + items * self.item_bytes
    }
}

/// The `$GRID_WAIT` slot's statements: the grid-dependency wait and trigger (see the prelude)
/// where a kernel has nothing to fetch before its inputs are ready.
pub(crate) const GRID_WAIT: &str = "  SMELT_GRID_WAIT();\n  SMELT_GRID_LAUNCH();";

/// The C type a value of `dtype` is stored as.
pub(crate) fn storage_type(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float",
        DType::BF16 | DType::F16 => "unsigned short",
        DType::I32 => "int",
    }
}

/// A C expression (float) loading `ptr[index]` of `dtype`.
pub(crate) fn load(dtype: DType, ptr: &str, index: &str) -> String {
    match dtype {
        DType::F32 => format!("{ptr}[{index}]"),
        DType::BF16 => format!("smelt_load_bf16({ptr}[{index}])"),
        DType::F16 => format!("smelt_load_f16({ptr}[{index}])"),
        DType::I32 => format!("(float){ptr}[{index}]"),
    }
}

/// A C statement storing the float `value` (already rounded to `dtype`) to `ptr[index]`.
pub(crate) fn store(dtype: DType, ptr: &str, index: &str, value: &str) -> String {
    match dtype {
        DType::F32 => format!("{ptr}[{index}] = {value};"),
        DType::BF16 => format!("{ptr}[{index}] = smelt_store_bf16({value});"),
        DType::F16 => format!("{ptr}[{index}] = smelt_store_f16({value});"),
        DType::I32 => format!("{ptr}[{index}] = (int)({value});"),
    }
}

/// A dim as a C expression: a literal, or read from the step parameters.
pub(crate) fn dim_expr(d: Dim) -> String {
    match d {
        Dim::Fixed(n) => format!("{n}u"),
        Dim::Sym(Sym::Batch) => "step->batch".into(),
        Dim::Sym(Sym::NewTokens) => "step->new_tokens".into(),
        Dim::Sym(Sym::CachedTokens) => "step->cached_tokens".into(),
        Dim::Sym(Sym::TotalTokens) => "(step->cached_tokens + step->new_tokens)".into(),
    }
}

/// A C identifier from a name: `l07.mlp.up` -> `l07_mlp_up`.
pub fn kernel_name(node_name: &str) -> String {
    let mut s: String = node_name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert_str(0, "k_");
    }
    s
}
