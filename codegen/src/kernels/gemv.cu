/* acc + the dot product of $DOT_WHAT, in f32. */
SMELT_FN float gemv_dot(uint4 a, uint4 b, float acc) {
  const unsigned int av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
$DOT_BODY
  }
  return acc;
}
/* Element e of a 16-byte vector; setting one stores x rounded to the element type. */
SMELT_FN float gemv_elem(uint4 v, unsigned int e) { union { uint4 v; $LANES; } u; u.v = v; return $ELEM_GET; }
SMELT_FN void gemv_set(uint4& v, unsigned int e, float x) { union { uint4 v; $LANES; } u; u.v = v; $ELEM_SET; v = u.v; }
/* $NAME: y[$M, $N_OUT] = $EPILOGUE_TEXT over acc = $NORM_TEXTx[$M, $K] @ w[$N, $K]^T. */
extern "C" __global__ void __launch_bounds__($BLOCK) $NAME(
    $PARAMS) {
  constexpr unsigned int ROWS = $ROWSu, K = $Ku, N_OUT = $N_OUTu, PARTS = $PARTSu;
  /* The rows this launch computes: $ROWS_WHAT. */
  const unsigned int rows = $ROWS_NOW;
  constexpr unsigned int WARPS = $WARPSu, BLOCK = $BLOCKu, VEC = $VECu;
$X_VIEW
  /* K as 16-byte vectors of $VEC values; lane l takes vectors l, l + 32, ... of each row,
     BATCH at a time, so that BATCH x PARTS weight loads are in flight together. */
  constexpr unsigned int KV = $KVu, STEPS = $STEPSu, BATCH = $BATCHu;
  /* The input rows as the matmul sees them ($SEEN $DTYPE), shared by the warps. */
  extern __shared__ uint4 xs_vec[];
  $STORAGE* xs = ($STORAGE*)xs_vec;
  const unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  const unsigned int stride = gridDim.x * WARPS;
  unsigned int col = blockIdx.x * WARPS + warp;
  /* Part p of a column's accumulator is weight row p * N_OUT + col. */
  uint4 wb[BATCH][PARTS];
#define GEMV_LOAD_BATCH(s0) \
  _Pragma("unroll") for (unsigned int b = 0; b < BATCH; b++) \
    _Pragma("unroll") for (unsigned int p = 0; p < PARTS; p++) { \
      const unsigned int i = ((s0) + b) * 32u + lane; \
      wb[b][p] = $GUARD((const uint4*)(w + (unsigned long long)(p * N_OUT + col) * K))[i]$ZERO; \
    }
  /* Weights are constants: the first batch of this warp's first column loads before the
     wait, overlapping the previous kernel's tail (see SMELT_GRID_WAIT). */
  if (col < N_OUT) {
    GEMV_LOAD_BATCH(0u)
  }$L2_PREFETCH
$PROLOGUE
  const uint4* xv = (const uint4*)xs; /* row r's vector i is xv[r * KV + i] */$ARGMAX_DECL
  bool prefetched = col < N_OUT;
  for (; col < N_OUT; col += stride) {
    float sum[ROWS][PARTS] = {};
    for (unsigned int s0 = 0; s0 < STEPS; s0 += BATCH) {
      if (!prefetched) {
        GEMV_LOAD_BATCH(s0)
      }
      prefetched = false;
#pragma unroll
      for (unsigned int b = 0; b < BATCH; b++) {
        const unsigned int i = (s0 + b) * 32u + lane;
#pragma unroll
        for (unsigned int r = 0; r < ROWS; r++) {
          if (r == rows) break;
          const uint4 a = $GUARDxv[r * KV + i]$ZERO;
#pragma unroll
          for (unsigned int p = 0; p < PARTS; p++) sum[r][p] = gemv_dot(a, wb[b][p], sum[r][p]);
        }
      }
    }
#pragma unroll
    for (unsigned int r = 0; r < ROWS; r++) {
      if (r == rows) break;
#pragma unroll
      for (unsigned int p = 0; p < PARTS; p++) sum[r][p] = smelt_warp_sum(sum[r][p]);
    }
    /* Epilogue, lane r for row r: the accumulator rounded to $DTYPE as the matmul's output is, then the fused body. */
#pragma unroll
    for (unsigned int r = 0; r < ROWS; r++) {
      if (r == rows) break;
      if (lane != r) continue;
$EPILOGUE$ARGMAX_TRACK
    }
  }$ARGMAX_MERGE
}
