        {
          const float pos = (float)positions[t];
          float ss = 0.0f;
#pragma unroll
          for (unsigned int e = 0; e < 4u; ++e) ss += __fmul_rn(x[e], x[e]);
          const float inv = smelt_rms_inverse(smelt_warp_sum(ss), (float)D, EPS);
          float y[4];
#pragma unroll
          for (unsigned int e = 0; e < 4u; ++e)
            y[e] = smelt_pa_round(__fmul_rn(smelt_pa_ld(q_norm_w[lane * 4u + e]), smelt_pa_round(__fmul_rn(x[e], inv))));
#pragma unroll
          for (unsigned int e = 0; e < 4u; ++e) {
            const float rot = smelt_rope_rotated(y[e], lane);
            const float f = __fmul_rn(pos, inv_freq[(lane * 4u + e) % (D / 2u)]);
            const float c = smelt_pa_round(cosf(f)), s = smelt_pa_round(sinf(f));
            x[e] = smelt_pa_round(smelt_pa_round(__fmul_rn(y[e], c)) + smelt_pa_round(__fmul_rn(rot, s)));
          }
        }
