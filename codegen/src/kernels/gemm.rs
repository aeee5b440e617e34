//! The prefill GEMM: `epilogue(x @ w^T)` for `M = T = step->new_tokens` rows, on tensor cores.
//! Same operation contract as `linear_gemv` (minus its RMSNorm prologue: prefill keeps the
//! norm as its own op), for any M known only at run time.
//!
//! Tiling. A block of 8 warps computes a 128 x 128 tile of `x[M, K] @ wt[K, 128]`, where `wt`
//! is 128 weight rows: with one accumulator part, weight rows `c0 .. c0 + 128`; with `PARTS`
//! parts (SwiGLU: 2), `128 / PARTS` output columns times every part, arranged so that one
//! thread holds all the parts of each (row, column) it owns (see "B rows" below). Warps sit
//! 2 (M) x 4 (N), each owning 64 rows x 32 weight rows = 4 x 4 `mma.m16n8k16` tiles, 64 f32
//! accumulators per thread. Blocks loop over tiles (grid-stride, M fastest so blocks running
//! together share weight tiles in L2), so any grid computes the same result.
//!
//! Pipeline. K advances 32 at a time through a 3-stage ring in dynamic shared memory (each
//! stage an A tile and a B tile of 128 rows x 32 values, 8 KiB each; 48 KiB in all, so no
//! opt-in attribute is needed). Each thread issues 4 16-byte `cp.async.cg` per stage (2 for A,
//! 2 for B) and commits one group per stage, always (empty groups at the end), so that
//! `cp.async.wait_group STAGES-2` at step kt means "stage kt has landed" for this thread; the
//! `__syncthreads()` after it makes that true for all threads, and also ends every warp's reads
//! of the stage that step kt then refills (the one read at step kt - 1). Rows past M (and
//! weight rows past N_OUT) are zero-filled: `cp.async` with src-size 0 reads nothing.
//!
//! Shared-memory layout: row r of a tile is 64 bytes, four 16-byte chunks; chunk c is stored
//! at chunk `c ^ ((r >> 1) & 3)`. An `ldmatrix` 8x8 matrix is 8 consecutive rows (from a
//! multiple of 8) at one chunk: rows differ in `(r & 1, (r >> 1) & 3)`, so the 8 rows land
//! in 8 distinct 16-byte bank groups of a 128-byte line: no conflicts. A `cp.async` quarter
//! warp writes two whole rows: conflict-free too.
//!
//! Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type";
//! g = lane >> 2, t = lane & 3; a register's low half holds the lower-indexed element):
//! - A (16 x 16, row-major): `a0 = A[g][2t, 2t+1]`, `a1 = A[g+8][2t, 2t+1]`,
//!   `a2 = A[g][2t+8, 2t+9]`, `a3 = A[g+8][2t+8, 2t+9]`.
//! - B (16 x 8, "col": `B[k][n]` = wt row n, value k): `b0 = B[2t, 2t+1][g]`,
//!   `b1 = B[2t+8, 2t+9][g]`.
//!   Weight row n's K values are contiguous, so a B fragment is a row of the weight tile, as an
//!   A fragment is a row of the x tile: neither needs `ldmatrix .trans`.
//! - C (16 x 8, f32): c0, c1 = C[g][2t, 2t+1]; c2, c3 = C[g+8][2t, 2t+1].
//! - `ldmatrix.m8n8.x4.b16`: lanes 8i .. 8i+7 give the row addresses of matrix i (16 bytes
//!   each); register i of lane l receives matrix i's row l >> 2, elements 2(l & 3), 2(l & 3)+1.
//!   So for A at (m, k): lane l points at row m + (l & 15), values k + 8 (l >> 4), making
//!   matrices (rows 0-7, k 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15) = a0, a1, a2, a3.
//!   For two B n-tiles at (n, k): row n + 8 (l >> 4) + (l & 7), values k + 8 ((l >> 3) & 1),
//!   making (tile 0, k 0-7), (tile 0, k 8-15), (tile 1, k 0-7), (tile 1, k 8-15) = b0, b1 of
//!   tile 0 then of tile 1.
//!
//! B rows. Warp column `wn` owns weight rows `32 wn .. 32 wn + 32` of the tile, its n-tiles
//! j = 0..4. With P parts, JP = 4 / P tiles per part: n-tile j is part `j / JP`, columns
//! `c0 + wn * 32/P + (j % JP) * 8 + 0..8`, weight rows `part * N_OUT + column` (as gemv and
//! `ir::eval`: part p of the accumulator is columns `p * N_OUT ..` of `x @ w^T`). So thread
//! (g, t)'s C element (j, e) for every part is the same output column.
//!
//! Split-K. With few output tiles (o_proj and down_proj of Qwen3-0.6B are 8 column tiles, so
//! 8 blocks at T <= 128 against 264 resident slots), each tile's K is split among blocks:
//! splits = min(floor(TARGET_BLOCKS / tiles), floor(KT / MIN_SPLIT_STEPS)), at least 1
//! ([`SplitK::splits`]; the kernel computes the same from T at run time). So a split grid is at
//! most one wave of two blocks per SM on a 132-SM H100/H200, and no tile splits past 132 tiles.
//! Each split's K steps are a balanced range (sizes differ by at most one step). A block writes
//! its f32 accumulators (rows below M) to its (tile, split) slot of the scratch buffer; after a
//! barrier one thread fences and counts the block's arrival on the tile's counter; the last
//! block to arrive adds the slots in split order (the same bits whichever block is last),
//! resets the counter to zero for the next launch or graph replay, and applies the epilogue
//! once, to the full sum: the same code as an unsplit tile. With split-K off, or K under two
//! splits, `MAX_SPLITS = 1` folds all of it away (the PTX is the unsplit kernel's).
//! Split-K rather than stream-K: a split's K range is fixed by (tile, split), so a tile's sum
//! has one order by construction and the combine is one loop; stream-K would also level the
//! tile counts between 132 and 264 that split-K leaves at one wave, at the cost of tiles
//! shared across blocks at run-time boundaries.
//!
//! Against `ir::eval` (`fused::linear`): products of bf16/f16 values are exact in f32 and the
//! tensor cores sum them into f32 accumulators, in their own order (and internal rounding), so
//! the sums agree with the reference's f32 sums up to rounding (split-K adds per-split f32
//! sums: another order, the same bound); each is then rounded to the storage dtype as the
//! matmul's output is, and the epilogue rendered by `expr::render` rounds every node where the
//! reference does (as gemv).
//!
//! The launch must provide: x and w 16-byte aligned (cp.async), so every x row (the view's
//! offset and stride are multiples of 8 values, checked here) and weight row (K % 32 == 0) is;
//! y and the extras aligned to their element type; 48 KiB of dynamic shared memory; for a
//! kernel that can split K, a scratch buffer of [`Scratch::bytes`] at the largest T it runs
//! (8-byte aligned) and the counters of [`gemm_split_k`], all zero at the first launch and
//! written by nothing else (each launch leaves them zero).

