//! The helpers every generated kernel carries in its own source. They are plain C that NVRTC
//! compiles with no include paths (NVRTC 13 has no built-in `cuda_bf16.h`), and that a host C
//! compiler compiles too, so the tests can run rendered bodies on the CPU.

/// Storage rounding to bf16 and f16 (round to nearest even, as the `half` crate does and so as
/// `ir::eval` does), and bit casts.
pub const PRELUDE: &str = r#"#ifdef __CUDACC__
#define SMELT_FN static __device__ __forceinline__
#else
#include <math.h>
#define SMELT_FN static inline
#endif
/* A product that is never contracted with a following add into an FMA (NVRTC contracts by
   default): ir::eval rounds every product, and rendered bodies must compute what it computes. */
#ifdef __CUDACC__
SMELT_FN float smelt_mul(float a, float b) { return __fmul_rn(a, b); }
#else
SMELT_FN float smelt_mul(float a, float b) { return a * b; }
#endif
SMELT_FN unsigned int smelt_f2u(float x) { union { float f; unsigned int u; } v; v.f = x; return v.u; }
SMELT_FN float smelt_u2f(unsigned int u) { union { float f; unsigned int u; } v; v.u = u; return v.f; }
/* The nearest bf16 to x (ties to even), as an f32. NaN stays NaN. */
SMELT_FN float smelt_round_bf16(float x) {
  unsigned int u = smelt_f2u(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return smelt_u2f(u | 0x00400000u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return smelt_u2f(u & 0xffff0000u);
}
/* The nearest f16 to x (ties to even), as an f32: overflow gives infinity, values below the
   smallest normal round to a multiple of 2^-24. */
SMELT_FN float smelt_round_f16(float x) {
  unsigned int u = smelt_f2u(x);
  unsigned int sign = u & 0x80000000u, a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) return x;
  if (a >= 0x477ff000u) return smelt_u2f(sign | 0x7f800000u);
  if (a < 0x38800000u) {
    float q = rintf(smelt_u2f(a) * 16777216.0f) * (1.0f / 16777216.0f);
    return smelt_u2f(sign | smelt_f2u(q));
  }
  a += 0xfffu + ((a >> 13) & 1u);
  return smelt_u2f(sign | (a & 0xffffe000u));
}
/* Loads and stores of 16-bit storage types (kept as unsigned short: no CUDA headers). */
SMELT_FN float smelt_load_bf16(unsigned short h) { return smelt_u2f((unsigned int)h << 16); }
SMELT_FN unsigned short smelt_store_bf16(float x) { return (unsigned short)(smelt_f2u(smelt_round_bf16(x)) >> 16); }
#ifdef __CUDACC__
SMELT_FN float smelt_load_f16(unsigned short h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
SMELT_FN unsigned short smelt_store_f16(float x) { unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x)); return h; }
#else
SMELT_FN float smelt_load_f16(unsigned short h) {
  unsigned int sign = (unsigned int)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1fu) return smelt_u2f(sign | 0x7f800000u | (m << 13));
  if (e == 0) return smelt_u2f(sign | smelt_f2u((float)m * (1.0f / 16777216.0f)));
  return smelt_u2f(sign | ((e + 112u) << 23) | (m << 13));
}
SMELT_FN unsigned short smelt_store_f16(float x) {
  unsigned int u = smelt_f2u(smelt_round_f16(x)), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (unsigned short)(sign | 0x7e00u);
  if (a == 0x7f800000u) return (unsigned short)(sign | 0x7c00u);
  if (a < 0x38800000u) return (unsigned short)(sign | (unsigned int)(smelt_u2f(a) * 16777216.0f));
  return (unsigned short)(sign | ((((a >> 23) - 112u) << 10) | ((a >> 13) & 0x3ffu)));
}
#endif
/* Programmatic dependent launch (Hopper): a kernel launched with it may start while the previous
   kernel finishes. Before SMELT_GRID_WAIT a kernel reads only weights, constants and the step
   parameters (written before the step starts); it triggers its own dependents only after the
   wait, so everything two launches back is complete when a kernel starts. Elsewhere: no-ops. */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define SMELT_GRID_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#define SMELT_GRID_LAUNCH() asm volatile("griddepcontrol.launch_dependents;" :::)
#else
#define SMELT_GRID_WAIT() ((void)0)
#define SMELT_GRID_LAUNCH() ((void)0)
#endif
/* Run-time values of one step, in device memory so a captured CUDA graph replays unchanged:
   the symbolic sizes, and the paged KV cache's block table. By default the T new tokens are
   one sequence's, at positions P..P+T (P = cached_tokens) through block_table. A batched
   decode step sets row_positions: row t is then a sequence of its own, its new token at
   row_positions[t] and its blocks at row_tables + t * table_stride. */
typedef struct {
  unsigned int batch, new_tokens, cached_tokens;
  unsigned int block_tokens;
  const unsigned int* block_table;
  const unsigned int* row_positions;
  const unsigned int* row_tables;
  unsigned int table_stride, reserved;
} smelt_step;
/* Row t's position (its keys are 0..=position) and block table. */
SMELT_FN unsigned int smelt_row_position(const smelt_step* s, unsigned int t) {
  return s->row_positions ? s->row_positions[t] : s->cached_tokens + t;
}
SMELT_FN const unsigned int* smelt_row_table(const smelt_step* s, unsigned int t) {
  return s->row_positions ? s->row_tables + (unsigned long)t * s->table_stride : s->block_table;
}
"#;
