//! Prefill attention over the paged KV cache (`Attention`, `NormRopeAttention` with many new
//! tokens), FlashAttention-2 style: compute-bound, so Q K^T and P V run on tensor cores
//! (`mma.sync.m16n8k16`, bf16/f16 inputs, f32 accumulators) and each K/V tile staged in shared
//! memory serves 64 query rows.
//!
//! Same operation, operands and causality as the decode kernels (`attention.rs`): query `t` sits
//! at position `P + t` (`P = step->cached_tokens`) and sees keys `0..=P+t`, which the caches
//! already hold; query head `h` reads KV head `h / G` (`G = heads / kv_heads`); out `[T, heads, D]`.
//!
//! Work: a work item is (KV head, tile of `BQ` = 64 query rows), where the rows of one KV head
//! are its `T * G` (token, group head) pairs flattened token-major: row `R` is token `R / G`,
//! head `kvh * G + R % G`. All G heads of a group then share every K/V tile, the 64 rows span
//! only `64 / G` tokens (a narrower causal diagonal than 64 tokens of one head), and small T
//! fill tiles better. Blocks take items grid-stride, heaviest (latest tokens) first, so any grid
//! is correct. Four warps own 16 rows each; the block walks key tiles of `BK` = 64 positions up
//! to the tile's last visible key, all warps sharing each tile (a warp none of whose rows sees
//! the tile skips its math); the diagonal tiles are masked per row.
//!
//! Pipeline (single buffers, 32 KiB static shared memory, no dynamic): V_j is copied
//! (cp.async) while S = Q K_j^T and the softmax run, K_{j+1} while O += P V_j runs. The Q
//! tile is staged once per item through the V buffer (RMSNorm + RoPE applied on the way, with
//! the decode prologue's lane layout and rounding) and then lives in registers as A fragments.
//!
//! Fragments (PTX ISA, m16n8k16, lane = 4 g + c): A (16x16) regs {a0..a3} hold (row g | g+8,
//! col 2c..2c+1 | 2c+8..2c+9) in the order (g, lo), (g+8, lo), (g, hi), (g+8, hi); B (16x8,
//! k x n) regs {b0, b1} hold (k 2c..2c+1 | 2c+8..2c+9, n g); C (16x8 f32) {c0..c3} hold (row g,
//! col 2c, 2c+1), (row g+8, col 2c, 2c+1). A 32-bit register holds its lower-indexed element in
//! its low half. `ldmatrix.x4` gives register i the 8x8 matrix whose row addresses lanes
//! 8i..8i+7 supply: lane gets row lane/4, cols 2(lane%4)+{0,1}; with `.trans` it gets rows
//! 2(lane%4)+{0,1} of col lane/4. K rows (`[key][d]`) read plainly are B fragments of K^T, V rows
//! read transposed are B fragments of V, and S's C fragments re-packed are P's A fragments.
//!
//! Shared tiles are [64 rows][128 d] of 16-bit values, each row 16 chunks of 16 bytes; chunk c
//! of row r is stored at chunk `c ^ (r % 8)`, so the 8 rows an ldmatrix matrix (or a
//! warp's copy) touches at one logical chunk land in 8 different bank groups.
//!
//! Against `ir::eval` (`linalg::attention`, `fused::norm_rope_attention`): the Q prologue is the
//! decode kernel's, bit for bit (same lane layout, sums, rounding). Then, beyond the decode
//! kernel's differences (summation order, online softmax, one division by the sum at the end,
//! CUDA's expf/cosf/sinf), the probabilities fed to the P V product are rounded to the storage
//! dtype (bf16: 8 bits of mantissa) while the row sums add them unrounded in f32, as
//! FlashAttention does: a relative error of order 2^-9 per weight, so results match the
//! reference to a tolerance, not bit for bit. Q K^T and P V products of bf16/f16 inputs are
//! exact; the tensor cores add them in f32 in their own order and rounding.

use smelt_ir::{shape, DType, Sym};

use super::attention::AttentionSpec;
use super::{Grid, Kernel, Launch, Params, View, GRID_WAIT};
use crate::expr::f32_literal;
use crate::{Template, PRELUDE};

/// Query rows ((token, group head) pairs) per work item: 16 per warp.
const BQ: usize = 64;
/// Key positions per K/V tile.
const BK: usize = 64;
const WARPS: usize = BQ / 16;
/// Grid cap: the kernel loops over its work items, so any grid is correct.
const MAX_BLOCKS: u32 = 65535;

/// A prefill attention layer: `AttentionSpec` without the decode-only split.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrefillAttentionSpec {
    pub heads: usize,
    pub kv_heads: usize,
    pub d: usize,
    pub dtype: DType,
    pub scale: f32,
    /// Where query `(t, h, j)` is: `q[offset + t * row_stride + h * d + j]`.
    pub q_view: View,
    /// Some(eps): queries get RMSNorm + RoPE first (NormRopeAttention); see `AttentionSpec`.
    pub norm_rope_eps: Option<f32>,
}

