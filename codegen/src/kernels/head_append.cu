/* Part $PART: $HEADS heads of $D appended to the paged KV cache as
   they are, $PER_LANE elements per lane. */
SMELT_FN void $PART(
    const $STORAGE* cache_in,
    const $STORAGE* __restrict__ x,
    $STORAGE* cache,
    const smelt_step* __restrict__ step,
    unsigned int t, unsigned int h, unsigned int lane) {
  (void)cache_in;
  const unsigned int block_tokens = step->block_tokens, j0 = lane * $PER_LANEu;
  /* x is a view: token rows $X_STRIDE apart from element $X_OFFSET. */
  $XV_DECL
$XV_LOAD
  $CACHE_INDEX
$XV_STORE
}
