typedef unsigned short smelt_pa_t;
SMELT_FN float smelt_pa_ld(smelt_pa_t x) { return smelt_load_$DTYPE(x); }
SMELT_FN float smelt_pa_round(float x) { return smelt_round_$DTYPE(x); }
/* Prefill attention: a block per (KV head, tile of $BQ (token, group head) rows); see prefill_attention.rs. */
extern "C" __global__ void __launch_bounds__($THREADS) $NAME($PARAMS) {
$GRID_WAIT
  constexpr unsigned int H = $Hu, KVH = $KVHu, G = $Gu, D = $Du, BQ = $BQu, BK = $BKu;
  constexpr size_t Q_OFFSET = $Q_OFFSETu, Q_STRIDE = $Q_STRIDEu;
  const float SCALE = $SCALE, NEG_INF = smelt_u2f(0xff800000u);$EPS_DECL
  /* K and V tiles [BK][D], swizzled (chunk c of row r at c ^ (r % 8)); sv also stages Q. */
  __shared__ alignas(16) smelt_pa_t sk[BK * D], sv[BK * D];
  const unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  const unsigned int T = step->new_tokens, P = step->cached_tokens, bt = step->block_tokens;
  const unsigned int* __restrict__ table = step->block_table;
  if (T == 0u) return;
  const unsigned int sk_base = smelt_smem_addr(sk);
  const unsigned int sv_base = smelt_smem_addr(sv);
  /* Tile copies: thread i moves chunk i % 16 of tile rows i / 16 + 8 c (c < 8): 16 threads read
     a 256-byte row. All its rows have the same row % 8, so one swizzled offset serves them. */
  const unsigned int cp_row = threadIdx.x >> 4, cp_chunk = threadIdx.x & 15u;
  const unsigned int cp_dst = (cp_row * D + (cp_chunk ^ (cp_row & 7u)) * 8u) * 2u;
  const unsigned int rows = T * G, tiles = (rows + BQ - 1u) / BQ;
  for (unsigned int item = blockIdx.x; item < tiles * KVH; item += gridDim.x) {
    const unsigned int tile = tiles - 1u - item / KVH, kvh = item % KVH, r0 = tile * BQ;
    /* Keys 0..end-1 are visible to some row of the tile (its last row's token sees the most). */
    const unsigned int end = P + ((r0 + BQ < rows ? r0 + BQ : rows) - 1u) / G + 1u;
    const unsigned int nk = (end + BK - 1u) / BK;
    /* The last key a row sees; padding rows (past T * G, never stored) clamp to token T - 1 so
       that they see keys too and their softmax stays finite. */
    auto limit = [&](unsigned int r) { return P + (r / G < T ? r / G : T - 1u); };
    /* This lane's fragment rows (g and g + 8 of the warp's 16), and the warp's first and last. */
    const unsigned int wr = r0 + warp * 16u, ra = wr + (lane >> 2), rb = ra + 8u;
    const unsigned int lim_a = limit(ra), lim_b = limit(rb), lim_first = limit(wr), lim_last = limit(wr + 15u);
    /* Cache rows (in units of D) of this thread's copy rows in key tile kbase, through the block
       table; one lookup serves K_j and V_j. Rows past `end` are zero-filled, not read. */
    unsigned int kv_row[8];
    auto lookup = [&](unsigned int kbase) {
#pragma unroll
      for (unsigned int c = 0; c < 8u; ++c) {
        const unsigned int p = kbase + cp_row + 8u * c;
        kv_row[c] = p < end ? smelt_cache_row(table, p, bt) * KVH + kvh : 0u;
      }
    };
    auto copy = [&](unsigned int dst, const smelt_pa_t* __restrict__ cache, unsigned int kbase) {
#pragma unroll
      for (unsigned int c = 0; c < 8u; ++c) {
        const bool ok = kbase + cp_row + 8u * c < end;
        smelt_cp_async16(dst + cp_dst + c * (8u * D * 2u), cache + (size_t)kv_row[c] * D + cp_chunk * 8u, ok ? 16u : 0u);
      }
      smelt_cp_async_commit();
    };
    lookup(0u);
    copy(sk_base, k_cache, 0u);
    __syncthreads(); /* every warp is done with sv (the previous item's last P V) */
    /* Q tile -> sv: each warp stages its own 16 rows, lane holding elements 4 lane .. 4 lane + 3
       (8 bytes: half of swizzled chunk lane / 2), so a __syncwarp orders them for its ldmatrix. */
#pragma unroll 1
    for (unsigned int i = 0; i < 16u; ++i) {
      const unsigned int r = warp * 16u + i, row = r0 + r;
      float x[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      if (row < rows) { /* warp-uniform: the prologue's shuffles see all lanes */
        const unsigned int t = row / G, h = kvh * G + row % G;
        const smelt_pa_t* __restrict__ src = q + Q_OFFSET + (size_t)t * Q_STRIDE + h * D + lane * 4u;
#pragma unroll
        for (unsigned int e = 0; e < 4u; ++e) x[e] = smelt_pa_ld(src[e]);
$PROLOGUE      }
      unsigned int* dst = (unsigned int*)(sv + r * D + ((lane >> 1) ^ (r & 7u)) * 8u + (lane & 1u) * 4u);
      dst[0] = smelt_pack_$DTYPE(x[0], x[1]);
      dst[1] = smelt_pack_$DTYPE(x[2], x[3]);
    }
    __syncwarp();
    /* A fragments of Q, k-step kk = d 16 kk .. 16 kk + 15: matrices (rows 0-7, chunk 2kk), (rows
       8-15, 2kk), (rows 0-7, 2kk+1), (rows 8-15, 2kk+1) = a0..a3; lane addresses row lane % 16
       of matrix lane / 8. (r % 8 = lane % 8: the warp's rows start at a multiple of 16.) */
    unsigned int qf[8][4];
#pragma unroll
    for (unsigned int kk = 0; kk < 8u; ++kk) {
      const unsigned int r = warp * 16u + (lane & 15u), chunk = 2u * kk + (lane >> 4);
      smelt_ldmatrix_x4(sv_base + (r * D + (chunk ^ (lane & 7u)) * 8u) * 2u, qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3]);
    }
    /* Online softmax state of rows g (index 0) and g + 8 (index 1): this lane's partial row sum
       (its quad's 4 partials add up at the end), and the running max, the same in the quad. */
    float o[16][4], m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (unsigned int n = 0; n < 16u; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    for (unsigned int j = 0; j < nk; ++j) {
      const unsigned int kbase = j * BK;
      SMELT_CP_ASYNC_WAIT(0);
      __syncthreads(); /* K_j is in sk; every warp is done with sv (Q staging or P V_{j-1}) */
      copy(sv_base, v_cache, kbase);
      /* Warp-uniform: skip a tile no row of the warp sees, and a warp of padding rows skips
         everything (it still copies and syncs; its rows are never stored). */
      const bool active = wr < rows && kbase <= lim_last;
      unsigned int pf[4][4];
      if (active) {
        /* S = Q K^T: s[n] is the C tile of keys kbase + 8n .. + 7. ldmatrix matrices (keys
           16np + 0-7, chunk 2kk), (0-7, 2kk+1), (8-15, 2kk), (8-15, 2kk+1) = b0, b1 of n-tile
           2np and b0, b1 of 2np+1; lane addresses key lane % 8 + 8 (lane / 16), chunk + lane / 8 % 2. */
        float s[8][4];
#pragma unroll
        for (unsigned int n = 0; n < 8u; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (unsigned int kk = 0; kk < 8u; ++kk)
#pragma unroll
          for (unsigned int np = 0; np < 4u; ++np) {
            const unsigned int key = 16u * np + (lane & 7u) + ((lane >> 4) << 3), chunk = 2u * kk + ((lane >> 3) & 1u);
            unsigned int b[4];
            smelt_ldmatrix_x4(sk_base + (key * D + (chunk ^ (lane & 7u)) * 8u) * 2u, b[0], b[1], b[2], b[3]);
            smelt_mma_$DTYPE(s[2u * np], qf[kk], b[0], b[1]);
            smelt_mma_$DTYPE(s[2u * np + 1u], qf[kk], b[2], b[3]);
          }
        /* Scale, mask (element i of tile n: row i < 2 ? g : g + 8, key kbase + 8n + 2(lane % 4)
           + i % 2), row max over the quad (lanes ^ 1, ^ 2 share the rows). Tile 0 holds key 0,
           which every row sees, so m is finite from the first tile on: no -inf - -inf. */
        const bool edge = kbase + BK - 1u > lim_first;
        float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (unsigned int n = 0; n < 8u; ++n)
#pragma unroll
          for (unsigned int i = 0; i < 4u; ++i) {
            float v = __fmul_rn(s[n][i], SCALE);
            if (edge && kbase + 8u * n + 2u * (lane & 3u) + (i & 1u) > (i < 2u ? lim_a : lim_b)) v = NEG_INF;
            s[n][i] = v;
            mx[i >> 1] = fmaxf(mx[i >> 1], v);
          }
#pragma unroll
        for (unsigned int r = 0; r < 2u; ++r) {
          mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
          mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
          const float mn = fmaxf(m[r], mx[r]), corr = expf(m[r] - mn);
          m[r] = mn;
          l[r] *= corr;
#pragma unroll
          for (unsigned int n = 0; n < 16u; ++n) { o[n][2u * r] *= corr; o[n][2u * r + 1u] *= corr; }
        }
#pragma unroll
        for (unsigned int n = 0; n < 8u; ++n)
#pragma unroll
          for (unsigned int i = 0; i < 4u; ++i) {
            const float p = expf(s[n][i] - m[i >> 1]);
            l[i >> 1] += p;
            s[n][i] = p;
          }
        /* P's A fragments, k-step kk = keys 16kk .. 16kk + 15 = C tiles 2kk (cols 0-7) and
           2kk+1 (cols 8-15): a0 = (g, lo) = s[2kk][0,1], a1 = (g+8, lo) = s[2kk][2,3], a2, a3
           the same of s[2kk+1]. Rounded to the storage dtype here (see the module doc). */
#pragma unroll
        for (unsigned int kk = 0; kk < 4u; ++kk) {
          pf[kk][0] = smelt_pack_$DTYPE(s[2u * kk][0], s[2u * kk][1]);
          pf[kk][1] = smelt_pack_$DTYPE(s[2u * kk][2], s[2u * kk][3]);
          pf[kk][2] = smelt_pack_$DTYPE(s[2u * kk + 1u][0], s[2u * kk + 1u][1]);
          pf[kk][3] = smelt_pack_$DTYPE(s[2u * kk + 1u][2], s[2u * kk + 1u][3]);
        }
      }
      /* V_j's copy is issued: look K_{j+1}'s rows up now (S is dead, few registers are live),
         the table loads' latency overlapping the wait for V_j. */
      if (j + 1u < nk) lookup(kbase + BK);
      SMELT_CP_ASYNC_WAIT(0);
      __syncthreads(); /* V_j is in sv; every warp is done with sk */
      if (j + 1u < nk) copy(sk_base, k_cache, kbase + BK);
      if (active) {
        /* O += P V: o[n] is the C tile of d 8n .. 8n + 7 (= chunk n). ldmatrix.trans matrices
           (keys 16kk + 0-7, chunk 2dp), (8-15, 2dp), (0-7, 2dp+1), (8-15, 2dp+1) = b0, b1 of
           d-tile 2dp and b0, b1 of 2dp+1; lane addresses key 16kk + lane % 16, chunk + lane / 16. */
#pragma unroll
        for (unsigned int kk = 0; kk < 4u; ++kk)
#pragma unroll
          for (unsigned int dp = 0; dp < 8u; ++dp) {
            const unsigned int key = 16u * kk + (lane & 15u), chunk = 2u * dp + (lane >> 4);
            unsigned int b[4];
            smelt_ldmatrix_x4_trans(sv_base + (key * D + (chunk ^ (lane & 7u)) * 8u) * 2u, b[0], b[1], b[2], b[3]);
            smelt_mma_$DTYPE(o[2u * dp], pf[kk], b[0], b[1]);
            smelt_mma_$DTYPE(o[2u * dp + 1u], pf[kk], b[2], b[3]);
          }
      }
    }
    /* Normalize and store: lane holds d 8n + 2(lane % 4) + {0, 1} of rows ra, rb (one word). */
#pragma unroll
    for (unsigned int r = 0; r < 2u; ++r) {
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
      const unsigned int row = r == 0u ? ra : rb;
      if (row < rows) {
        unsigned int* __restrict__ dst = (unsigned int*)(out + ((size_t)(row / G) * H + kvh * G + row % G) * D) + (lane & 3u);
#pragma unroll
        for (unsigned int n = 0; n < 16u; ++n) dst[4u * n] = smelt_pack_$DTYPE(o[n][2u * r] / l[r], o[n][2u * r + 1u] / l[r]);
      }
    }
  }
}
