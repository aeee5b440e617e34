/* Combine kernel: merges the split kernel's partials (see its scratch layout) per (token, head). */
extern "C" __global__ void $NAME(const float* __restrict__ scratch, smelt_attn_t* __restrict__ out, const smelt_step* __restrict__ step) {
$GRID_WAIT
  constexpr unsigned int H = $Hu, D = $Du;
  const unsigned int T = step->new_tokens, nsplit = ((const unsigned int*)scratch)[0];
  const float* __restrict__ part_acc = scratch + 4;
  const float* __restrict__ part_ml = part_acc + (size_t)T * H * nsplit * D;
  for (unsigned int th = blockIdx.x; th < T * H; th += gridDim.x) {
    const float* __restrict__ ml = part_ml + (size_t)th * nsplit * 2;
    float mx = smelt_u2f(0xff800000u);
#pragma unroll 8
    for (unsigned int i = 0; i < nsplit; ++i) mx = fmaxf(mx, ml[2 * i]);
    for (unsigned int j = threadIdx.x; j < D; j += blockDim.x) {
      float sum = 0.0f, a = 0.0f;
#pragma unroll 8
      for (unsigned int i = 0; i < nsplit; ++i) {
        const float f = expf(ml[2 * i] - mx); /* 0 for a split with no visible key */
        sum += f * ml[2 * i + 1];
        a += f * part_acc[((size_t)th * nsplit + i) * D + j];
      }
      out[(size_t)th * D + j] = smelt_attn_st(a / sum);
    }
  }
}
