typedef $STORAGE smelt_attn_t;
/* The D/32 consecutive elements one lane owns of a K or V row: one vector load. */
struct alignas($BYTES) smelt_attn_vec { unsigned int w[$WORDS]; };
SMELT_FN float smelt_attn_ld(smelt_attn_t x) { return $LOAD; }
SMELT_FN float smelt_attn_round(float x) { return $ROUND; }
SMELT_FN smelt_attn_t smelt_attn_st(float x) { return $STORE; }
SMELT_FN float smelt_attn_elem(const smelt_attn_vec& v, unsigned int e) { return $ELEM; }
