    if (splits > 1u) {
      constexpr unsigned int SLOT = BM * 128u;
      /* Slot tile * splits + s holds split s's 128 x 128 f32 partial in fragment order: the
         pair (c[2h], c[2h + 1]) of sum[mi][j] (row g + 8h) at pair ((mi * 4 + j) * 2 + h) * 256
         + tid, so a warp stores 256 contiguous bytes. Rows past M are neither stored nor read. */
      float* const part = scratch + (unsigned long long)tile * splits * SLOT + tid * 2u;
#pragma unroll
      for (unsigned int mi = 0; mi < 4u; mi++)
#pragma unroll
        for (unsigned int j = 0; j < 4u; j++)
#pragma unroll
          for (unsigned int h = 0; h < 2u; h++)
            if (m0 + wm * 64u + mi * 16u + (lane >> 2) + h * 8u < M)
              gemm_store_pair(part + split * SLOT + ((mi * 4u + j) * 2u + h) * 512u, sum[mi][j][2u * h], sum[mi][j][2u * h + 1u]);
      /* Once every warp has stored, one thread arrives for the block (smelt_arrive); the
         barrier shares whether it was the tile's last split, which then adds them up and
         leaves the counter at zero for the next launch or graph replay. */
      __syncthreads();
      if (!__syncthreads_or(tid == 0u && smelt_arrive(counters + tile) == splits - 1u)) continue;
      if (tid == 0u) counters[tile] = 0u;
      /* The sum in split order (its own slot read back too), whichever block is last: the
         same bits every run. A split's 32 loads are issued together. */
#pragma unroll
      for (unsigned int mi = 0; mi < 4u; mi++)
#pragma unroll
        for (unsigned int j = 0; j < 4u; j++)
#pragma unroll
          for (unsigned int e = 0; e < 4u; e++) sum[mi][j][e] = 0.0f;
      for (unsigned int s = 0; s < splits; s++)
#pragma unroll
        for (unsigned int mi = 0; mi < 4u; mi++)
#pragma unroll
          for (unsigned int j = 0; j < 4u; j++)
#pragma unroll
            for (unsigned int h = 0; h < 2u; h++)
              if (m0 + wm * 64u + mi * 16u + (lane >> 2) + h * 8u < M) {
                float a, b;
                gemm_load_pair(part + s * SLOT + ((mi * 4u + j) * 2u + h) * 512u, a, b);
                sum[mi][j][2u * h] += a;
                sum[mi][j][2u * h + 1u] += b;
              }
    }