use smelt_ir::{DType, Dim, Expr, Shape, Sym};

use super::epilogue::{leaves, Epilogue};
use super::{dim_expr, storage_type, Grid, Kernel, Launch, Params, Scratch, SplitK, View, GRID_WAIT};
use crate::{Template, PRELUDE};

/// Rows (M) and weight rows per block tile, K per pipeline stage, stages, threads. `BODY`
/// is written for exactly this geometry (8 warps of 64 x 32); these size the launch.
const BM: usize = 128;
const BN: usize = 128;
const BK: usize = 32;
const STAGES: usize = 3;
const BLOCK: usize = 256;
/// Dynamic shared memory: A and B tiles of 16-bit values per stage (48 KiB).
const SHARED: usize = STAGES * (BM + BN) * BK * 2;
/// Past this many blocks (one per output tile up to it), blocks loop over tiles.
const MAX_BLOCKS: u32 = 1024;
/// Split-K aims for this many blocks: two resident per SM (at most 128 registers and 48 KiB
/// of shared memory each) on the 132 SMs of an H100/H200.
const TARGET_BLOCKS: u32 = 2 * 132;
/// The fewest K steps (of BK) a split may have: fewer, and the ring's two-stage prologue is
/// half a split's loads, while a full tile's f32 partial (64 KiB written, then read back)
/// outweighs the 16 KiB of operands a step loads several times over.
const MIN_SPLIT_STEPS: u32 = 4;
/// Bytes of one split's partial sums in scratch: a BM x BN tile of f32.
pub const GEMM_SLOT_BYTES: usize = BM * BN * 4;

