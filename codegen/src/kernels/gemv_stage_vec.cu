$GRID_WAIT
  for (unsigned int i = threadIdx.x; i < rows * KV; i += $BLOCKu) {
    const unsigned int r = i / KV, v = i % KV;
    xs_vec[i] = ((const uint4*)(x + X_OFFSET + r * X_STRIDE))[v];
  }
  __syncthreads();
