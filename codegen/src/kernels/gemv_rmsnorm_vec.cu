  constexpr unsigned int XPT = $XPTu; /* x vectors per thread and row */
  uint4 nw[XPT];
#pragma unroll
  for (unsigned int j = 0; j < XPT; j++) {
    const unsigned int v = threadIdx.x + j * BLOCK;
    if (v < KV) nw[j] = ((const uint4*)norm_w)[v];
  }
$GRID_WAIT
  /* RMSNorm prologue, as HF's Qwen3RMSNorm: in f32, cast to storage, then times the weight. */
  __shared__ float warp_ss[WARPS];
  for (unsigned int r = 0; r < rows; r++) {
    uint4 xr[XPT];
    float ss = 0.0f;
#pragma unroll
    for (unsigned int j = 0; j < XPT; j++) {
      const unsigned int v = threadIdx.x + j * BLOCK;
      if (v >= KV) continue;
      xr[j] = ((const uint4*)(x + X_OFFSET + r * X_STRIDE))[v];
#pragma unroll
      for (unsigned int e = 0; e < VEC; e++) { const float f = gemv_elem(xr[j], e); ss += f * f; }
    }
    ss = smelt_warp_sum(ss);
    if (lane == 0u) warp_ss[warp] = ss;
    __syncthreads();
    /* Every thread sums the warps' partials in one order: one value of inv per row. */
    ss = 0.0f;
    for (unsigned int i = 0; i < WARPS; i++) ss += warp_ss[i];
    const float inv = smelt_rms_inverse(ss, (float)K, $EPS);
#pragma unroll
    for (unsigned int j = 0; j < XPT; j++) {
      const unsigned int v = threadIdx.x + j * BLOCK;
      if (v >= KV) continue;
      uint4 o;
#pragma unroll
      for (unsigned int e = 0; e < VEC; e++) {
        const float xn = $XN;
        gemv_set(o, e, gemv_elem(nw[j], e) * xn);
      }
      xs_vec[r * KV + v] = o;
    }
    /* warp_ss is reused by the next row; after the last, xs is complete. */
    __syncthreads();
  }
