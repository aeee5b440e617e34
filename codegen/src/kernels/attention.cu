$ABOUT
extern "C" __global__ void __launch_bounds__($THREADS) $NAME($PARAMS) {
$GRID_WAIT
  constexpr unsigned int H = $Hu, KVH = $KVHu, G = $Gu, D = $Du, E = $Eu, WARPS = $WARPSu, CHUNK = $CHUNKu;
  constexpr size_t Q_OFFSET = $Q_OFFSETu, Q_STRIDE = $Q_STRIDEu;
  const float SCALE = $SCALE, NEG_INF = smelt_u2f(0xff800000u);$EPS_DECL
  __shared__ float sm_acc[WARPS][G][D], sm_m[WARPS][G], sm_l[WARPS][G];
  const unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  /* In a batched step P is the longest row's position: the splits cover every row. */
  const unsigned int T = step->new_tokens, P = step->cached_tokens, bt = step->block_tokens;
  if (T == 0u) return;
$ITEMS    /* keys 0..=P+t, or 0..=row_positions[t] in a batched step (the row's own sequence) */
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
        my_row = smelt_cache_row(row_table, p, bt) * KVH + kvh;
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
$MERGE  }
}
