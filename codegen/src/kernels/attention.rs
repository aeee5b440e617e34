//! Decode attention over the paged KV cache (`Attention`, `NormRopeAttention`), flash-decoding
//! style: memory-bound, so each K and V row is read once, coalesced.
//!
//! A block of `WARPS` warps takes one work item, a (query token `t`, KV head, context split);
//! its warps interleave over the split's positions in chunks of `CHUNK`. Each warp serves all
//! `heads / kv_heads` query heads of the KV head, so a K/V row is loaded once per group; a lane
//! owns `D / 32` consecutive elements of D (one 8-byte load per row for bf16 at D = 128), dot
//! products are warp butterflies, and every query head keeps an online-softmax state (running
//! max, sum, unnormalized output, all f32) in registers. The warps' states are merged through
//! shared memory, then either normalized and stored (no split) or written as a partial to the
//! f32 scratch buffer that a combine kernel merges with the usual log-sum-exp rescaling.
//!
//! Causal: query `t` sits at position `P + t` (`P = step->cached_tokens`) and sees keys
//! `0..=P+t`; the caches already hold this step's rows (the appends run first). In a batched
//! decode step (`step->row_positions` set) row `t` is a sequence of its own: it sits at
//! `row_positions[t]` and reads its keys through its own block table.
//!
//! Splits follow the launch: the split kernel divides the context into
//! `max(1, gridDim.x / (T * KVH))` equal splits, so every block has work whatever grid a
//! captured CUDA graph replays with; the launch's grid (a cover of `[T, KVH, P+T]` by
//! `split_tokens`) makes that about `split_tokens` positions per split. The split count goes to
//! the scratch header for the combine kernel.
//!
//! Against `ir::eval` (`linalg::attention`, `fused::norm_rope_attention`): the prologue rounds
//! exactly where the reference does (products the reference rounds alone are `__fmul_rn`), but
//! these sums run in another order: the norm's sum of squares and the q.k dot products (lane
//! partials, then a tree, with FMAs), and the softmax, which is online (running max, rescaled
//! sums, merged across warps and splits) and divides `sum(p * v)` by the sum once at the end
//! rather than weighting each value by `p / sum`. cosf/sinf/expf are CUDA's (not libm's).
//! Results therefore match the reference up to a tolerance, not bit for bit.

use smelt_ir::{shape, DType, Sym};

use super::{Grid, Kernel, Launch, Params, Scratch, View, GRID_WAIT};
use crate::expr::f32_literal;
use crate::{Template, PRELUDE};

/// Warps per block of the split (or single) kernel.
const WARPS: usize = 4;
/// Context positions a warp loads per step (all their K and V rows in flight at once).
const CHUNK: usize = 8;
/// Grid cap: the kernels loop over their work items, so any grid is correct.
const MAX_BLOCKS: u32 = 65535;
/// f32 words before the partials in the scratch buffer (word 0: the split count, as u32).
const SCRATCH_HEADER: usize = 4;

/// A decode attention layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionSpec {
    pub heads: usize,
    pub kv_heads: usize,
    pub d: usize,
    pub dtype: DType,
    pub scale: f32,
    /// Where query `(t, h, j)` is: `q[offset + t * row_stride + h * d + j]`.
    pub q_view: View,
    /// Some(eps): queries get RMSNorm + RoPE first (NormRopeAttention), operands then are q,
    /// q_norm_w, positions, inv_freq, k_cache, v_cache; None: operands q, k_cache, v_cache.
    pub norm_rope_eps: Option<f32>,
    /// Context positions per split (flash-decoding); 0 = no split.
    pub split_tokens: usize,
    /// With splits, for a step of one new token (a decode program): the last split of each KV
    /// head to finish merges them, in one kernel (arrival counters, no combine kernel).
    pub merge_splits: bool,
}

impl AttentionSpec {
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Elements of D per lane.
    fn per_lane(&self) -> usize {
        self.d / 32
    }

    /// Why this layer has no decode attention kernel (None: it has one), stated once: a code
    /// generator refuses cleanly with it, the emitter panics with it.
    pub fn unsupported(&self) -> Option<String> {
        let (d, dtype) = (self.d, self.dtype);
        let bytes_per_lane = self.per_lane() * dtype.size_bytes();
        if dtype == DType::I32 {
            Some(format!("attention in {dtype}"))
        } else if self.kv_heads == 0 || self.heads % self.kv_heads != 0 {
            Some(format!("{} query heads over {} KV heads (kv_heads must divide heads)", self.heads, self.kv_heads))
        } else if d % 32 != 0 || !self.per_lane().is_power_of_two() || !(4..=16).contains(&bytes_per_lane) {
            Some(format!("head dim {d} in {dtype} (D = 32 * 2^k, each lane's D/32 elements 4 to 16 bytes)"))
        } else if self.q_view.row_stride < self.heads * self.d {
            Some(format!("q rows of {} narrower than heads * d", self.q_view.row_stride))
        } else {
            None
        }
    }

