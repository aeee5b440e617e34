$GRID_WAIT
  for (unsigned int i = threadIdx.x; i < rows * K; i += $BLOCKu) {
    const unsigned int r = i / K, k = i % K;
    xs[i] = x[X_OFFSET + r * X_STRIDE + k];
  }
  __syncthreads();
