/* Appends T rows of $HEADS heads x $D to the paged cache, $VEC elements per thread. */
extern "C" __global__ void __launch_bounds__($BLOCK) $NAME(
    const $STORAGE* cache_in,
    const $STORAGE* __restrict__ x,
    $STORAGE* cache,
    const smelt_step* __restrict__ step) {
$GRID_WAIT
  (void)cache_in;
  const unsigned int block_tokens = step->block_tokens;
  const unsigned int n = step->new_tokens * $PER_ROWu;
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const unsigned int t = i / $PER_ROWu, c = i % $PER_ROWu * $VECu, h = c / $Du, j = c % $Du;
    $XV_DECL
$XV_LOAD
    $CACHE_INDEX
$XV_STORE
  }
}
