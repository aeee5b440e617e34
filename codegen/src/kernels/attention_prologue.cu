    {
      const float pos = (float)positions[t];
#pragma unroll
      for (unsigned int g = 0; g < G; ++g) {
        float ss = 0.0f;
#pragma unroll
        for (unsigned int e = 0; e < E; ++e) ss += __fmul_rn(qv[g][e], qv[g][e]);
        const float inv = smelt_rms_inverse(smelt_warp_sum(ss), (float)D, EPS);
        float y[E];
#pragma unroll
        for (unsigned int e = 0; e < E; ++e)
          y[e] = smelt_attn_round(__fmul_rn(smelt_attn_ld(q_norm_w[lane * E + e]), smelt_attn_round(__fmul_rn(qv[g][e], inv))));
#pragma unroll
        for (unsigned int e = 0; e < E; ++e) {
          const float rot = smelt_rope_rotated(y[e], lane);
          const float f = __fmul_rn(pos, inv_freq[(lane * E + e) % (D / 2)]);
          const float c = smelt_attn_round(cosf(f)), s = smelt_attn_round(sinf(f));
          qv[g][e] = smelt_attn_round(smelt_attn_round(__fmul_rn(y[e], c)) + smelt_attn_round(__fmul_rn(rot, s)));
        }
      }
    }
