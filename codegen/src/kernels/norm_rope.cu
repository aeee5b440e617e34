/* Part $PART: RMSNorm over each of $HEADS heads' $D dims, then NeoX
   rotary embedding; output $OUTPUT. Lane l holds elements $PER_LANEl..$PER_LANEl+$LAST, so the
   rotate-half partner of each element (j +- $HALF) sits at the same slot of lane l ^ 16. */
SMELT_FN void $PART(
    const $STORAGE* __restrict__ x,
    const $STORAGE* __restrict__ norm_w,
    $OUT_PARAMS,
    const smelt_step* __restrict__ step,
    unsigned int t, unsigned int h, unsigned int lane,
    const float (&sn)[$PER_LANE], const float (&cs)[$PER_LANE]) {
$APPEND_SETUP  const unsigned int j0 = lane * $PER_LANEu;
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
  /* Rotary embedding with the kernel's table (cos/sin in f32, rounded to the dtype here);
     rot = concat(-x[d/2:], x[:d/2]): lanes 0-15 hold the first half and take their
     partner negated. out = round(round(x * cos) + round(rot * sin)), the store rounding
     the sum. */
#pragma unroll
  for (int e = 0; e < $PER_LANE; ++e) {
    const float rot = smelt_rope_rotated(v[e], lane);
    $OUT_E
  }
$XV_STORE
}