impl From<&AttentionSpec> for PrefillAttentionSpec {
    fn from(a: &AttentionSpec) -> Self {
        let AttentionSpec { heads, kv_heads, d, dtype, scale, q_view, norm_rope_eps, split_tokens: _, merge_splits: _ } =
            *a;
        PrefillAttentionSpec { heads, kv_heads, d, dtype, scale, q_view, norm_rope_eps }
    }
}

impl PrefillAttentionSpec {
    /// Whether the prefill kernel handles this head dim and dtype (tensor cores take bf16 and
    /// f16; the fragment loops, the copy split and the prologue's lane layout assume D = 128).
    /// Otherwise use `decode_attention`, which handles any T.
    pub fn supports(d: usize, dtype: DType) -> bool {
        d == 128 && matches!(dtype, DType::BF16 | DType::F16)
    }

    fn check(&self) {
        assert!(Self::supports(self.d, self.dtype), "prefill attention: D = {} in {} unsupported", self.d, self.dtype);
        assert!(self.kv_heads > 0 && self.heads % self.kv_heads == 0, "kv_heads must divide heads");
        assert!(self.q_view.row_stride >= self.heads * self.d, "q rows narrower than heads * d");
    }
}

/// The launch grid: one block per 64 of the `T * heads` query rows, i.e. one per work item when
/// 64 divides `T * G` (exactly so at T = 2048), a few blocks taking two items otherwise.
fn grid(spec: &PrefillAttentionSpec) -> Grid {
    Grid::Cover { shape: shape![Sym::NewTokens, spec.heads], per_block: BQ as u32, max: MAX_BLOCKS }
}

/// The kernel after the prelude: storage-type helpers and the PTX wrappers (`$DTYPE` is `bf16`
/// or `f16`), then the entry point; `$PROLOGUE` is empty or [`PROLOGUE`].
const TEMPLATE: Template = Template::new("prefill_attention.cu", include_str!("prefill_attention.cu"));

/// The queries' RMSNorm + RoPE on one row `x` (this lane's 4 elements), exactly the decode
/// prologue with E = 4: the same lane layout, so the same sums and roundings.
const PROLOGUE: Template =
    Template::new("prefill_attention_prologue.cu", include_str!("prefill_attention_prologue.cu"));

/// Prefill attention (many new tokens) over the paged K/V caches of this layer: one kernel,
/// causal, GQA, of kind "prefill_attention". Parameters as the decode single kernel's: q,
/// [q_norm_w, positions (i32), inv_freq (f32),] k_cache, v_cache, out, `const smelt_step* step`.
/// Requires [`PrefillAttentionSpec::supports`]; K/V caches 16-byte aligned (cp.async), out
/// 4-byte aligned. 128 threads, 32 KiB static shared memory; any grid is correct.
pub fn prefill_attention(name: &str, spec: &PrefillAttentionSpec) -> Kernel {
    spec.check();
    let params = super::attention::attention_params("smelt_pa_t", spec.norm_rope_eps.is_some(), false, false);
    let ty = if spec.dtype == DType::BF16 { "bf16" } else { "f16" };
    let threads = WARPS * 32;
    let eps = spec.norm_rope_eps.map(|e| format!("\n  const float EPS = {};", f32_literal(e))).unwrap_or_default();
    let prologue = if spec.norm_rope_eps.is_some() { PROLOGUE.fill(&[]) } else { String::new() };
    let kernel = TEMPLATE.fill(&[
        ("DTYPE", ty),
        ("BQ", &BQ.to_string()),
        ("THREADS", &threads.to_string()),
        ("NAME", name),
        ("PARAMS", &params.join(", ")),
        ("GRID_WAIT", GRID_WAIT),
        ("H", &spec.heads.to_string()),
        ("KVH", &spec.kv_heads.to_string()),
        ("G", &(spec.heads / spec.kv_heads).to_string()),
        ("D", &spec.d.to_string()),
        ("BK", &BK.to_string()),
        ("Q_OFFSET", &spec.q_view.offset.to_string()),
        ("Q_STRIDE", &spec.q_view.row_stride.to_string()),
        ("SCALE", &f32_literal(spec.scale)),
        ("EPS_DECL", &eps),
        ("PROLOGUE", &prologue),
    ]);
    Kernel {
        name: name.to_string(),
        kind: "prefill_attention",
        source: format!("{PRELUDE}{kernel}"),
        launch: Launch { block: threads as u32, grid: grid(spec), shared_bytes: 0 },
        params: Params::Standard,
    }
}
