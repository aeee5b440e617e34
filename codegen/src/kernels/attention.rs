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

use smelt_ir::{shape, Bindings, DType, Sym};

use super::{Grid, Kernel, Launch, View};
use crate::expr::f32_literal;
use crate::PRELUDE;

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
}

impl AttentionSpec {
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Elements of D per lane.
    fn per_lane(&self) -> usize {
        self.d / 32
    }

    fn check(&self) {
        assert!(matches!(self.dtype, DType::BF16 | DType::F16 | DType::F32), "attention in {}", self.dtype);
        assert!(self.kv_heads > 0 && self.heads % self.kv_heads == 0, "kv_heads must divide heads");
        let e = self.per_lane();
        assert!(
            self.d % 32 == 0 && e.is_power_of_two() && (4..=16).contains(&(e * self.dtype.size_bytes())),
            "head dim {} in {}: need D = 32 * 2^k with D/32 elements in 4 to 16 bytes",
            self.d,
            self.dtype
        );
        assert!(self.q_view.row_stride >= self.heads * self.d, "q rows narrower than heads * d");
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
        vec![main_kernel(name, spec, false, grid)]
    } else {
        vec![
            main_kernel(&format!("{name}_split"), spec, true, spec.split_grid()),
            combine_kernel(&format!("{name}_combine"), spec),
        ]
    }
}

/// Bytes of f32 scratch the split kernel needs for a given context length (`context`: the keys
/// visible to the last new token, cached + new) and T: 16 bytes of header, then per (token,
/// head, split) `D` floats of unnormalized output and (max, sum). Grows with both arguments, so
/// sizing for the largest context and T covers every smaller launch. 0 without splits.
pub fn decode_attention_scratch_bytes(spec: &AttentionSpec, context: usize, new_tokens: usize) -> usize {
    if spec.split_tokens == 0 {
        return 0;
    }
    let b = Bindings { batch: 1, new_tokens, cached_tokens: context.saturating_sub(new_tokens) };
    // Items are T * KVH * max(1, blocks / (T * KVH)) <= max(blocks, T * KVH).
    let items = (spec.split_grid().blocks(&b) as usize).max(new_tokens * spec.kv_heads);
    (SCRATCH_HEADER + items * spec.group() * (spec.d + 2)) * 4
}

/// Type, vector and load/round/store helpers for the storage dtype. A lane's slice of a K or V
/// row is loaded as 32-bit words (16-bit halves unpacked with shifts: no 16-bit registers).
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
    format!(
        "typedef {st} smelt_attn_t;
/* The D/32 consecutive elements one lane owns of a K or V row: one vector load. */
struct alignas({bytes}) smelt_attn_vec {{ unsigned int w[{words}]; }};
SMELT_FN float smelt_attn_ld(smelt_attn_t x) {{ return {ld}; }}
SMELT_FN float smelt_attn_round(float x) {{ return {round}; }}
SMELT_FN smelt_attn_t smelt_attn_st(float x) {{ return {store}; }}
SMELT_FN float smelt_attn_elem(const smelt_attn_vec& v, unsigned int e) {{ return {elem}; }}
SMELT_FN float smelt_warp_sum(float v) {{
  for (unsigned int m = 16u; m > 0u; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}}
",
        words = bytes / 4,
    )
}

/// The queries' RMSNorm + RoPE, in place on `qv` (each lane's elements of each head).
const PROLOGUE: &str = r#"    {
      const float pos = (float)positions[t];
