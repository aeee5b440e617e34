/* One rank's part of a gather from a table split by rows: this rank holds rows $START.. ($PART_ROWS of them) of a [V, $D] table; row ids[r] - $START to row r when this rank holds it, else zeros (an all-reduce sums the ranks' parts). $WORDS words of $WORD_BYTES bytes per row. */
extern "C" __global__ void __launch_bounds__($BLOCK) $NAME(
    const $STORAGE* __restrict__ table,
    const int* __restrict__ ids,
    $STORAGE* __restrict__ y,
    const smelt_step* __restrict__ step) {
$GRID_WAIT
  const unsigned int rows = $ROWS;
  for (unsigned int r = blockIdx.x; r < rows; r += gridDim.x) {
    const long long local = (long long)ids[r] - $STARTll;
    const bool mine = local >= 0 && local < $PART_ROWSll;
    const $WORD* src = (const $WORD*)(table + (unsigned long long)(mine ? local : 0) * $Du);
    $WORD* dst = ($WORD*)(y + (unsigned long long)r * $Du);
    const $WORD zero = {};
    for (unsigned int k = threadIdx.x; k < $WORDSu; k += $BLOCKu) dst[k] = mine ? src[k] : zero;
  }
}