    fn check(&self) {
        if let Some(why) = self.unsupported() {
            panic!("decode attention has no kernel for {why} (check AttentionSpec::unsupported first)");
        }
    }

    /// The split kernel's grid: one block per `split_tokens` positions per (token, KV head).
    fn split_grid(&self) -> Grid {
        let shape = shape![Sym::NewTokens, self.kv_heads, Sym::TotalTokens];
        Grid::Cover { shape, per_block: self.split_tokens as u32, max: MAX_BLOCKS }
    }
}

/// Decode attention (the new tokens T are few, typically 1) over the paged K/V caches of this
/// layer, causal (query t sits at position P+t and sees keys 0..=P+t where P =
/// step->cached_tokens), GQA (query head h reads KV head h / (heads/kv_heads)). Returns the
/// kernels in launch order: a split kernel writing per-split partial results (running max, sum,
/// unnormalized output in f32) to a scratch buffer, and a combine kernel writing the output
/// [T, heads, D] — or a single kernel when split_tokens == 0.
///
/// Parameters: the operands in order (see `AttentionSpec::norm_rope_eps`; positions are i32,
/// inv_freq f32, the rest `dtype`), the output, then `const smelt_step* step`. The split kernel
/// (`{name}_split`) takes `float* scratch` just before `step` (it does not write `out`); the
/// combine kernel (`{name}_combine`) takes `(const float* scratch, out, step)`. The single
/// kernel is `{name}`. Split and combine share one scratch buffer (16-byte aligned) of at least
/// [`decode_attention_scratch_bytes`] at the bindings the split kernel's grid was computed for;
/// that grid also sets how many splits there are, so compute it from a large context when a
/// captured graph replays it as the context grows. K/V buffers must be 16-byte aligned.
pub fn decode_attention(name: &str, spec: &AttentionSpec) -> Vec<Kernel> {
    spec.check();
    if spec.split_tokens == 0 {
        let grid = Grid::Cover { shape: shape![Sym::NewTokens, spec.kv_heads], per_block: 1, max: MAX_BLOCKS };
        vec![main_kernel(name, spec, SINGLE, grid)]
    } else if spec.merge_splits {
        vec![main_kernel(&format!("{name}_merged"), spec, MERGED, spec.split_grid())]
    } else {
        vec![
            main_kernel(&format!("{name}_split"), spec, SPLIT, spec.split_grid()),
            combine_kernel(&format!("{name}_combine"), spec),
        ]
    }
}

/// The split kernel's scratch: 16 bytes of header, then per (token, head, split) `D` floats
/// of unnormalized output and (max, sum). None without splits.
pub fn decode_attention_scratch(spec: &AttentionSpec) -> Option<Scratch> {
    (spec.split_tokens > 0).then(|| Scratch {
        header_bytes: SCRATCH_HEADER * 4,
        item_bytes: spec.group() * (spec.d + 2) * 4,
        writer_grid: spec.split_grid(),
        // Items are T * KVH * max(1, blocks / (T * KVH)) <= max(blocks, T * KVH).
        min_items_per_token: spec.kv_heads,
    })
}

/// Bytes of f32 scratch the split kernel needs for a given context length (`context`: the keys
/// visible to the last new token, cached + new) and T (see [`Scratch::bytes`]); 0 without
/// splits.
pub fn decode_attention_scratch_bytes(spec: &AttentionSpec, context: usize, new_tokens: usize) -> usize {
    decode_attention_scratch(spec).map_or(0, |s| s.bytes(context, new_tokens))
}

/// Type, vector and load/round/store helpers for the storage dtype. A lane's slice of a K or V
/// row is loaded as 32-bit words (16-bit halves unpacked with shifts: no 16-bit registers).
const HELPERS: Template = Template::new("attention_helpers.cu", include_str!("attention_helpers.cu"));

/// The split (or single) kernel, after the helpers: one work item per block iteration. The
/// variant's fragments fill `$ABOUT` (its comment), `$ITEMS` (the split of the work and the
/// item loop's head, naming `s`, `span`, `t`, `kvh`) and `$STORE` (what becomes of the merged
/// `(mx, sum, a)` of output element `j` of head `h`); `$PROLOGUE` is empty or [`PROLOGUE`].
const MAIN: Template = Template::new("attention.cu", include_str!("attention.cu"));

/// The queries' RMSNorm + RoPE, in place on `qv` (each lane's elements of each head).
const PROLOGUE: Template = Template::new("attention_prologue.cu", include_str!("attention_prologue.cu"));

