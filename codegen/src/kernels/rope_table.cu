      /* The rotary table of every norm part's heads, at this token and lane, from one sincosf
         site (two would each inline its slow path for large angles): cos/sin of
         pos * inv_freq[j % $HALF] in f32. */
      const int* positions = $POSITIONS;
      const float* inv_freq = $INV_FREQ;
      const float pos = (float)positions[t];
      float sn[$PER_LANE], cs[$PER_LANE];
#pragma unroll
      for (int e = 0; e < $PER_LANE; ++e) sincosf(__fmul_rn(pos, inv_freq[lane * $PER_LANEu % $HALFu + e]), &sn[e], &cs[e]);
