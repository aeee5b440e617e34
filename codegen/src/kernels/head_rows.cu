/* One warp per (token, head) of $HEADS heads of $D: $DOC. */
$PARTS
extern "C" __global__ void __launch_bounds__($BLOCK) $NAME(
$PARAMS
    const smelt_step* __restrict__ step) {
$GRID_WAIT
  const unsigned int lane = threadIdx.x & 31u, rows = step->new_tokens * $HEADSu;
  for (unsigned int row = blockIdx.x * $WARPSu + (threadIdx.x >> 5); row < rows; row += gridDim.x * $WARPSu) {
    /* The lanes of a warp share their row, so their part: no divergence. */
    const unsigned int t = row / $HEADSu, h = row % $HEADSu;
$DISPATCH
  }
}
