/* RMSNorm over each head's $D dims, then NeoX rotary embedding; output $OUTPUT.
   One warp per (token, head); lane l holds elements $PER_LANEl..$PER_LANEl+$LAST, so the rotate-half
   partner of each element (j +- $HALF) sits at the same slot of lane l ^ 16. */
extern "C" __global__ void __launch_bounds__($BLOCK) $NAME(
    const $STORAGE* __restrict__ x,
    const $STORAGE* __restrict__ norm_w,
    const int* __restrict__ positions,
    const float* __restrict__ inv_freq,
    $OUT_PARAMS,
    const smelt_step* __restrict__ step) {
$GRID_WAIT
$APPEND_SETUP  const unsigned int lane = threadIdx.x & 31u, rows = step->new_tokens * $HEADSu;
  for (unsigned int row = blockIdx.x * $WARPSu + (threadIdx.x >> 5); row < rows; row += gridDim.x * $WARPSu) {
    const unsigned int t = row / $HEADSu, h = row % $HEADSu, j0 = lane * $PER_LANEu;
    /* x is a view: token rows $X_STRIDE apart from element $X_OFFSET. */
    $XV_DECL
$XV_LOAD
    float v[$PER_LANE];
#pragma unroll
    for (int e = 0; e < $PER_LANE; ++e) v[e] = $XV_E;
    /* RMSNorm as eval: squares rounded on their own (no FMA), summed in f32; every lane
       ends with the same sum (f32 addition commutes exactly). */
    float ss = 0.0f;
#pragma unroll
    for (int e = 0; e < $PER_LANE; ++e) ss += __fmul_rn(v[e], v[e]);
    const float inv = smelt_rms_inverse(smelt_warp_sum(ss), $D.0f, $EPS);
    $WV_DECL
$WV_LOAD
#pragma unroll
    for (int e = 0; e < $PER_LANE; ++e) v[e] = $NORMED;
    /* Rotary embedding: cos/sin of pos * inv_freq[j % (d/2)] in f32, rounded to the dtype;
       rot = concat(-x[d/2:], x[:d/2]): lanes 0-15 hold the first half and take their
       partner negated. out = round(round(x * cos) + round(rot * sin)), the store rounding
       the sum. */
    const float pos = (float)positions[t];
#pragma unroll
    for (int e = 0; e < $PER_LANE; ++e) {
      const float rot = smelt_rope_rotated(v[e], lane);
      float sn, cs;
      sincosf(__fmul_rn(pos, inv_freq[j0 % $HALFu + e]), &sn, &cs);
      $OUT_E
    }
$XV_STORE
  }
}