#pragma unroll
      for (unsigned int g = 0; g < G; ++g) {
        float ss = 0.0f;
#pragma unroll
        for (unsigned int e = 0; e < E; ++e) ss += __fmul_rn(qv[g][e], qv[g][e]);
        const float inv = 1.0f / sqrtf(smelt_warp_sum(ss) / (float)D + EPS);
        float y[E];
#pragma unroll
        for (unsigned int e = 0; e < E; ++e)
          y[e] = smelt_attn_round(__fmul_rn(smelt_attn_ld(q_norm_w[lane * E + e]), smelt_attn_round(__fmul_rn(qv[g][e], inv))));
#pragma unroll
        for (unsigned int e = 0; e < E; ++e) {
          /* NeoX rotation: element j pairs with j +- D/2, held by lane ^ 16. */
          const float other = __shfl_xor_sync(0xffffffffu, y[e], 16);
          const float rot = lane < 16u ? -other : other;
          const float f = __fmul_rn(pos, inv_freq[(lane * E + e) % (D / 2)]);
          const float c = smelt_attn_round(cosf(f)), s = smelt_attn_round(sinf(f));
          qv[g][e] = smelt_attn_round(smelt_attn_round(__fmul_rn(y[e], c)) + smelt_attn_round(__fmul_rn(rot, s)));
        }
      }
    }
"#;

/// The body shared by the split and the single kernel: one work item, per block.
const BODY: &str = r#"    /* keys 0..=P+t, or 0..=row_positions[t] in a batched step (the row's own sequence) */
    const unsigned int end = smelt_row_position(step, t) + 1u;
    const unsigned int* __restrict__ row_table = smelt_row_table(step, t);
    const unsigned int lo = s * span, hi = lo + span < end ? lo + span : end;
    float qv[G][E];
#pragma unroll
    for (unsigned int g = 0; g < G; ++g)
#pragma unroll
      for (unsigned int e = 0; e < E; ++e)
        qv[g][e] = smelt_attn_ld(q[Q_OFFSET + (size_t)t * Q_STRIDE + (kvh * G + g) * D + lane * E + e]);
$PROLOGUE    float m[G], l[G], acc[G][E];
#pragma unroll
    for (unsigned int g = 0; g < G; ++g) {
      m[g] = NEG_INF; l[g] = 0.0f;
#pragma unroll
      for (unsigned int e = 0; e < E; ++e) acc[g][e] = 0.0f;
    }
    for (unsigned int base = lo + warp * CHUNK; base < hi; base += WARPS * CHUNK) {
      /* Lane c < CHUNK looks up position base + c in the block table. */
      unsigned int my_row = 0u;
      if (lane < CHUNK && base + lane < hi) {
        const unsigned int p = base + lane;
        my_row = (row_table[p / bt] * bt + p % bt) * KVH + kvh;
      }
      smelt_attn_vec kr[CHUNK], vr[CHUNK];
#pragma unroll
      for (unsigned int c = 0; c < CHUNK; ++c) {
        const size_t off = (size_t)__shfl_sync(0xffffffffu, my_row, c) * D + lane * E;
        if (base + c < hi) {
          kr[c] = *(const smelt_attn_vec*)(k_cache + off);
          vr[c] = *(const smelt_attn_vec*)(v_cache + off);
        } else {
#pragma unroll
          for (unsigned int w = 0; w < sizeof(smelt_attn_vec) / 4; ++w) kr[c].w[w] = vr[c].w[w] = 0u;
        }
      }
#pragma unroll
      for (unsigned int g = 0; g < G; ++g) {
        float sc[CHUNK], cmax = NEG_INF;
#pragma unroll
        for (unsigned int c = 0; c < CHUNK; ++c) {
          float dot = 0.0f;
#pragma unroll
          for (unsigned int e = 0; e < E; ++e) dot += qv[g][e] * smelt_attn_elem(kr[c], e);
          dot = smelt_warp_sum(dot) * SCALE;
          sc[c] = base + c < hi ? dot : NEG_INF;
          cmax = fmaxf(cmax, sc[c]);
        }
        const float mn = fmaxf(m[g], cmax), corr = expf(m[g] - mn);
        l[g] *= corr;
#pragma unroll
        for (unsigned int e = 0; e < E; ++e) acc[g][e] *= corr;
#pragma unroll
        for (unsigned int c = 0; c < CHUNK; ++c) {
          const float p = expf(sc[c] - mn);
          l[g] += p;
#pragma unroll
          for (unsigned int e = 0; e < E; ++e) acc[g][e] += p * smelt_attn_elem(vr[c], e);
        }
        m[g] = mn;
      }
    }
    /* Merge the warps' states: a warp that saw no position has max -inf and adds nothing. */
