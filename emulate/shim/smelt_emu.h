/* smelt's CUDA emulator: generated kernels compiled as host C++ and run as a GPU would run them.
 *
 * A launch runs its blocks one after another (in a seeded order) on a pool of blockDim OS
 * threads, one per CUDA thread, so every barrier is real: __syncthreads is a block barrier,
 * __syncwarp and each warp collective a warp barrier (shuffles and votes exchange per-lane
 * slots between two of them). Threads that return early drop out of every barrier, as on the
 * GPU. Shared memory is host memory: static __shared__ arrays are statics, the dynamic array
 * a static arena, filled with ones (NaN in every float type) at each block's start; under
 * AddressSanitizer the arena past the launch's dynamic bytes is poisoned. Reports name each
 * CUDA thread "b<block>.t<thread>".
 *
 * Built three ways (the runner chooses): plain; under AddressSanitizer, where every buffer is
 * a heap block of exactly its size (a read or write past it is reported with the kernel's
 * source line); or under ThreadSanitizer, where two accesses to one address by different CUDA
 * threads with no barrier between them, one a write, are reported (read-after-write and
 * write-after-read alike: TSan orders accesses by the barriers' happens-before edges).
 *
 * Programmatic dependent launch: a launch may name buffers the previous kernel wrote; until a
 * thread's block has passed SMELT_GRID_WAIT (every thread arrived there or returned) they are
 * hidden: poisoned under AddressSanitizer (any access is reported), else overwritten with ones
 * (NaN) and restored at the wait. Triggering dependents before the wait is reported too.
 *
 * The PTX the kernels use (cp.async, ldmatrix, mma.sync) is in smelt_emu_ptx.h. */
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <math.h>
#include <memory>
#include <thread>
#include <vector>
#include <pthread.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define SMELT_EMU_ASAN 1
#else
#define SMELT_EMU_ASAN 0
#endif

struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct alignas(8) uint2 { unsigned int x, y; };
struct smelt_emu_dim3 { unsigned int x, y, z; };
static thread_local smelt_emu_dim3 threadIdx, blockIdx;
static smelt_emu_dim3 blockDim, gridDim;

static void smelt_emu_fail(const char* what) {
  fprintf(stderr, "smelt-emu: %s (block %u, thread %u)\n", what, blockIdx.x, threadIdx.x);
  fflush(stderr);
  abort();
}

/* The barriers of the block now running; replaced between blocks. */
struct smelt_emu_reveal { void operator()() noexcept; };
static std::unique_ptr<std::barrier<>> smelt_emu_block;
static std::vector<std::unique_ptr<std::barrier<>>> smelt_emu_warp;
static std::unique_ptr<std::barrier<smelt_emu_reveal>> smelt_emu_pdl;
static thread_local bool smelt_emu_waited;

static void __syncthreads() { smelt_emu_block->arrive_and_wait(); }
/* A barrier that also ORs a predicate over the block. */
static std::atomic<int> smelt_emu_or_flag{0};
static int __syncthreads_or(int p) {
  if (p) smelt_emu_or_flag.store(1);
  __syncthreads();
  const int r = smelt_emu_or_flag.load();
  __syncthreads();
  if (threadIdx.x == 0) smelt_emu_or_flag.store(0);
  __syncthreads();
  return r;
}
static void __syncwarp(unsigned int = 0xffffffffu) { smelt_emu_warp[threadIdx.x / 32]->arrive_and_wait(); }
static void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
static float __fmul_rn(float a, float b) { return a * b; }
static float __fadd_rn(float a, float b) { return a + b; }

/* Warp collectives: each lane publishes a word, the warp meets, each reads, the warp meets
   (so the next exchange cannot overwrite a slot still being read). */
