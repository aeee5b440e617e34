//! Decode attention over the paged KV cache (`Attention`, `NormRopeAttention`), flash-decoding
//! style: memory-bound, so each K and V row is read once, coalesced, with many rows in flight.
//!
//! A block of `WARPS` warps takes one work item, a (query token `t`, KV head, context split).
//! A warp is `32 / LR` row groups of `LR` lanes: each group takes its own K/V rows, `U` at a
//! time, so a warp has `CHUNK = 32 / LR * U` rows in flight; a lane owns `E = D / LR` elements
//! of a row as 16-byte pieces (piece `c` of lane `r` holds elements `(c * LR + r) * EP ..`, so a
//! piece load is 128 contiguous bytes per row group, and with two pieces per lane RoPE's
//! partner `j + D/2` is in the same lane). Dot products reduce over the `LR` lanes of a group.
//! Each warp serves all `heads / kv_heads` query heads of its KV head, so a K/V row is loaded
//! once per group, and keeps per head an online-softmax state (running max, sum, unnormalized
//! output, f32). States merge across row groups (shuffles), then warps (shared memory).
//!
//! Split kernel: the context is cut into `max(1, gridDim.x / (T * KVH))` equal splits, so every
//! block has work whatever grid a captured CUDA graph replays with; the launch's grid (a cover
//! of `[T, KVH, P+T]` by `split_tokens`) makes that about `split_tokens` positions per split.
//! With one split a block normalizes and stores; otherwise it writes its partial state to the
//! f32 scratch buffer and bumps a per-(token, KV head) counter, and the last block of the item
//! merges every split with the usual log-sum-exp rescaling, stores, and resets the counter to 0
//! (no second kernel, no launch gap between the halves).
//!
//! Causal: query `t` sits at position `P + t` (`P = step->cached_tokens`) and sees keys
//! `0..=P+t`; the caches already hold this step's rows (the appends run first).
//!
//! Against `ir::eval` (`linalg::attention`, `fused::norm_rope_attention`): the prologue rounds
//! exactly where the reference does (products the reference rounds alone are `__fmul_rn`), but
//! these sums run in another order: the norm's sum of squares and the q.k dot products (lane
//! partials, then a tree, with FMAs), and the softmax, which is online (running max, rescaled
//! sums, merged across groups, warps and splits) and divides `sum(p * v)` by the sum once at
//! the end rather than weighting each value by `p / sum`. cosf/sinf/expf are CUDA's (not
//! libm's). Results therefore match the reference up to a tolerance, not bit for bit.

use smelt_ir::{shape, Bindings, DType, Sym};

use super::{Grid, Kernel, Launch, View};
use crate::expr::f32_literal;
use crate::PRELUDE;