/// `epilogue(x @ w^T)` for `M = step->new_tokens` rows. Operands, in the kernel's parameter
/// order: `x [M, K]` (read at `x_view`), `w [N, K]`, the epilogue's extra inputs; then the
/// output `y [M, N_out]` (`N_out = N / parts` when the epilogue reads accumulator parts,
/// else N), then (a kernel that can split K: [`gemm_split_k`]) the scratch and the counters,
/// then the step.
pub struct GemmSpec<'a> {
    pub k: usize,
    /// The weight is `[n, k]`.
    pub n: usize,
    /// Of x, w and the accumulator's storage: bf16 or f16.
    pub dtype: DType,
    /// How x rows are addressed (a slice of a wider tensor is a view).
    pub x_view: View,
    pub epilogue: Option<&'a Expr>,
    /// The epilogue's inputs (contiguous), broadcast against `[M, N_out]`.
    pub extras: &'a [(DType, Shape)],
    pub out_dtype: DType,
    /// Split K among blocks when there are few output tiles (see the module); off emits the
    /// kernel that never splits (the A/B switch).
    pub split_k: bool,
}

/// Why `spec` has no GEMM kernel (None: it has one): the shapes and dtypes `linear_gemm`
/// takes, stated once: a code generator refuses cleanly with it, `linear_gemm` panics with it.
pub fn gemm_unsupported(spec: &GemmSpec) -> Option<String> {
    let GemmSpec { k, n, dtype, x_view, epilogue, .. } = *spec;
    let parts = accumulator_parts(epilogue);
    let p = parts.first().copied().unwrap_or(1);
    let reason = if !matches!(dtype, DType::BF16 | DType::F16) {
        format!("GEMM operands in {dtype} (bf16 or f16 only)")
    } else if k == 0 || k % BK != 0 {
        format!("K = {k} (it must be a multiple of {BK})")
    } else if x_view.from_last_row {
        "x as the last row (the GEMM reads T whole rows)".to_string()
    } else if x_view.offset % 8 != 0 || x_view.row_stride % 8 != 0 || x_view.offset + k > x_view.row_stride {
        let (offset, stride) = (x_view.offset, x_view.row_stride);
        format!("x view offset {offset} stride {stride} (rows must start 16-byte aligned: multiples of 8 elements)")
    } else if parts.len() > 1 || ![1, 2, 4].contains(&p) || n % p != 0 || (n / p) % 8 != 0 {
        format!("N = {n} in {p} accumulator parts (1, 2 or 4 parts; N / parts must be a multiple of 8)")
    } else {
        return None;
    };
    Some(reason)
}

/// The part counts of the accumulator reads in `epilogue` (all the same for a kernel).
fn accumulator_parts(epilogue: Option<&Expr>) -> Vec<usize> {
    let (mut parts, mut inputs) = (Vec::new(), Vec::new());
    if let Some(e) = epilogue {
        leaves(e, &mut parts, &mut inputs);
    }
    parts
}

/// Output tiles per 128 rows: N_out / (BN / parts) = N / BN, rounded up.
fn column_tiles(spec: &GemmSpec) -> u32 {
    let parts = accumulator_parts(spec.epilogue).first().copied().unwrap_or(1);
    (spec.n / parts).div_ceil(BN / parts) as u32
}

/// How `spec`'s kernel splits K, or None when it never does: split-K off, or not even one row
/// of tiles (the fewest, at T <= 128) leaves room for two splits (K too short, or more than
/// 132 column tiles: the lm_head, the gate_up of Qwen3-4B and 8B), so no combine is emitted.
fn split_plan(spec: &GemmSpec) -> Option<SplitK> {
    let plan = SplitK { k_steps: (spec.k / BK) as u32, min_steps: MIN_SPLIT_STEPS, target_blocks: TARGET_BLOCKS };
    (spec.split_k && plan.splits(column_tiles(spec) as usize) > 1).then_some(plan)
}

/// The launch grid: a block per (output tile, split).
fn grid(spec: &GemmSpec) -> Grid {
    let (rows, column_tiles) = (Dim::Sym(Sym::NewTokens), column_tiles(spec));
    Grid::Tiles { rows, tile_rows: BM as u32, column_tiles, max: MAX_BLOCKS, split_k: split_plan(spec) }
}

/// What `spec`'s kernel takes when it can split K: a scratch buffer for the partial sums (a
/// [`GEMM_SLOT_BYTES`] slot per (tile, split)) and this many u32 arrival counters, zero before
/// a launch and left zero by it; its parameters then end `y, scratch, counters, step`. None:
/// it never splits, and takes the standard parameters.
pub fn gemm_split_k(spec: &GemmSpec) -> Option<(Scratch, usize)> {
    let plan = split_plan(spec)?;
    let scratch =
        Scratch { header_bytes: 0, item_bytes: GEMM_SLOT_BYTES, writer_grid: grid(spec), min_items_per_token: 0 };
    Some((scratch, plan.counters()))
}