static unsigned long long smelt_emu_slot[32][32];
template <class T> static T smelt_emu_exchange(T v, unsigned int from) {
  static_assert(sizeof(T) <= 8, "a shuffle moves one register");
  const unsigned int w = threadIdx.x / 32, l = threadIdx.x % 32;
  unsigned long long word = 0;
  std::memcpy(&word, &v, sizeof(T));
  smelt_emu_slot[w][l] = word;
  __syncwarp();
  T r;
  word = smelt_emu_slot[w][from % 32];
  std::memcpy(&r, &word, sizeof(T));
  __syncwarp();
  return r;
}
template <class T> static T __shfl_xor_sync(unsigned int, T v, int m) { return smelt_emu_exchange(v, (threadIdx.x % 32) ^ m); }
template <class T> static T __shfl_sync(unsigned int, T v, int src) { return smelt_emu_exchange(v, src); }
template <class T> static T __shfl_down_sync(unsigned int, T v, unsigned int d) {
  const unsigned int l = threadIdx.x % 32;
  return smelt_emu_exchange(v, l + d < 32 ? l + d : l);
}
template <class T> static T __shfl_up_sync(unsigned int, T v, unsigned int d) {
  const unsigned int l = threadIdx.x % 32;
  return smelt_emu_exchange(v, l >= d ? l - d : l);
}
static unsigned int __ballot_sync(unsigned int, int p) {
  unsigned int mask = 0;
  for (unsigned int l = 0; l < 32; l++) mask |= (smelt_emu_exchange((unsigned int)(p != 0), l) & 1u) << l;
  return mask;
}
static int __any_sync(unsigned int m, int p) { return __ballot_sync(m, p) != 0; }
static int __all_sync(unsigned int m, int p) { return __ballot_sync(m, p) == 0xffffffffu; }

/* Atomics, counted per launch (a kernel's arrivals can be checked against its grid). */
static std::atomic<unsigned long long> smelt_emu_atomics{0};
template <class T> static T atomicAdd(T* p, T v) { smelt_emu_atomics++; return std::atomic_ref<T>(*p).fetch_add(v); }
template <class T> static T atomicExch(T* p, T v) { smelt_emu_atomics++; return std::atomic_ref<T>(*p).exchange(v); }

/* Dynamic shared memory and the 32-bit shared window: addresses are offsets from an anchor
   among the statics, so static __shared__ arrays and the dynamic arena both fit in 32 bits. */
static constexpr unsigned int SMELT_EMU_MAX_DYNAMIC = 232448;
alignas(128) static unsigned char smelt_emu_dynamic[SMELT_EMU_MAX_DYNAMIC];
static unsigned int smelt_emu_dynamic_bytes;
static unsigned int smelt_emu_smem_addr(const void* p) {
  return (unsigned int)((uintptr_t)p - (uintptr_t)smelt_emu_dynamic);
}
static unsigned char* smelt_emu_smem_ptr(unsigned int addr) {
  return smelt_emu_dynamic + (intptr_t)(int32_t)addr;
}

/* Hidden buffers (PDL): what the previous kernel wrote, until the grid-dependency wait. */
struct smelt_emu_hidden { unsigned char* p; size_t n; std::vector<unsigned char> saved; };
static std::vector<smelt_emu_hidden> smelt_emu_hide_list;
static void smelt_emu_hide() {
  for (auto& h : smelt_emu_hide_list) {
    h.saved.assign(h.p, h.p + h.n);
    std::memset(h.p, 0xff, h.n);
#if SMELT_EMU_ASAN
    ASAN_POISON_MEMORY_REGION(h.p, h.n);
#endif
  }
}
void smelt_emu_reveal::operator()() noexcept {
  for (auto& h : smelt_emu_hide_list) {
#if SMELT_EMU_ASAN
    ASAN_UNPOISON_MEMORY_REGION(h.p, h.n);
#endif
    std::memcpy(h.p, h.saved.data(), h.n);
  }
}
static void smelt_emu_grid_wait() {
  if (smelt_emu_waited) smelt_emu_fail("SMELT_GRID_WAIT twice");
  smelt_emu_waited = true;
  smelt_emu_pdl->arrive_and_wait();
}
static void smelt_emu_grid_launch() {
  if (!smelt_emu_waited) smelt_emu_fail("SMELT_GRID_LAUNCH before SMELT_GRID_WAIT: dependents would read unfinished inputs");
}

/* ---- The PTX twins' machinery (smelt_emu_ptx.h defines the prelude's names on it). ---- */