/// Warps per block.
const WARPS: usize = 4;
/// K/V bytes a lane has in flight per iteration (K and V together): `U` rows of `E` elements.
const LANE_BYTES_IN_FLIGHT: usize = 256;
/// Grid cap: the kernels loop over their work items, so any grid is correct.
const MAX_BLOCKS: u32 = 65535;
/// 32-bit words before the partials in the scratch buffer: the split kernel's completion
/// counters, one per (token, KV head), which must be zero before the first launch (each last
/// block resets its own). A runtime zeroes these bytes when it allocates the scratch.
const SCRATCH_HEADER: usize = 1024;
/// Bytes at the start of the attention scratch buffer that must be zero before a launch.
pub const ATTENTION_SCRATCH_ZEROED_BYTES: usize = SCRATCH_HEADER * 4;

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

    /// Bytes of a row one lane owns: two 16-byte pieces when rows are 128 bytes or more.
    fn lane_bytes(&self) -> usize {
        if self.d * self.dtype.size_bytes() >= 128 {
            32
        } else {
            16
        }
    }

    /// Lanes per K/V row.
    fn lanes_per_row(&self) -> usize {
        self.d * self.dtype.size_bytes() / self.lane_bytes()
    }

    /// Whether the kernel handles a head dim `d` in `dtype`: rows of 64 to 1024 bytes in a power
    /// of two of 16-byte pieces.
    pub fn head_dim_supported(d: usize, dtype: DType) -> bool {
        let row = d * dtype.size_bytes();
        row % 64 == 0 && (64..=1024).contains(&row) && (row / 16).is_power_of_two() && d % 2 == 0
    }

    fn check(&self) {
        assert!(matches!(self.dtype, DType::BF16 | DType::F16 | DType::F32), "attention in {}", self.dtype);
        assert!(self.kv_heads > 0 && self.heads % self.kv_heads == 0, "kv_heads must divide heads");
        assert!(
            AttentionSpec::head_dim_supported(self.d, self.dtype),
            "head dim {} in {}: need rows of 64 to 1024 bytes, a power of two of 16-byte pieces",
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
/// unnormalized output in f32) to a scratch buffer, its last block merging them into the output
/// [T, heads, D] (see the module doc) — or, when split_tokens == 0, one block per (token, KV
/// head) over the whole context.
///
/// Parameters: the operands in order (see `AttentionSpec::norm_rope_eps`; positions are i32,
/// inv_freq f32, the rest `dtype`), the output, then `const smelt_step* step`. The split kernel
/// (`{name}_split`) takes `float* scratch` just before `step`: a buffer (16-byte aligned) of at
/// least [`decode_attention_scratch_bytes`] at the bindings its grid was computed for, whose
/// first [`ATTENTION_SCRATCH_ZEROED_BYTES`] are zero before the first launch. The grid sets how
/// many splits there are, so compute it from a large context when a captured graph replays it
/// as the context grows. The single kernel is `{name}`. K/V buffers must be 16-byte aligned.
pub fn decode_attention(name: &str, spec: &AttentionSpec) -> Vec<Kernel> {
    spec.check();
    if spec.split_tokens == 0 {
        let grid = Grid::Cover { shape: shape![Sym::NewTokens, spec.kv_heads], per_block: 1, max: MAX_BLOCKS };
        vec![main_kernel(name, spec, false, grid)]
    } else {
        vec![main_kernel(&format!("{name}_split"), spec, true, spec.split_grid())]
    }
}

/// Bytes of f32 scratch the split kernel needs for a given context length (`context`: the keys
/// visible to the last new token, cached + new) and T: the counters' header, then per (token,
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

/// Load, round and store helpers for the storage dtype, and element `i` of a 16-byte piece.
fn helpers(spec: &AttentionSpec) -> String {
    let (st, ld, round, store, lanes, elem) = match spec.dtype {
        DType::BF16 => (
            "unsigned short",
            "smelt_load_bf16(x)",
            "smelt_round_bf16(x)",
            "smelt_store_bf16(x)",
            "unsigned short h[8]",
            "smelt_load_bf16(u.h[i])",
        ),
        DType::F16 => (
            "unsigned short",
            "smelt_load_f16(x)",
            "smelt_round_f16(x)",
            "smelt_store_f16(x)",
            "unsigned short h[8]",
            "smelt_load_f16(u.h[i])",
        ),
        _ => ("float", "x", "x", "x", "float f[4]", "u.f[i]"),
    };
    let lr = spec.lanes_per_row();
    let half = lr / 2;
    format!(
        "typedef {st} smelt_attn_t;
/* The sum of v over the {lr} lanes of one K/V row (a butterfly: every lane gets the same bits). */
SMELT_FN float smelt_row_sum(float v) {{
#pragma unroll
  for (unsigned int m = {half}u; m > 0u; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}}
SMELT_FN float smelt_attn_ld(smelt_attn_t x) {{ return {ld}; }}
SMELT_FN float smelt_attn_round(float x) {{ return {round}; }}
SMELT_FN smelt_attn_t smelt_attn_st(float x) {{ return {store}; }}
/* Element i of a 16-byte piece (i is a constant after unrolling: the union stays in registers). */
SMELT_FN float smelt_attn_elem(uint4 v, unsigned int i) {{ union {{ uint4 v; {lanes}; }} u; u.v = v; return {elem}; }}
/* A load that skips L1: partials other blocks wrote. */
SMELT_FN float smelt_ldcg(const float* p) {{ float v; asm volatile(\"ld.global.cg.f32 %0, [%1];\" : \"=f\"(v) : \"l\"(p)); return v; }}
"
    )
}

/// The queries' RMSNorm + RoPE, in place on `qv` (each lane's elements of each head). With two
/// pieces per lane, element `e` and its RoPE partner `e + E/2` are in the same lane; with one,
/// the partner is in lane `r ^ LR/2`.
fn prologue(in_lane_pairs: bool) -> String {
    let rotate = if in_lane_pairs {
        "        float rot[E];
#pragma unroll
        for (unsigned int e = 0; e < E; ++e) rot[e] = e < E / 2u ? -y[e + E / 2u] : y[e - E / 2u];
"
    } else {
        "        float rot[E];
#pragma unroll
        for (unsigned int e = 0; e < E; ++e) {
          const float other = __shfl_xor_sync(0xffffffffu, y[e], LR / 2u);
          rot[e] = r < LR / 2u ? -other : other;
        }
"
    };
    format!(
        "    {{
      const float pos = (float)positions[t];
#pragma unroll
      for (unsigned int g = 0; g < G; ++g) {{
        float ss = 0.0f;
#pragma unroll
        for (unsigned int e = 0; e < E; ++e) ss += __fmul_rn(qv[g][e], qv[g][e]);
        const float inv = 1.0f / sqrtf(smelt_row_sum(ss) / (float)D + EPS);
        float y[E];
#pragma unroll
        for (unsigned int e = 0; e < E; ++e)
          y[e] = smelt_attn_round(__fmul_rn(smelt_attn_ld(q_norm_w[COL(r, e)]), smelt_attn_round(__fmul_rn(qv[g][e], inv))));
        /* NeoX rotation: element j pairs with j +- D/2. */
{rotate}#pragma unroll
        for (unsigned int e = 0; e < E; ++e) {{
          const float f = __fmul_rn(pos, inv_freq[COL(r, e) % (D / 2u)]);
          const float c = smelt_attn_round(cosf(f)), s = smelt_attn_round(sinf(f));
          qv[g][e] = smelt_attn_round(smelt_attn_round(__fmul_rn(y[e], c)) + smelt_attn_round(__fmul_rn(rot[e], s)));
        }}
      }}
    }}
"
    )
}

/// One work item: the online softmax over positions `lo..hi` of KV head `kvh` for token `t`,
/// merged over the warp's row groups and then over the warps into `sm_*`, then `$STORE` per
/// output element `(g, j)` with the merged max `mx`, sum `sum` and unnormalized output `a`.
const BODY: &str = r#"    const unsigned int end = P + t + 1u; /* keys 0..=P+t */
    const unsigned int lo = s * span, hi = lo + span < end ? lo + span : end;
    float qv[G][E];
#pragma unroll
    for (unsigned int g = 0; g < G; ++g)
#pragma unroll
      for (unsigned int e = 0; e < E; ++e)
        qv[g][e] = smelt_attn_ld(q[Q_OFFSET + (size_t)t * Q_STRIDE + (kvh * G + g) * D + COL(r, e)]);
$PROLOGUE    float m[G], l[G], acc[G][E];
#pragma unroll
    for (unsigned int g = 0; g < G; ++g) {
      m[g] = NEG_INF; l[g] = 0.0f;
#pragma unroll
      for (unsigned int e = 0; e < E; ++e) acc[g][e] = 0.0f;
    }
    for (unsigned int base = lo + warp * CHUNK; base < hi; base += WARPS * CHUNK) {
      /* Row group `grp` takes positions base + grp, base + grp + RPW, ...: all loads first. */
      uint4 kr[U][NP], vr[U][NP];
#pragma unroll
      for (unsigned int u = 0; u < U; ++u) {
        const unsigned int p = base + u * RPW + grp;
        if (p < hi) {
          const size_t row = ((size_t)table[p / bt] * bt + p % bt) * KVH + kvh;
#pragma unroll
          for (unsigned int c = 0; c < NP; ++c) {
            kr[u][c] = *(const uint4*)(k_cache + row * D + (c * LR + r) * EP);
            vr[u][c] = *(const uint4*)(v_cache + row * D + (c * LR + r) * EP);
          }
        } else {
#pragma unroll
          for (unsigned int c = 0; c < NP; ++c) kr[u][c] = vr[u][c] = uint4{0u, 0u, 0u, 0u};
        }
      }
#pragma unroll
      for (unsigned int g = 0; g < G; ++g) {
        float sc[U], cmax = NEG_INF;
#pragma unroll
        for (unsigned int u = 0; u < U; ++u) {
          float dot = 0.0f;
#pragma unroll
          for (unsigned int e = 0; e < E; ++e) dot += qv[g][e] * smelt_attn_elem(kr[u][e / EP], e % EP);
          dot = smelt_row_sum(dot) * SCALE;
          sc[u] = base + u * RPW + grp < hi ? dot : NEG_INF;
          cmax = fmaxf(cmax, sc[u]);
        }
        if (cmax == NEG_INF) continue; /* this row group had no position in this chunk */
        const float mn = fmaxf(m[g], cmax), corr = expf(m[g] - mn);
        l[g] *= corr;
#pragma unroll
        for (unsigned int e = 0; e < E; ++e) acc[g][e] *= corr;
#pragma unroll
        for (unsigned int u = 0; u < U; ++u) {
          const float pr = expf(sc[u] - mn);
          l[g] += pr;
#pragma unroll
          for (unsigned int e = 0; e < E; ++e) acc[g][e] += pr * smelt_attn_elem(vr[u][e / EP], e % EP);
        }
        m[g] = mn;
      }
    }
    /* Merge the warp's row groups (lanes r of every group own the same elements). */
#pragma unroll
    for (unsigned int off = LR; off < 32u; off <<= 1) {
#pragma unroll
      for (unsigned int g = 0; g < G; ++g) {
        const float mo = __shfl_xor_sync(0xffffffffu, m[g], off), lo_ = __shfl_xor_sync(0xffffffffu, l[g], off);
        const float mn = fmaxf(m[g], mo);
        const float fa = m[g] == NEG_INF ? 0.0f : expf(m[g] - mn), fb = mo == NEG_INF ? 0.0f : expf(mo - mn);
        l[g] = fa * l[g] + fb * lo_;
#pragma unroll
        for (unsigned int e = 0; e < E; ++e) acc[g][e] = fa * acc[g][e] + fb * __shfl_xor_sync(0xffffffffu, acc[g][e], off);
        m[g] = mn;
      }
    }
    /* Merge the warps' states: a warp that saw no position has max -inf and adds nothing. */
    if (grp == 0u) {
#pragma unroll
      for (unsigned int g = 0; g < G; ++g) {
        if (r == 0u) { sm_m[warp][g] = m[g]; sm_l[warp][g] = l[g]; }
#pragma unroll
        for (unsigned int e = 0; e < E; ++e) sm_acc[warp][g][COL(r, e)] = acc[g][e];
      }
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

/// The split kernel's tail: the last block of an item (by the counter) merges every split.
const COMBINE: &str = r#"    if (nsplit > 1u) {
      __threadfence();
      __syncthreads();
      if (threadIdx.x == 0u) sm_last = atomicAdd(&counters[t * KVH + kvh], 1u) + 1u == nsplit;
      __syncthreads();
      if (sm_last) {
        __threadfence();
        /* Warp w merges splits w, w + WARPS, ...; lane l owns elements l, l + 32, ... */
#pragma unroll
        for (unsigned int g = 0; g < G; ++g) {
          const size_t r0 = (size_t)(t * H + kvh * G + g) * nsplit;
          float cm = NEG_INF, cl = 0.0f, ca[(D + 31u) / 32u];
#pragma unroll
          for (unsigned int e = 0; e < (D + 31u) / 32u; ++e) ca[e] = 0.0f;
          for (unsigned int sp = warp; sp < nsplit; sp += WARPS) {
            const float pm = smelt_ldcg(part_ml + 2u * (r0 + sp)), pl = smelt_ldcg(part_ml + 2u * (r0 + sp) + 1u);
            const float mn = fmaxf(cm, pm);
            const float fa = cm == NEG_INF ? 0.0f : expf(cm - mn), fb = pm == NEG_INF ? 0.0f : expf(pm - mn);
            cl = fa * cl + fb * pl;
#pragma unroll
            for (unsigned int e = 0; e < (D + 31u) / 32u; ++e) {
              const unsigned int j = lane + 32u * e;
              if (j < D) ca[e] = fa * ca[e] + fb * smelt_ldcg(part_acc + (r0 + sp) * D + j);
            }
            cm = mn;
          }
          if (lane == 0u) { sm_m[warp][g] = cm; sm_l[warp][g] = cl; }
#pragma unroll
          for (unsigned int e = 0; e < (D + 31u) / 32u; ++e)
            if (lane + 32u * e < D) sm_acc[warp][g][lane + 32u * e] = ca[e];
        }
        __syncthreads();
        for (unsigned int i = threadIdx.x; i < G * D; i += blockDim.x) {
          const unsigned int g = i / D, j = i % D, h = kvh * G + g;
          float mx = NEG_INF, sum = 0.0f, a = 0.0f;
#pragma unroll
          for (unsigned int w = 0; w < WARPS; ++w) mx = fmaxf(mx, sm_m[w][g]);
#pragma unroll
          for (unsigned int w = 0; w < WARPS; ++w) {
            const float f = sm_m[w][g] == NEG_INF ? 0.0f : expf(sm_m[w][g] - mx);
            sum += f * sm_l[w][g];
            a += f * sm_acc[w][g][j];
          }
          out[((size_t)t * H + h) * D + j] = smelt_attn_st(a / sum);
        }
        if (threadIdx.x == 0u) counters[t * KVH + kvh] = 0u;
        __syncthreads();
      }
    }
"#;

fn main_kernel(name: &str, spec: &AttentionSpec, split: bool, grid: Grid) -> Kernel {
    let mut params = vec!["const smelt_attn_t* __restrict__ q".to_string()];
    if spec.norm_rope_eps.is_some() {
        params.push("const smelt_attn_t* __restrict__ q_norm_w".into());
        params.push("const int* __restrict__ positions".into());
        params.push("const float* __restrict__ inv_freq".into());
    }
    params.push("const smelt_attn_t* __restrict__ k_cache".into());
    params.push("const smelt_attn_t* __restrict__ v_cache".into());
    params.push("smelt_attn_t* __restrict__ out".into());
    if split {
        params.push("float* __restrict__ scratch".into());
    }
    params.push("const smelt_step* __restrict__ step".into());
    let threads = WARPS * 32;
    let elt = spec.dtype.size_bytes();
    let (lr, lane_bytes) = (spec.lanes_per_row(), spec.lane_bytes());
    let (ep, np) = (16 / elt, lane_bytes / 16);
    let u = (LANE_BYTES_IN_FLIGHT / (2 * lane_bytes)).max(1);
    let mut s = format!("{PRELUDE}{}", helpers(spec));
    s.push_str(if split {
        "/* Split kernel: scratch holds SCRATCH_HEADER u32 counters, then f32 [T, heads, S, D]\n   unnormalized outputs, then [T, heads, S] (max, sum) pairs, S the split count. */\n"
    } else {
        "/* Single kernel: one block per (token, KV head) over the whole context. */\n"
    });
    s.push_str(&format!(
        "extern \"C\" __global__ void __launch_bounds__({threads}) {name}({}) {{\n",
        params.join(", ")
    ));
    s.push_str(&format!(
        "  constexpr unsigned int H = {h}u, KVH = {kvh}u, G = {g}u, D = {d}u, WARPS = {WARPS}u;
  /* LR lanes per K/V row, each owning NP 16-byte pieces of EP elements (E in all); RPW row
     groups per warp, U rows per group in flight: CHUNK rows per warp per iteration. */
  constexpr unsigned int LR = {lr}u, NP = {np}u, EP = {ep}u, E = NP * EP, RPW = 32u / LR, U = {u}u, CHUNK = RPW * U;
  constexpr size_t Q_OFFSET = {qo}u, Q_STRIDE = {qs}u;
  const float SCALE = {scale}, NEG_INF = smelt_u2f(0xff800000u);{eps}
#define COL(r, e) ((((e) / EP) * LR + (r)) * EP + (e) % EP)
  __shared__ float sm_acc[WARPS][G][D], sm_m[WARPS][G], sm_l[WARPS][G];
  const unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, grp = lane / LR, r = lane % LR;
  const unsigned int T = step->new_tokens, P = step->cached_tokens, bt = step->block_tokens;
  const unsigned int* __restrict__ table = step->block_table;
  if (T == 0u) return;
",
        h = spec.heads,
        kvh = spec.kv_heads,
        g = spec.group(),
        d = spec.d,
        qo = spec.q_view.offset,
        qs = spec.q_view.row_stride,
        scale = f32_literal(spec.scale),
        eps = spec.norm_rope_eps.map(|e| format!("\n  const float EPS = {};", f32_literal(e))).unwrap_or_default(),
    ));
    let store = if split {
        s.push_str(&format!(
            "  constexpr unsigned int SCRATCH_HEADER = {SCRATCH_HEADER}u;
  __shared__ bool sm_last;
  const unsigned int nsplit = gridDim.x / (T * KVH) > 1u ? gridDim.x / (T * KVH) : 1u;
  const unsigned int span = (P + T + nsplit - 1u) / nsplit;
  if (T * KVH > SCRATCH_HEADER) __trap(); /* more items than completion counters */
  unsigned int* __restrict__ counters = (unsigned int*)scratch;
  float* __restrict__ part_acc = scratch + SCRATCH_HEADER;
  float* __restrict__ part_ml = part_acc + (size_t)T * H * nsplit * D;
  for (unsigned int item = blockIdx.x; item < T * KVH * nsplit; item += gridDim.x) {{
    const unsigned int s = item % nsplit, t = item / nsplit / KVH, kvh = item / nsplit % KVH;
"
        ));
        "      if (nsplit == 1u) {
        out[((size_t)t * H + h) * D + j] = smelt_attn_st(a / sum);
      } else {
        const size_t rr = (size_t)(t * H + h) * nsplit + s;
        part_acc[rr * D + j] = a;
        if (j == 0u) { part_ml[2 * rr] = mx; part_ml[2 * rr + 1] = sum; }
      }
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
    let prologue = if spec.norm_rope_eps.is_some() { prologue(np % 2 == 0) } else { String::new() };
    s.push_str(&BODY.replace("$PROLOGUE", &prologue).replace("$STORE", &store));
    if split {
        s.push_str(COMBINE);
    }
    s.push_str("  }\n#undef COL\n}\n");
    let kind = if split { "attention_split" } else { "attention" };
    Kernel {
        name: name.to_string(),
        kind,
        source: super::wait_at_entry(s),
        launch: Launch { block: threads as u32, grid, shared_bytes: 0 },
    }
}