#pragma unroll
    for (unsigned int g = 0; g < G; ++g) {
      if (lane == 0u) { sm_m[warp][g] = m[g]; sm_l[warp][g] = l[g]; }
#pragma unroll
      for (unsigned int e = 0; e < E; ++e) sm_acc[warp][g][lane * E + e] = acc[g][e];
    }
    __syncthreads();
    for (unsigned int i = threadIdx.x; i < G * D; i += blockDim.x) {
      const unsigned int g = i / D, j = i % D, h = kvh * G + g;
      float mx = NEG_INF, sum = 0.0f, a = 0.0f;
#pragma unroll
      for (unsigned int w = 0; w < WARPS; ++w) mx = fmaxf(mx, sm_m[w][g]);
      if (mx != NEG_INF) {
#pragma unroll
        for (unsigned int w = 0; w < WARPS; ++w) {
          const float f = expf(sm_m[w][g] - mx);
          sum += f * sm_l[w][g];
          a += f * sm_acc[w][g][j];
        }
      }
$STORE    }
    __syncthreads();
"#;

/// The parameter list of an attention kernel over storage type `ty`: q, [q_norm_w, positions,
/// inv_freq,] k_cache, v_cache, out, [float* scratch,] step.
pub(super) fn attention_params(ty: &str, norm_rope: bool, scratch: bool) -> Vec<String> {
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
    params.push("const smelt_step* __restrict__ step".into());
    params
}

