typedef $STORAGE smelt_attn_t;
/* The D/32 consecutive elements one lane owns of a K or V row: one vector load. */
struct alignas($BYTES) smelt_attn_vec { unsigned int w[$WORDS]; };
SMELT_FN float smelt_attn_ld(smelt_attn_t x) { return $LOAD; }
SMELT_FN float smelt_attn_round(float x) { return $ROUND; }
SMELT_FN smelt_attn_t smelt_attn_st(float x) { return $STORE; }
SMELT_FN float smelt_attn_elem(const smelt_attn_vec& v, unsigned int e) { return $ELEM; }
SMELT_FN float smelt_warp_sum(float v) {
  for (unsigned int m = 16u; m > 0u; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}
