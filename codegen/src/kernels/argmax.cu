/* ArgMax as ir::eval's: the first index of the largest value; -1 for a row holding a NaN
   or an infinity (smelt_argmax_better, in the prelude). */
/* Rows of $V: thread k reads words k, k + $BLOCK, ... of $VEC elements, so a warp's loads are contiguous. */
extern "C" __global__ void __launch_bounds__($BLOCK) $NAME(
    const $STORAGE* __restrict__ x,
    int* __restrict__ y,
    const smelt_step* __restrict__ step) {
$GRID_WAIT
  __shared__ float warp_v[$WARPS];
  __shared__ int warp_i[$WARPS];
  const unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, rows = $ROWS;
  /* No value yet: -inf at an index past the end, which any real value (-inf too) beats. */
  const float none_v = smelt_u2f(0xff800000u);
  const int none_i = 0x7fffffff;
  for (unsigned int row = blockIdx.x; row < rows; row += gridDim.x) {
    const $STORAGE* xr = x + (unsigned long long)row * $Vu;
    float bv = none_v;
    int bi = none_i;
    /* Unrolled so that several loads are in flight: one block reads the whole row. */
#pragma unroll 4
    for (unsigned int c = threadIdx.x; c < $CHUNKSu; c += $BLOCKu) {
      $XV_DECL
$XV_LOAD
#pragma unroll
      for (int e = 0; e < $VEC; ++e) {
        const float v = $ELEMENT;
        const int i = fabsf(v) <= 3.402823466e+38f ? (int)(c * $VECu) + e : -1;
        if (smelt_argmax_better(v, i, bv, bi)) { bv = v; bi = i; }
      }
    }
    smelt_argmax_warp(bv, bi);
    if (lane == 0) { warp_v[warp] = bv; warp_i[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
      bv = lane < $WARPSu ? warp_v[lane] : none_v;
      bi = lane < $WARPSu ? warp_i[lane] : none_i;
      smelt_argmax_warp(bv, bi);
      if (lane == 0) y[row] = bi;
    }
    __syncthreads();  /* warp_v and warp_i are reused by the next row */
  }
}
