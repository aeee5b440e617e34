$GRID_WAIT
  /* RMSNorm prologue, as HF's Qwen3RMSNorm: in f32, cast to storage, then times the weight. */
  __shared__ float warp_ss[$WARPS];
  for (unsigned int r = 0; r < rows; r++) {
    float ss = 0.0f;
    for (unsigned int k = threadIdx.x; k < K; k += $BLOCKu) {
      const float v = $X_K;
      ss += v * v;
    }
    ss = smelt_warp_sum(ss);
    if (lane == 0u) warp_ss[warp] = ss;
    __syncthreads();
    /* Every thread sums the warps' partials in one order: one value of inv per row. */
    ss = 0.0f;
    for (unsigned int i = 0; i < $WARPSu; i++) ss += warp_ss[i];
    const float inv = smelt_rms_inverse(ss, (float)K, $EPS);
    for (unsigned int k = threadIdx.x; k < K; k += $BLOCKu) {
      const float xn = $XN;
      $STORE_XS
    }
    /* warp_ss is reused by the next row; after the last, xs is complete. */
    __syncthreads();
  }
