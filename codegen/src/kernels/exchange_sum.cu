/* An all-reduce of $WORLD ranks' parts held on one device (every rank's kernels checked on one GPU, or in the emulator): element i is the parts' sum in f32 in rank order, rounded once, as ir::eval's all-reduce; $ELEMENTS elements, a grid-stride loop of $BLOCK threads per block. */
extern "C" __global__ void __launch_bounds__($BLOCK) $NAME(
$PARTS
    $STORAGE* __restrict__ y,
    const smelt_step* __restrict__ step) {
$GRID_WAIT
  const $STORAGE* parts[$WORLD] = {$PART_LIST};
  const unsigned long long n = $ELEMENTS;
  for (unsigned long long i = blockIdx.x * $BLOCKull + threadIdx.x; i < n; i += gridDim.x * $BLOCKull) {
    float sum = $FIRST;
    for (int r = 1; r < $WORLD; ++r) sum += $NEXT;
    $STORE
  }
}
