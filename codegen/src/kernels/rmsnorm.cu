/* RMSNorm over rows of $D, one warp per row, $VEC elements per access. */
extern "C" __global__ void __launch_bounds__($BLOCK) $NAME(
    const $STORAGE* __restrict__ x,
    const $STORAGE* __restrict__ w,
    $STORAGE* __restrict__ y,
    const smelt_step* __restrict__ step) {
$GRID_WAIT
  const unsigned int lane = threadIdx.x & 31u, rows = $ROWS;
  for (unsigned int row = blockIdx.x * $WARPSu + (threadIdx.x >> 5); row < rows; row += gridDim.x * $WARPSu) {
    const unsigned long long xr = $X_ROW;
    /* Sum of squares in f32, each square rounded on its own (no FMA), as eval does. */
    float ss = 0.0f;
    for (unsigned int j = lane * $VECu; j < $Du; j += $WARP_ELEMSu) {
      $XV_DECL
$XV_LOAD
#pragma unroll
      for (int e = 0; e < $VEC; ++e) { const float v = $XV_E; ss += __fmul_rn(v, v); }
    }
    const float inv = smelt_rms_inverse(smelt_warp_sum(ss), $D.0f, $EPS);
    /* y = round(x * inv), out = round(w * y): the cast back, then the weight. */
    for (unsigned int j = lane * $VECu; j < $Du; j += $WARP_ELEMSu) {
      $XV_DECL
      $WV_DECL
$XV_LOAD
$WV_LOAD
#pragma unroll
      for (int e = 0; e < $VEC; ++e) $OUT_E
$Y_STORE
    }
  }
}