enum smelt_emu_landing_mode { SMELT_EMU_LATE, SMELT_EMU_EARLY, SMELT_EMU_RANDOM };
static smelt_emu_landing_mode smelt_emu_landing = SMELT_EMU_LATE;
static unsigned long long smelt_emu_seed;
struct smelt_emu_copy { unsigned int dst; const void* src; unsigned int bytes; };
static thread_local std::vector<smelt_emu_copy> smelt_emu_open_group;
static thread_local std::vector<std::vector<smelt_emu_copy>> smelt_emu_groups;
static thread_local unsigned long long smelt_emu_coin_state;
static bool smelt_emu_coin() {
  /* splitmix64 over (seed, block, thread, draw). */
  unsigned long long z = (smelt_emu_coin_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return ((z ^ (z >> 31)) & 1) != 0;
}
static void smelt_emu_land(const smelt_emu_copy& c) {
  unsigned char* d = smelt_emu_smem_ptr(c.dst);
  if (c.bytes) std::memcpy(d, c.src, 16);
  else std::memset(d, 0, 16);
}
static void smelt_emu_check_smem(unsigned int addr, unsigned int bytes, const char* what) {
  /* The dynamic arena is checked against the launch's size; static arrays by AddressSanitizer. */
  if (addr < SMELT_EMU_MAX_DYNAMIC && addr + bytes > smelt_emu_dynamic_bytes) smelt_emu_fail(what);
}
static void smelt_emu_cp16(unsigned int dst, const void* src, unsigned int bytes) {
  if (dst % 16 || (bytes != 0 && bytes != 16) || (bytes && (uintptr_t)src % 16)) smelt_emu_fail("cp.async: misaligned or not 16 bytes");
  smelt_emu_check_smem(dst, 16, "cp.async past the dynamic shared memory");
  const bool early = smelt_emu_landing == SMELT_EMU_EARLY || (smelt_emu_landing == SMELT_EMU_RANDOM && smelt_emu_coin());
  if (early) smelt_emu_land({dst, src, bytes});
  else smelt_emu_open_group.push_back({dst, src, bytes});
}
static void smelt_emu_commit() {
  smelt_emu_groups.push_back(std::move(smelt_emu_open_group));
  smelt_emu_open_group.clear();
}
static void smelt_emu_wait(unsigned int n) {
  while (smelt_emu_groups.size() > n) {
    for (const smelt_emu_copy& c : smelt_emu_groups.front()) smelt_emu_land(c);
    smelt_emu_groups.erase(smelt_emu_groups.begin());
  }
}
static void smelt_emu_begin_copies() {
  smelt_emu_open_group.clear(), smelt_emu_groups.clear();
  smelt_emu_coin_state = smelt_emu_seed ^ ((unsigned long long)blockIdx.x << 32) ^ threadIdx.x;
}
static void smelt_emu_end_copies() {
  bool open = !smelt_emu_open_group.empty();
  for (auto& g : smelt_emu_groups) open |= !g.empty();
  if (open) smelt_emu_fail("cp.async copies still in flight when the thread ended (never waited for)");
}

/* Each lane's operand words, visible to its warp between two warp barriers. */
static unsigned int smelt_emu_operand[32][32][6];
static void smelt_emu_publish(const unsigned int* v, int n) {
  const unsigned int w = threadIdx.x / 32, l = threadIdx.x % 32;
  for (int i = 0; i < n; i++) smelt_emu_operand[w][l][i] = v[i];
  __syncwarp();
}
static unsigned short smelt_emu_half(unsigned int addr) {
  smelt_emu_check_smem(addr, 2, "ldmatrix past the dynamic shared memory");
  unsigned short h;
  std::memcpy(&h, smelt_emu_smem_ptr(addr), 2);
  return h;
}
static void smelt_emu_ldmatrix(unsigned int addr, int matrices, bool trans, unsigned int* r) {
  const unsigned int w = threadIdx.x / 32, l = threadIdx.x % 32;
  smelt_emu_publish(&addr, 1);
  for (int i = 0; i < matrices; i++) {
    unsigned int lo, hi;
    if (!trans) {
      const unsigned int row = smelt_emu_operand[w][8 * i + l / 4][0];
      if (row % 16) smelt_emu_fail("ldmatrix: a row address is not 16-byte aligned");
      lo = smelt_emu_half(row + 4 * (l % 4)), hi = smelt_emu_half(row + 4 * (l % 4) + 2);
    } else {
      const unsigned int r0 = smelt_emu_operand[w][8 * i + 2 * (l % 4)][0], r1 = smelt_emu_operand[w][8 * i + 2 * (l % 4) + 1][0];
      if (r0 % 16 || r1 % 16) smelt_emu_fail("ldmatrix: a row address is not 16-byte aligned");
      lo = smelt_emu_half(r0 + 2 * (l / 4)), hi = smelt_emu_half(r1 + 2 * (l / 4));
    }
    r[i] = lo | (hi << 16);
  }
  __syncwarp();
}
static void smelt_emu_mma(float* c, const unsigned int* a, unsigned int b0, unsigned int b1, float (*value)(unsigned short)) {
  const unsigned int w = threadIdx.x / 32, l = threadIdx.x % 32;
  const unsigned int mine[6] = {a[0], a[1], a[2], a[3], b0, b1};
  smelt_emu_publish(mine, 6);
  /* A[r][k] is in lane (r % 8) * 4 + (k % 8) / 2, register r / 8 + 2 (k / 8), half k % 2;
     B[k][n] in lane n * 4 + (k % 8) / 2, register 4 + k / 8, half k % 2. */
  const auto half = [&](unsigned int lane, int reg, int k) {
    return value((unsigned short)(smelt_emu_operand[w][lane][reg] >> (16 * (k % 2))));
  };
  for (int i = 0; i < 4; i++) {
    const int r = l / 4 + 8 * (i / 2), n = 2 * (l % 4) + i % 2;
    for (int k = 0; k < 16; k++)
      c[i] += half((r % 8) * 4 + (k % 8) / 2, r / 8 + 2 * (k / 8), k) * half(n * 4 + (k % 8) / 2, 4 + k / 8, k);
  }
  __syncwarp();
}

/* One launch. `order` lists the blocks in the order they run. */
struct smelt_emu_launch {
  unsigned int grid, block, shared_bytes;
  std::vector<unsigned int> order;
};
static void smelt_emu_begin_block(unsigned int shared_bytes) {
  smelt_emu_block.reset(new std::barrier<>(blockDim.x));
  smelt_emu_warp.clear();
  for (unsigned int w = 0; w < blockDim.x / 32; w++) smelt_emu_warp.emplace_back(new std::barrier<>(32));
  smelt_emu_pdl.reset(new std::barrier<smelt_emu_reveal>(blockDim.x));
  smelt_emu_dynamic_bytes = shared_bytes;
#if SMELT_EMU_ASAN
  /* Past the launch's dynamic shared memory nothing may be touched. */
  ASAN_UNPOISON_MEMORY_REGION(smelt_emu_dynamic, SMELT_EMU_MAX_DYNAMIC);
  ASAN_POISON_MEMORY_REGION(smelt_emu_dynamic + shared_bytes, SMELT_EMU_MAX_DYNAMIC - shared_bytes);
#endif
  std::memset(smelt_emu_dynamic, 0xff, shared_bytes);
  smelt_emu_hide();
}
static void smelt_emu_end_thread() {
  if (!smelt_emu_waited) smelt_emu_pdl->arrive_and_drop();
  smelt_emu_warp[threadIdx.x / 32]->arrive_and_drop();
  smelt_emu_block->arrive_and_drop();
}
struct smelt_emu_next_block {
  const smelt_emu_launch* l;
  unsigned int* i;
  void operator()() noexcept {
    if (++*i < l->order.size()) smelt_emu_begin_block(l->shared_bytes);
  }
};
/* Runs `kernel()` for every thread of every block. */
template <class F> static void smelt_emu_run(const smelt_emu_launch& l, F kernel) {
  if (l.block == 0 || l.block % 32 || l.block > 1024) smelt_emu_fail("block size must be a multiple of 32, at most 1024");
  if (l.shared_bytes > SMELT_EMU_MAX_DYNAMIC) smelt_emu_fail("more dynamic shared memory than a GPU has");
  blockDim = {l.block, 1, 1}, gridDim = {l.grid, 1, 1};
  if (l.order.empty()) return;
  unsigned int i = 0;
  smelt_emu_begin_block(l.shared_bytes);
  std::barrier<smelt_emu_next_block> between(l.block, smelt_emu_next_block{&l, &i});
  std::vector<std::thread> threads;
  for (unsigned int t = 0; t < l.block; t++) {
    threads.emplace_back([&, t] {
      for (size_t k = 0; k < l.order.size(); k++) {
        threadIdx = {t, 0, 0}, blockIdx = {l.order[k], 0, 0};
        /* Reports name the thread as block.thread. */
        char name[16];
        snprintf(name, sizeof name, "b%u.t%u", blockIdx.x, t);
        pthread_setname_np(pthread_self(), name);
        smelt_emu_waited = false;
        smelt_emu_begin_copies();
        kernel();
        smelt_emu_end_copies();
        smelt_emu_end_thread();
        between.arrive_and_wait();
      }
    });
  }
  for (auto& th : threads) th.join();
}

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__ __restrict
/* The prelude's warp collectives are built on the shuffles above. */
#define SMELT_HOST_WARPS

/* Calls a kernel with cuLaunchKernel's argument array: args[i] points at parameter i. */
#include <utility>
template <class... A, size_t... I> static void smelt_emu_invoke(void (*f)(A...), void** args, std::index_sequence<I...>) {
  f(*(A*)args[I]...);
}
template <class... A> static void smelt_emu_invoke(void (*f)(A...), void** args) {
  smelt_emu_invoke(f, args, std::index_sequence_for<A...>{});
}