fn main_kernel(name: &str, spec: &AttentionSpec, split: bool, grid: Grid) -> Kernel {
    let params = attention_params("smelt_attn_t", spec.norm_rope_eps.is_some(), split);
    let threads = WARPS * 32;
    let mut s = format!("{PRELUDE}{}", helpers(spec));
    s.push_str(if split {
        "/* Split kernel: scratch is f32 [4 header words (word 0: the split count S, as u32), then\n   [T, heads, S, D] unnormalized outputs, then [T, heads, S] (max, sum) pairs]. */\n"
    } else {
        "/* Single kernel: one block per (token, KV head) over the whole context. */\n"
    });
    s.push_str(&format!(
        "extern \"C\" __global__ void __launch_bounds__({threads}) {name}({}) {{\n",
        params.join(", ")
    ));
    s.push_str(&format!(
        "  constexpr unsigned int H = {h}u, KVH = {kvh}u, G = {g}u, D = {d}u, E = {e}u, WARPS = {WARPS}u, CHUNK = {CHUNK}u;
  constexpr size_t Q_OFFSET = {qo}u, Q_STRIDE = {qs}u;
  const float SCALE = {scale}, NEG_INF = smelt_u2f(0xff800000u);{eps}
  __shared__ float sm_acc[WARPS][G][D], sm_m[WARPS][G], sm_l[WARPS][G];
  const unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  /* In a batched step P is the longest row's position: the splits cover every row. */
  const unsigned int T = step->new_tokens, P = step->cached_tokens, bt = step->block_tokens;
  if (T == 0u) return;
",
        h = spec.heads,
        kvh = spec.kv_heads,
        g = spec.group(),
        d = spec.d,
        e = spec.per_lane(),
        qo = spec.q_view.offset,
        qs = spec.q_view.row_stride,
        scale = f32_literal(spec.scale),
        eps = spec.norm_rope_eps.map(|e| format!("\n  const float EPS = {};", f32_literal(e))).unwrap_or_default(),
    ));
    let store = if split {
        s.push_str(
            "  const unsigned int nsplit = gridDim.x / (T * KVH) > 1u ? gridDim.x / (T * KVH) : 1u;
  const unsigned int span = (P + T + nsplit - 1u) / nsplit;
  if (blockIdx.x == 0u && threadIdx.x == 0u) ((unsigned int*)scratch)[0] = nsplit;
  float* __restrict__ part_acc = scratch + 4;
  float* __restrict__ part_ml = part_acc + (size_t)T * H * nsplit * D;
  for (unsigned int item = blockIdx.x; item < T * KVH * nsplit; item += gridDim.x) {
    const unsigned int s = item % nsplit, t = item / nsplit / KVH, kvh = item / nsplit % KVH;
",
        );
        "      const size_t r = (size_t)(t * H + h) * nsplit + s;
      part_acc[r * D + j] = a;
      if (j == 0u) { part_ml[2 * r] = mx; part_ml[2 * r + 1] = sum; }
"
        .to_string()
    } else {
        s.push_str(
            "  const unsigned int s = 0u, span = P + T;
  for (unsigned int item = blockIdx.x; item < T * KVH; item += gridDim.x) {
    const unsigned int t = item / KVH, kvh = item % KVH;
",
        );
        "      out[((size_t)t * H + h) * D + j] = smelt_attn_st(a / sum);\n".to_string()
    };
    let prologue = if spec.norm_rope_eps.is_some() { PROLOGUE } else { "" };
    s.push_str(&BODY.replace("$PROLOGUE", prologue).replace("$STORE", &store));
    s.push_str("  }\n}\n");
    let kind = if split { "attention_split" } else { "attention" };
    Kernel {
        name: name.to_string(),
        kind,
        source: super::wait_at_entry(s),
        launch: Launch { block: threads as u32, grid, shared_bytes: 0 },
    }
}

fn combine_kernel(name: &str, spec: &AttentionSpec) -> Kernel {
    let mut s = format!("{PRELUDE}{}", helpers(spec));
    s.push_str(&format!(
        "/* Combine kernel: merges the split kernel's partials (see its scratch layout) per (token, head). */
extern \"C\" __global__ void {name}(const float* __restrict__ scratch, smelt_attn_t* __restrict__ out, const smelt_step* __restrict__ step) {{
  constexpr unsigned int H = {h}u, D = {d}u;
  const unsigned int T = step->new_tokens, nsplit = ((const unsigned int*)scratch)[0];
  const float* __restrict__ part_acc = scratch + 4;
  const float* __restrict__ part_ml = part_acc + (size_t)T * H * nsplit * D;
  for (unsigned int th = blockIdx.x; th < T * H; th += gridDim.x) {{
    const float* __restrict__ ml = part_ml + (size_t)th * nsplit * 2;
    float mx = smelt_u2f(0xff800000u);
#pragma unroll 8
    for (unsigned int i = 0; i < nsplit; ++i) mx = fmaxf(mx, ml[2 * i]);
    for (unsigned int j = threadIdx.x; j < D; j += blockDim.x) {{
      float sum = 0.0f, a = 0.0f;
#pragma unroll 8
      for (unsigned int i = 0; i < nsplit; ++i) {{
        const float f = expf(ml[2 * i] - mx); /* 0 for a split with no visible key */
        sum += f * ml[2 * i + 1];
        a += f * part_acc[((size_t)th * nsplit + i) * D + j];
      }}
      out[(size_t)th * D + j] = smelt_attn_st(a / sum);
    }}
  }}
}}
",
        h = spec.heads,
        d = spec.d,
    ));
    let grid = Grid::Cover { shape: shape![Sym::NewTokens, spec.heads], per_block: 1, max: MAX_BLOCKS };
    Kernel {
        name: name.to_string(),
        kind: "attention_combine",
        source: super::wait_at_entry(s),
        launch: Launch { block: spec.d.clamp(32, 256) as u32, grid, shared_bytes: 0 },
    }
}
