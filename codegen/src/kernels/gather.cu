/* Gather: row ids[r] of a [V, $D] table to row r, one block per row, $WORDS words of $WORD_BYTES bytes each. */
extern "C" __global__ void __launch_bounds__($BLOCK) $NAME(
    const $STORAGE* __restrict__ table,
    const int* __restrict__ ids,
    $STORAGE* __restrict__ y,
    const smelt_step* __restrict__ step) {
$GRID_WAIT
  const unsigned int rows = $ROWS;
  for (unsigned int r = blockIdx.x; r < rows; r += gridDim.x) {
    const $WORD* src = (const $WORD*)(table + (unsigned long long)ids[r] * $Du);
    $WORD* dst = ($WORD*)(y + (unsigned long long)r * $Du);
    for (unsigned int k = threadIdx.x; k < $WORDSu; k += $BLOCKu) dst[k] = src[k];
  }
}
