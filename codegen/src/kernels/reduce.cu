/* $NAME: the $WHAT of x$SHAPE over axis $AXIS, one warp per output. */
extern "C" __global__ void __launch_bounds__($BLOCK) $NAME(const $X_TYPE* __restrict__ x, $Y_TYPE* __restrict__ y, const smelt_step* __restrict__ step) {
$GRID_WAIT
  const unsigned int outer = $OUTER, len = $LEN, inner = $INNER;
  const unsigned int lane = threadIdx.x & 31u;
  for (unsigned int r = blockIdx.x * $WARPSu + (threadIdx.x >> 5); r < outer * inner; r += gridDim.x * $WARPSu) {
    const unsigned int o = r / inner, i = r % inner;
    float acc = $INIT;
    for (unsigned int k = lane; k < len; k += 32u) {
      const float v = $LOAD;
      $COMBINE
    }
    for (int m = 16; m > 0; m >>= 1) $LANE_COMBINE
    if (lane == 0u) $STORE
  }
}
