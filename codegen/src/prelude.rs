//! The helpers every generated kernel carries in its own source (a dump writes them once, as
//! `smelt_prelude.h`). They need no include paths (NVRTC 13 has no built-in `cuda_bf16.h`),
//! and what runs per thread compiles as host C/C++ too, so the tests run kernels on the CPU:
//! the warp collectives need a host emulation that defines CUDA's shuffles and
//! `SMELT_HOST_WARPS`; the PTX wrappers (tensor cores, async copies) are device-only, and a
//! host emulation defines the same names.

/// Storage rounding to bf16 and f16 (round to nearest even, as the `half` crate does and so as
/// `ir::eval` does) and bit casts; the PDL wait; the step's parameters and paged-cache
/// addressing; RMSNorm's inverse, the warp sum and NeoX RoPE's rotate-half; `cp.async`,
/// `ldmatrix` and `mma.sync` wrappers. Each is written once, here.
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
SMELT_FN float smelt_add(float a, float b) { return __fadd_rn(a, b); }
#else
SMELT_FN float smelt_mul(float a, float b) { return a * b; }
SMELT_FN float smelt_add(float a, float b) { return a + b; }
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
/* A hint: the 128-byte line at p into L2 (a weight read after the wait, fetched before it).
   Off the device (host emulation) it reads the byte at p, so a sanitizer checks the address. */
#if defined(__CUDA_ARCH__)
#define SMELT_PREFETCH_L2(p) asm volatile("prefetch.global.L2 [%0];" ::"l"(p))
#else
#define SMELT_PREFETCH_L2(p) ((void)*(const volatile char*)(p))
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
/* RMSNorm's 1 / sqrt(mean(x^2) + eps) from the sum of squares over n elements, rounded as
   eval rounds it: the mean and the add each on their own (no FMA). */
SMELT_FN float smelt_rms_inverse(float sum_sq, float n, float eps) { return 1.0f / sqrtf(smelt_add(sum_sq / n, eps)); }
/* Row `p` of a paged KV cache [blocks, block_tokens, ...]: the block holding logical position
   p is table[p / block_tokens]. */
SMELT_FN unsigned int smelt_cache_row(const unsigned int* table, unsigned int p, unsigned int block_tokens) {
  return table[p / block_tokens] * block_tokens + p % block_tokens;
}
/* Warp collectives. The host emulation (tests) defines CUDA's shuffles over one thread per
   CUDA thread and SMELT_HOST_WARPS, so these are the same code on both. */
#if defined(__CUDACC__) || defined(SMELT_HOST_WARPS)
/* The sum of v over the warp, in every lane: a butterfly, so every lane adds in the same
   order and holds the same bits. */
SMELT_FN float smelt_warp_sum(float v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}
/* A block's arrival on the counter of the blocks that split one piece of work (split-K, split
   attention), by one thread after a barrier: the fence before publishes the block's partial
   (which the barrier ordered before it), the fence after orders the earlier arrivals'
   partials before the reads the next barrier releases (as CUTLASS's split-K semaphore).
   Returns the arrivals before this one (splits - 1: this block is the last). */
SMELT_FN unsigned int smelt_arrive(unsigned int* counter) {
  __threadfence();
  const unsigned int before = atomicAdd(counter, 1u);
  __threadfence();
  return before;
}
/* ArgMax as ir::eval's: whether (v, i) beats (bv, bi), a candidate value and its index (-1
   for a NaN or an infinity): a non-finite value beats all, then larger, then equal and
   earlier. (The argmax kernel, and the lm_head GEMV that computes the greedy token.) */
SMELT_FN bool smelt_argmax_better(float v, int i, float bv, int bi) {
  if (bi < 0) return false;
  if (i < 0) return true;
  return v > bv || (v == bv && i < bi);
}
/* Folds the lanes' argmax candidates together; every lane ends with the warp's winner. */
SMELT_FN void smelt_argmax_warp(float& bv, int& bi) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (smelt_argmax_better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
  }
}
/* NeoX rotary's rotate-half for a head whose D elements lie D/32 per lane in order: element j
   pairs with j +- D/2, the same slot of lane ^ 16; rot = concat(-x[D/2:], x[:D/2]), so lanes
   0-15 (the first half) take their partner negated. */
SMELT_FN float smelt_rope_rotated(float v, unsigned int lane) {
  const float partner = __shfl_xor_sync(0xffffffffu, v, 16);
  return lane < 16u ? -partner : partner;
}
#endif
/* Tensor cores and asynchronous copies (sm_80 and later), for the prefill GEMM and attention.
   The host emulation (codegen/tests/gemm) defines the same names from the PTX ISA's tables.
   Shared-memory reads and async copies are volatile with a memory clobber, so the compiler
   keeps them between the barriers they belong to. */
#ifdef __CUDACC__
/* The shared-window address of a pointer to shared memory. */
SMELT_FN unsigned int smelt_smem_addr(const void* p) { return (unsigned int)__cvta_generic_to_shared(p); }
/* 16 bytes from global to shared memory, asynchronously; src_bytes = 0 reads nothing and
   stores zeros. */
SMELT_FN void smelt_cp_async16(unsigned int dst, const void* src, unsigned int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
SMELT_FN void smelt_cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
/* Waits until at most n (a constant) of this thread's committed groups are in flight. */
#define SMELT_CP_ASYNC_WAIT(n) asm volatile("cp.async.wait_group %0;" :: "n"(n) : "memory")
/* Four 8x8 16-bit matrices; lanes 8i..8i+7 address the rows of matrix i. */
SMELT_FN void smelt_ldmatrix_x4(unsigned int addr, unsigned int& r0, unsigned int& r1, unsigned int& r2, unsigned int& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr) : "memory");
}
/* The same, each matrix transposed. */
SMELT_FN void smelt_ldmatrix_x4_trans(unsigned int addr, unsigned int& r0, unsigned int& r1, unsigned int& r2, unsigned int& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr) : "memory");
}
/* c += A (16x16, row) * B (16x8, col) in f32, A and B in bf16 or f16. */
SMELT_FN void smelt_mma_bf16(float* c, const unsigned int* a, unsigned int b0, unsigned int b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
SMELT_FN void smelt_mma_f16(float* c, const unsigned int* a, unsigned int b0, unsigned int b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
/* Two floats rounded to nearest even into one register, lo in the low half (the lower column
   of a fragment); cvt puts its first source in the high half. */
SMELT_FN unsigned int smelt_pack_bf16(float lo, float hi) {
  unsigned int r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
SMELT_FN unsigned int smelt_pack_f16(float lo, float hi) {
  unsigned int r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
#endif
"#;
