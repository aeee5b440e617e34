//! The host emulation's CUDA: the runtime's builtins and the PTX the GEMM uses.

/// CUDA and the GEMM's PTX on the host: a block's 256 threads run as OS threads (blocks one
/// after another), `__syncthreads` is a barrier. Warp-collective `ldmatrix` and `mma` publish
/// each lane's operands to a per-warp slot array between two warp barriers, then every lane
/// computes its own registers from the PTX ISA's fragment tables (written here from the ISA,
/// independently of the kernel's index math). `cp.async` copies either wait in their commit
/// groups and land only when a `wait_group` requires them, the latest moment the PTX allows, so
/// a stage read before it is waited for reads stale data (shared memory starts as NaNs); or land
/// at issue, the earliest, so a stage refilled while a warp still reads it changes what it
/// reads. Every case runs both ways and must give the same bits; the early run also runs the
/// blocks in reverse order (split-K: another block arrives last). Each case launches twice
/// on the same counters, its scratch and output poisoned in between.
pub(super) const SHIM: &str = r#"#include <atomic>
#include <barrier>
#include <thread>
#include <chrono>
#include <vector>
#include <deque>
#include <memory>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <math.h>
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct smelt_dim3 { unsigned int x, y, z; };
static thread_local smelt_dim3 threadIdx, blockIdx;
static smelt_dim3 gridDim;
static std::barrier<>* block_barrier;
static std::barrier<>* warp_barrier[8];
static unsigned char* dynamic_smem;
static unsigned int dynamic_bytes;
static void __syncthreads() { block_barrier->arrive_and_wait(); }
/* Split-K's arrival: an atomic add (counted, so that the harness checks the arrivals its
   grid implies), fences, and a barrier that ORs a predicate over the block. */
