
  /* The greedy token, ArgMax of the stored logits (as the argmax kernel would compute it):
     lane 0 of each warp has its columns' best; each block's best goes to scratch, and the
     last block to arrive folds every block's. All blocks have staged x by then, so the
     token's buffer may be one x's buffer was. */
  __shared__ float am_v[WARPS];
  __shared__ int am_i[WARPS];
  (void)logits_in;
  if (lane == 0u) { am_v[warp] = best_v; am_i[warp] = best_i; }
  __syncthreads();
  if (threadIdx.x == 0u) {
    for (unsigned int w = 1; w < WARPS; w++)
      if (smelt_argmax_better(am_v[w], am_i[w], best_v, best_i)) { best_v = am_v[w]; best_i = am_i[w]; }
    scratch[2u * blockIdx.x] = best_v;
    scratch[2u * blockIdx.x + 1u] = smelt_u2f((unsigned int)best_i);
  }
  if (!__syncthreads_or(threadIdx.x == 0u && smelt_arrive(counters) == gridDim.x - 1u)) return;
  if (threadIdx.x == 0u) counters[0] = 0u;
  best_v = NONE_V;
  best_i = NONE_I;
  for (unsigned int b = threadIdx.x; b < gridDim.x; b += BLOCK) {
    const float v = scratch[2u * b];
    const int i = (int)smelt_f2u(scratch[2u * b + 1u]);
    if (smelt_argmax_better(v, i, best_v, best_i)) { best_v = v; best_i = i; }
  }
  smelt_argmax_warp(best_v, best_i);
  __syncthreads(); /* am_v and am_i again */
  if (lane == 0u) { am_v[warp] = best_v; am_i[warp] = best_i; }
  __syncthreads();
  if (threadIdx.x == 0u) {
    for (unsigned int w = 1; w < WARPS; w++)
      if (smelt_argmax_better(am_v[w], am_i[w], best_v, best_i)) { best_v = am_v[w]; best_i = am_i[w]; }
    greedy[0] = best_i;
  }