/// The kernel after the prelude: the PTX wrappers (no CUDA headers, so cp.async, ldmatrix and
/// mma are inline assembly), then the entry point; `$EPILOGUE` computes and stores one element
/// `(r, col)` from `sum[mi][p * JP + jj][h * 2 + e]` for each part p. The body is written for
/// exactly the geometry of the constants above, which size the launch.
const TEMPLATE: Template = Template::new("gemm.cu", include_str!("gemm.cu"));
/// The `$COMBINE` slot of a kernel that can split K: partials out, the last block sums them.
const COMBINE: &str = include_str!("gemm_combine.cu");

/// Emits `name(x, w, extra0…, y, step)` computing `spec` with `M = step->new_tokens`.
pub fn linear_gemm(name: &str, spec: &GemmSpec) -> Kernel {
    let GemmSpec { k, n, dtype, x_view, epilogue, extras, out_dtype, .. } = *spec;
    if let Some(why) = gemm_unsupported(spec) {
        panic!("{name}: linear_gemm has no kernel for {why} (check gemm_unsupported first)");
    }
    let mma_type = if dtype == DType::BF16 { "bf16" } else { "f16" };
    let View { offset, row_stride, .. } = x_view;
    let fused = Epilogue::of(name, epilogue, dtype, n, out_dtype, extras.len());
    let (body, parts) = (&fused.body, fused.parts);
    let n_out = n / parts;

    let ty = storage_type(dtype);
    let mut params = vec![format!("const {ty}* __restrict__ x"), format!("const {ty}* __restrict__ w")];
    for (i, (d, _)) in extras.iter().enumerate() {
        params.push(format!("const {}* __restrict__ extra{i}", storage_type(*d)));
    }
    params.push(format!("{}* __restrict__ y", storage_type(out_dtype)));
    let split = split_plan(spec);
    if split.is_some() {
        params.push("float* __restrict__ scratch".into());
        params.push("unsigned int* __restrict__ counters".into());
    }
    params.push("const smelt_step* __restrict__ step".into());

    // One output element per line, each line ending (the slot starts the closing brace's line).
    let epi: String = fused
        .statements(
            "            ",
            |p| format!("sum[mi][{p}u * JP + jj][h * 2u + e]"),
            (dtype, out_dtype),
            extras,
            (Dim::Sym(Sym::NewTokens), n_out),
            name,
        )
        .iter()
        .map(|line| format!("{line}\n"))
        .collect();

    // At most 128 registers (ptxas needs 124-128 unforced), so two blocks share an SM.
    let kernel = TEMPLATE.fill(&[
        ("MMA_TYPE", mma_type),
        ("NAME", name),
        ("N_OUT", &n_out.to_string()),
        ("EPILOGUE_TEXT", &body.to_string()),
        ("K", &k.to_string()),
        ("N", &n.to_string()),
        ("BLOCK", &BLOCK.to_string()),
        ("PARAMS", &params.join(",\n    ")),
        ("GRID_WAIT", GRID_WAIT),
        ("PARTS", &parts.to_string()),
        ("X_OFFSET", &offset.to_string()),
        ("X_STRIDE", &row_stride.to_string()),
        ("STORAGE", ty),
        ("M", &dim_expr(Dim::Sym(Sym::NewTokens))),
        ("EPILOGUE", &epi),
        ("MAX_SPLITS", &split.map_or(1, |s| s.max_splits()).to_string()),
        ("TARGET", &TARGET_BLOCKS.to_string()),
        ("COMBINE", if split.is_some() { COMBINE } else { "" }),
    ]);
    let s = format!("{PRELUDE}{kernel}");

    // One block per output tile at every T (a cover of 16 rows per block gave T = 1 a
    // sixteenth of the tiles' blocks, each looping over 16 tiles), times the splits.
    Kernel {
        name: name.to_string(),
        kind: "linear_gemm",
        source: s,
        launch: Launch { block: BLOCK as u32, grid: grid(spec), shared_bytes: SHARED as u32 },
        params: match gemm_split_k(spec) {
            Some((scratch, counters)) => Params::SplitK { scratch, counters },
            None => Params::Standard,
        },
    }
}