static std::atomic<unsigned int> emu_arrivals{0};
static unsigned int atomicAdd(unsigned int* p, unsigned int v) { emu_arrivals++; return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
static std::atomic<int> emu_or_flag{0};
static int __syncthreads_or(int p) {
  if (p) emu_or_flag.store(1);
  block_barrier->arrive_and_wait();
  const int r = emu_or_flag.load();
  block_barrier->arrive_and_wait();
  if (threadIdx.x == 0) emu_or_flag.store(0);
  block_barrier->arrive_and_wait();
  return r;
}
static void emu_fail(const char* what) { fprintf(stderr, "emulation: %s\n", what); abort(); }
/* Shared-window addresses are offsets into the dynamic shared memory. */
static unsigned int emu_smem_addr(const void* p) { return (unsigned int)((const unsigned char*)p - dynamic_smem); }
static unsigned int emu_smem_word(unsigned int addr) {
  if (addr % 4 || addr + 4 > dynamic_bytes) emu_fail("shared read out of bounds");
  unsigned int v; memcpy(&v, dynamic_smem + addr, 4); return v;
}
struct emu_copy { unsigned int dst; const void* src; unsigned int bytes; };
static thread_local std::vector<emu_copy> emu_pending;
static thread_local std::deque<std::vector<emu_copy>> emu_groups;
/* When copies land: at the latest moment a wait_group allows (default), or at issue, the
   earliest (argv[1] = "early"): a stage refilled while another warp still reads it then
   corrupts what that warp reads. A correct kernel gives the same result both ways. */
static bool emu_land_early;
static void emu_land(const emu_copy& c) {
  memset(dynamic_smem + c.dst, 0, 16);
  if (c.bytes) memcpy(dynamic_smem + c.dst, c.src, 16);
}
static void emu_cp16(unsigned int dst, const void* src, unsigned int bytes) {
  if (dst % 16 || dst + 16 > dynamic_bytes || (bytes != 0 && bytes != 16) || (bytes && (size_t)src % 16)) emu_fail("bad cp.async");
  if (emu_land_early) emu_land({dst, src, bytes});
  else emu_pending.push_back({dst, src, bytes});
}
static void emu_commit() { emu_groups.push_back(std::move(emu_pending)); emu_pending.clear(); }
static void emu_wait(unsigned int n) {
  for (; emu_groups.size() > n; emu_groups.pop_front())
    for (const emu_copy& c : emu_groups.front()) emu_land(c);
}
/* Each lane's words, visible to its warp between the two barriers. */
static unsigned int emu_slot[8][32][6];
static void emu_publish(const unsigned int* v, int n) {
  const unsigned int w = threadIdx.x / 32, l = threadIdx.x % 32;
  warp_barrier[w]->arrive_and_wait();
  for (int i = 0; i < n; i++) emu_slot[w][l][i] = v[i];
  warp_barrier[w]->arrive_and_wait();
}
/* ldmatrix .x4: lanes 8i..8i+7 give matrix i's row addresses; lane l gets row l/4, 32-bit word l%4. */
static void emu_ldsm4(unsigned int addr, unsigned int* r) {
  const unsigned int w = threadIdx.x / 32, l = threadIdx.x % 32;
  /* Landing early, the warps also drift apart (warp w reads w us late), so that a warp racing
     ahead past a missing barrier refills a stage another warp has yet to read. */
  if (emu_land_early) std::this_thread::sleep_for(std::chrono::microseconds(w));
  emu_publish(&addr, 1);
  for (int i = 0; i < 4; i++) {
    const unsigned int row = emu_slot[w][8 * i + l / 4][0];
    if (row % 16) emu_fail("ldmatrix row not 16-byte aligned");
    r[i] = emu_smem_word(row + 4 * (l % 4));
  }
}
/* mma.m16n8k16 .row.col, f32 accumulators (PTX ISA fragment tables, g = lane/4, t = lane%4):
   A[r][k] is in lane (r%8)*4 + (k%8)/2, register (r/8) + 2*(k/8), half k%2;
   B[k][n] is in lane n*4 + (k%8)/2, register k/8, half k%2; c[i] = C[g + 8*(i/2)][2t + i%2]. */
static void emu_mma(float* c, const unsigned int* a, unsigned int b0, unsigned int b1, float (*value)(unsigned short)) {
  const unsigned int w = threadIdx.x / 32, l = threadIdx.x % 32;
  const unsigned int v[6] = {a[0], a[1], a[2], a[3], b0, b1};
  emu_publish(v, 6);
  for (int i = 0; i < 4; i++) {
    const int r = l / 4 + 8 * (i / 2), n = 2 * (l % 4) + i % 2;
    for (int k = 0; k < 16; k++) {
      const unsigned int aw = emu_slot[w][(r % 8) * 4 + (k % 8) / 2][r / 8 + 2 * (k / 8)];
      const unsigned int bw = emu_slot[w][n * 4 + (k % 8) / 2][4 + k / 8];
      c[i] += value((unsigned short)(aw >> (16 * (k % 2)))) * value((unsigned short)(bw >> (16 * (k % 2))));
    }
  }
}
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__ __restrict
"#;

/// The prelude's PTX helpers (defined only under `__CUDACC__`), emulated: the same names,
/// after the prelude (the mma needs its loaders).
pub(super) const EMULATED_HELPERS: &str = "\
SMELT_FN unsigned int smelt_smem_addr(const void* p) { return emu_smem_addr(p); }
SMELT_FN void smelt_cp_async16(unsigned int dst, const void* src, unsigned int n) { emu_cp16(dst, src, n); }
SMELT_FN void smelt_cp_async_commit() { emu_commit(); }
#define SMELT_CP_ASYNC_WAIT(n) emu_wait(n)
SMELT_FN void smelt_ldmatrix_x4(unsigned int addr, unsigned int& r0, unsigned int& r1, unsigned int& r2, unsigned int& r3) {
  unsigned int r[4]; emu_ldsm4(addr, r); r0 = r[0]; r1 = r[1]; r2 = r[2]; r3 = r[3];
}
SMELT_FN void smelt_mma_bf16(float* c, const unsigned int* a, unsigned int b0, unsigned int b1) { emu_mma(c, a, b0, b1, smelt_load_bf16); }
SMELT_FN void smelt_mma_f16(float* c, const unsigned int* a, unsigned int b0, unsigned int b1) { emu_mma(c, a, b0, b1, smelt_load_f16); }
";
