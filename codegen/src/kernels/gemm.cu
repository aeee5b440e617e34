/* Byte offset of 16-byte chunk c of row r in a 64-byte-row tile, swizzled (see the module). */
SMELT_FN unsigned int gemm_swz(unsigned int r, unsigned int c) { return r * 64u + ((c ^ ((r >> 1) & 3u)) << 4); }
#ifdef __CUDACC__
/* Split-K partial sums, two floats at a time. Loads go through L2 only (.cg): the partials of
   other blocks, written during this launch, must not come from a stale L1 line. */
SMELT_FN void gemm_store_pair(float* p, float a, float b) {
  asm volatile("st.global.v2.f32 [%0], {%1, %2};" :: "l"(p), "f"(a), "f"(b) : "memory");
}
SMELT_FN void gemm_load_pair(const float* p, float& a, float& b) {
  asm volatile("ld.global.cg.v2.f32 {%0, %1}, [%2];" : "=f"(a), "=f"(b) : "l"(p) : "memory");
}
#else
/* The host emulation's: plain accesses (its barriers and fences order them). */
SMELT_FN void gemm_store_pair(float* p, float a, float b) { p[0] = a, p[1] = b; }
SMELT_FN void gemm_load_pair(const float* p, float& a, float& b) { a = p[0], b = p[1]; }
#endif
/* $NAME: y[T, $N_OUT] = $EPILOGUE_TEXT over acc = x[T, $K] @ w[$N, $K]^T, T = step->new_tokens. */
extern "C" __global__ void __launch_bounds__($BLOCK, 2) $NAME(
    $PARAMS) {
$GRID_WAIT
  constexpr unsigned int K = $Ku, N_OUT = $N_OUTu, PARTS = $PARTSu;
  constexpr unsigned int X_OFFSET = $X_OFFSETu, X_STRIDE = $X_STRIDEu;
  constexpr unsigned int BM = 128u, BK = 32u, STAGES = 3u, KT = K / BK;
  constexpr unsigned int TILE_BYTES = BM * BK * 2u, STAGE_BYTES = 2u * TILE_BYTES;
  /* Output columns per block and per warp, and n-tiles per part in a warp. */
  constexpr unsigned int COLS = 128u / PARTS, WCOLS = 32u / PARTS, JP = 4u / PARTS;
  constexpr unsigned int N_TILES = (N_OUT + COLS - 1u) / COLS;
  /* Split-K (gemm.rs): at most MAX_SPLITS splits of K per output tile, as many as keep
     tiles x splits within TARGET blocks; 1 folds every split away. */
  constexpr unsigned int MAX_SPLITS = $MAX_SPLITSu, TARGET = $TARGETu;
  extern __shared__ uint4 gemm_smem[];
  const unsigned int smem = smelt_smem_addr(gemm_smem);
  const unsigned int tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5;
  /* This warp's 64 rows (wm) and 32 weight rows (wn) of the block tile. */
  const unsigned int wm = warp & 1u, wn = warp >> 1;
  const unsigned int M = $M;
  const unsigned int m_tiles = (M + BM - 1u) / BM, tiles = m_tiles * N_TILES;
  const unsigned int fit = TARGET / (tiles > 0u ? tiles : 1u);
  const unsigned int splits = MAX_SPLITS == 1u || fit < 2u ? 1u : (fit < MAX_SPLITS ? fit : MAX_SPLITS);
  /* Work unit = (tile, split), tiles fastest (within them M fastest, as blocks running
     together then share weight tiles in L2). */
  for (unsigned int unit = blockIdx.x; unit < tiles * splits; unit += gridDim.x) {
    const unsigned int split = MAX_SPLITS == 1u ? 0u : unit / tiles, tile = unit - split * tiles;
    /* This split's K steps kt0 .. kt0 + steps, balanced: sizes differ by at most one. */
    const unsigned int kt0 = split * KT / splits, steps = (split + 1u) * KT / splits - kt0;
    const unsigned int m0 = (tile % m_tiles) * BM, c0 = (tile / m_tiles) * COLS;
    /* This thread's cp.async chunks: chunk i = tid + 256 j of a tile is row i / 4, 16-byte
       chunk i % 4, for A (x rows m0 + row) and B (the weight row of tile row `row`). */
    const $STORAGE* a_src[2];
    const $STORAGE* b_src[2];
    unsigned int a_bytes[2], b_bytes[2], dst[2];
#pragma unroll
    for (unsigned int j = 0; j < 2u; j++) {
      const unsigned int i = tid + j * 256u, row = i >> 2, c = i & 3u;
      dst[j] = gemm_swz(row, c);
      const bool a_ok = m0 + row < M;
      a_src[j] = x + X_OFFSET + (unsigned long long)(a_ok ? m0 + row : 0u) * X_STRIDE + c * 8u + kt0 * BK;
      a_bytes[j] = a_ok ? 16u : 0u;
      const unsigned int nt = (row >> 3) & 3u; /* the n-tile within warp column row / 32 */
      const unsigned int col = c0 + (row >> 5) * WCOLS + (nt % JP) * 8u + (row & 7u);
      const bool b_ok = col < N_OUT;
      b_src[j] = w + (unsigned long long)(b_ok ? (nt / JP) * N_OUT + col : 0u) * K + c * 8u + kt0 * BK;
      b_bytes[j] = b_ok ? 16u : 0u;
    }
#define GEMM_LOAD(kt) \
    _Pragma("unroll") for (unsigned int j = 0; j < 2u; j++) { \
      const unsigned int stage = smem + ((kt) % STAGES) * STAGE_BYTES; \
      smelt_cp_async16(stage + dst[j], a_src[j] + (kt) * BK, a_bytes[j]); \
      smelt_cp_async16(stage + TILE_BYTES + dst[j], b_src[j] + (kt) * BK, b_bytes[j]); \
    }
    /* sum[mi][j]: the C fragment of m-tile mi (rows 16 mi) and n-tile j (weight rows 8 j). */
    float sum[4][4][4] = {};
#pragma unroll
    for (unsigned int s = 0; s < STAGES - 1u; s++) {
      if (s < steps) { GEMM_LOAD(s) }
      smelt_cp_async_commit();
    }
    for (unsigned int kt = 0; kt < steps; kt++) {
      /* Groups committed so far: STAGES - 1 + kt; at most STAGES - 2 pending: stage kt is in. */
      SMELT_CP_ASYNC_WAIT(STAGES - 2u);
      __syncthreads();
      if (kt + STAGES - 1u < steps) { GEMM_LOAD(kt + STAGES - 1u) }
      smelt_cp_async_commit();
      const unsigned int sa = smem + (kt % STAGES) * STAGE_BYTES, sb = sa + TILE_BYTES;
#pragma unroll
      for (unsigned int kk = 0; kk < 2u; kk++) {
        unsigned int a[4][4], b[4][2];
#pragma unroll
        for (unsigned int mi = 0; mi < 4u; mi++)
          smelt_ldmatrix_x4(sa + gemm_swz(wm * 64u + mi * 16u + (lane & 15u), kk * 2u + (lane >> 4)),
                     a[mi][0], a[mi][1], a[mi][2], a[mi][3]);
#pragma unroll
        for (unsigned int jp = 0; jp < 2u; jp++)
          smelt_ldmatrix_x4(sb + gemm_swz(wn * 32u + jp * 16u + ((lane >> 4) << 3) + (lane & 7u), kk * 2u + ((lane >> 3) & 1u)),
                     b[2u * jp][0], b[2u * jp][1], b[2u * jp + 1u][0], b[2u * jp + 1u][1]);
#pragma unroll
        for (unsigned int mi = 0; mi < 4u; mi++)
#pragma unroll
          for (unsigned int j = 0; j < 4u; j++) smelt_mma_$MMA_TYPE(sum[mi][j], a[mi], b[j][0], b[j][1]);
      }
    }
#undef GEMM_LOAD
    /* Only empty groups remain; every warp is done with the ring before the next tile's
       prologue refills it. */
    SMELT_CP_ASYNC_WAIT(0);
    __syncthreads();
$COMBINE    /* Epilogue: thread (g, t) holds rows g, g + 8 (h) of each m-tile, columns 2t, 2t + 1 (e)
       of each n-tile. */
#pragma unroll
    for (unsigned int mi = 0; mi < 4u; mi++)
#pragma unroll
      for (unsigned int jj = 0; jj < JP; jj++)
#pragma unroll
        for (unsigned int h = 0; h < 2u; h++)
#pragma unroll
          for (unsigned int e = 0; e < 2u; e++) {
            const unsigned long long r = m0 + wm * 64u + mi * 16u + (lane >> 2) + h * 8u;
            const unsigned int col = c0 + wn * WCOLS + jj * 8u + (lane & 3u) * 2u + e;
            if (r >= M || col >= N_OUT) continue;
$EPILOGUE          }
  }
}