/// The combine kernel, after the helpers.
const COMBINE: Template = Template::new("attention_combine.cu", include_str!("attention_combine.cu"));

/// What each kernel of the family puts in `MAIN`'s `$ABOUT`, `$ITEMS`, `$STORE` and `$MERGE`
/// (after an item's partial is stored and the block has passed a barrier), and how it is
/// called.
#[derive(Clone, Copy)]
struct Variant {
    kind: &'static str,
    about: &'static str,
    items: &'static str,
    store: &'static str,
    merge: &'static str,
    scratch: bool,
    counters: bool,
}

/// The split kernel: `gridDim.x / (T * KVH)` splits (at least 1) of the context per (token, KV
/// head); partials go to the scratch buffer, the split count to its header.
const SPLIT: Variant = Variant {
    kind: "attention_split",
    merge: "",
    scratch: true,
    counters: false,
    about: "/* Split kernel: scratch is f32 [4 header words (word 0: the split count S, as u32), then
   [T, heads, S, D] unnormalized outputs, then [T, heads, S] (max, sum) pairs]. */",
    items: "  const unsigned int nsplit = gridDim.x / (T * KVH) > 1u ? gridDim.x / (T * KVH) : 1u;
  const unsigned int span = (P + T + nsplit - 1u) / nsplit;
  if (blockIdx.x == 0u && threadIdx.x == 0u) ((unsigned int*)scratch)[0] = nsplit;
  float* __restrict__ part_acc = scratch + 4;
  float* __restrict__ part_ml = part_acc + (size_t)T * H * nsplit * D;
  for (unsigned int item = blockIdx.x; item < T * KVH * nsplit; item += gridDim.x) {
    const unsigned int s = item % nsplit, t = item / nsplit / KVH, kvh = item / nsplit % KVH;
",
    store: "      const size_t r = (size_t)(t * H + h) * nsplit + s;
      part_acc[r * D + j] = a;
      if (j == 0u) { part_ml[2 * r] = mx; part_ml[2 * r + 1] = sum; }
",
};

