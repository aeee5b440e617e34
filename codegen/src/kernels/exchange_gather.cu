/* An all-gather of $WORLD ranks' parts held on one device: the parts concatenated along an axis, in rank order. Each part is $OUTER chunks of $INNER elements (the axis and those after it), the output $OUTER chunks of $WORLD x $INNER; copied element by element, bit for bit, in a grid-stride loop of $BLOCK threads per block. */
extern "C" __global__ void __launch_bounds__($BLOCK) $NAME(
$PARTS
    $STORAGE* __restrict__ y,
    const smelt_step* __restrict__ step) {
$GRID_WAIT
  const $STORAGE* parts[$WORLD] = {$PART_LIST};
  const unsigned long long inner = $INNER, n = $OUTER * $WORLDull * inner;
  for (unsigned long long i = blockIdx.x * $BLOCKull + threadIdx.x; i < n; i += gridDim.x * $BLOCKull) {
    const unsigned long long chunk = i / inner, k = i % inner;
    y[i] = parts[chunk % $WORLDu][(chunk / $WORLDull) * inner + k];
  }
}