/// The single kernel: one split, the whole context; stores the normalized output.
const SINGLE: Variant = Variant {
    kind: "attention",
    merge: "",
    scratch: false,
    counters: false,
    about: "/* Single kernel: one block per (token, KV head) over the whole context. */",
    items: "  const unsigned int s = 0u, span = P + T;
  for (unsigned int item = blockIdx.x; item < T * KVH; item += gridDim.x) {
    const unsigned int t = item / KVH, kvh = item % KVH;
",
    store: "      out[((size_t)t * H + h) * D + j] = smelt_attn_st(a / sum);\n",
};

/// The split kernel whose last block per (token, KV head) merges the splits as the combine
/// kernel does (in split order, so the same bits whichever block is last), for T = 1: one
/// arrival counter per KV head, left at zero for the next launch or graph replay.
const MERGED: Variant = Variant {
    kind: "attention_merged",
    about: "/* Merged split kernel (T = 1): the split kernel's scratch, and the last split of each KV head
   to arrive (counters[kvh]) merges them into out. */",
    scratch: true,
    counters: true,
    merge: "    if (!__syncthreads_or(threadIdx.x == 0u && smelt_arrive(counters + kvh) == nsplit - 1u)) continue;
    if (threadIdx.x == 0u) counters[kvh] = 0u;
    for (unsigned int i = threadIdx.x; i < G * D; i += blockDim.x) {
      const unsigned int g = i / D, j = i % D, h = kvh * G + g;
      const size_t th = (size_t)t * H + h;
      const float* __restrict__ ml = part_ml + th * nsplit * 2;
      float mx = NEG_INF;
      for (unsigned int sp = 0; sp < nsplit; ++sp) mx = fmaxf(mx, ml[2 * sp]);
      float sum = 0.0f, a = 0.0f;
      for (unsigned int sp = 0; sp < nsplit; ++sp) {
        const float f = expf(ml[2 * sp] - mx); /* 0 for a split with no visible key */
        sum += f * ml[2 * sp + 1];
        a += f * part_acc[(th * nsplit + sp) * D + j];
      }
      out[th * D + j] = smelt_attn_st(a / sum);
    }
",
    ..SPLIT
};

/// The helpers filled for `spec`'s storage dtype.
fn helpers(spec: &AttentionSpec) -> String {
    let (st, ld, round, store, elem) = match spec.dtype {
        DType::BF16 => (
            "unsigned short",
            "smelt_load_bf16(x)",
            "smelt_round_bf16(x)",
            "smelt_store_bf16(x)",
            "smelt_u2f((e & 1u) ? (v.w[e >> 1] & 0xffff0000u) : (v.w[e >> 1] << 16))",
        ),
        DType::F16 => (
            "unsigned short",
            "smelt_load_f16(x)",
            "smelt_round_f16(x)",
            "smelt_store_f16(x)",
            "smelt_load_f16((unsigned short)(v.w[e >> 1] >> ((e & 1u) * 16u)))",
        ),
        _ => ("float", "x", "x", "x", "smelt_u2f(v.w[e])"),
    };
    let bytes = spec.per_lane() * spec.dtype.size_bytes();
    HELPERS.fill(&[
        ("STORAGE", st),
        ("BYTES", &bytes.to_string()),
        ("WORDS", &(bytes / 4).to_string()),
        ("LOAD", ld),
        ("ROUND", round),
        ("STORE", store),
        ("ELEM", elem),
    ])
}

/// The parameter list of an attention kernel over storage type `ty`: q, [q_norm_w, positions,
/// inv_freq,] k_cache, v_cache, out, [float* scratch, [unsigned int* counters,]] step.
pub(super) fn attention_params(ty: &str, norm_rope: bool, scratch: bool, counters: bool) -> Vec<String> {
    let mut params = vec![format!("const {ty}* __restrict__ q")];
    if norm_rope {
        params.push(format!("const {ty}* __restrict__ q_norm_w"));
        params.push("const int* __restrict__ positions".into());
        params.push("const float* __restrict__ inv_freq".into());
    }
    params.push(format!("const {ty}* __restrict__ k_cache"));
    params.push(format!("const {ty}* __restrict__ v_cache"));
    params.push(format!("{ty}* __restrict__ out"));
    if scratch {
        params.push("float* __restrict__ scratch".into());
    }
    if counters {
        params.push("unsigned int* __restrict__ counters".into());
    }
    params.push("const smelt_step* __restrict__ step".into());
    params
}

fn main_kernel(name: &str, spec: &AttentionSpec, variant: Variant, grid: Grid) -> Kernel {
    let Variant { kind, about, items, store, merge, scratch: partials, counters } = variant;
    let params = attention_params("smelt_attn_t", spec.norm_rope_eps.is_some(), partials, counters);
    let threads = WARPS * 32;
    let eps = spec.norm_rope_eps.map(|e| format!("\n  const float EPS = {};", f32_literal(e))).unwrap_or_default();
    let prologue = if spec.norm_rope_eps.is_some() { PROLOGUE.fill(&[]) } else { String::new() };
    let kernel = MAIN.fill(&[
        ("ABOUT", about),
        ("THREADS", &threads.to_string()),
        ("NAME", name),
        ("PARAMS", &params.join(", ")),
        ("GRID_WAIT", GRID_WAIT),
        ("H", &spec.heads.to_string()),
        ("KVH", &spec.kv_heads.to_string()),
        ("G", &spec.group().to_string()),
        ("D", &spec.d.to_string()),
        ("E", &spec.per_lane().to_string()),
        ("WARPS", &WARPS.to_string()),
        ("CHUNK", &CHUNK.to_string()),
        ("Q_OFFSET", &spec.q_view.offset.to_string()),
        ("Q_STRIDE", &spec.q_view.row_stride.to_string()),
        ("SCALE", &f32_literal(spec.scale)),
        ("EPS_DECL", &eps),
        ("ITEMS", items),
        ("PROLOGUE", &prologue),
        ("STORE", store),
        ("MERGE", merge),
    ]);
    Kernel {
        name: name.to_string(),
        kind,
        source: format!("{PRELUDE}{}{kernel}", helpers(spec)),
        launch: Launch { block: threads as u32, grid, shared_bytes: 0 },
        params: match decode_attention_scratch(spec) {
            // T = 1: one counter per KV head.
            Some(scratch) if counters => Params::SplitK { scratch, counters: spec.kv_heads },
            Some(scratch) if partials => Params::WritesScratch(scratch),
            _ => Params::Standard,
        },
    }
}

fn combine_kernel(name: &str, spec: &AttentionSpec) -> Kernel {
    let kernel = COMBINE.fill(&[
        ("NAME", name),
        ("GRID_WAIT", GRID_WAIT),
        ("H", &spec.heads.to_string()),
        ("D", &spec.d.to_string()),
    ]);
    let grid = Grid::Cover { shape: shape![Sym::NewTokens, spec.heads], per_block: 1, max: MAX_BLOCKS };
    Kernel {
        name: name.to_string(),
        kind: "attention_combine",
        source: format!("{PRELUDE}{}{kernel}", helpers(spec)),
        launch: Launch { block: spec.d.clamp(32, 256) as u32, grid, shared_bytes: 0 },
        params: Params::ReadsScratch,
    }
}
