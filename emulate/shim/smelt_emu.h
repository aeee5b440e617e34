/* smelt's CUDA emulator: generated kernels compiled as host C++ and run as a GPU would run them.
 *
 * A launch runs its blocks in a seeded order, one group of blocks at a time (or under
 * ThreadSanitizer SMELT_EMU_GROUPS at once), each CUDA thread a fiber of its own on the
 * runner's one OS thread (smelt_emu_fiber.h), so every barrier is real: __syncthreads is a
 * block barrier, __syncwarp and each warp collective a warp barrier (shuffles and votes
 * exchange per-lane slots between two of them), and a fiber that reaches one runs no further
 * until it opens. Threads that return early drop out of every barrier, as on the GPU.
 * Shared memory is host memory: static __shared__ arrays are statics (one per group), the
 * dynamic array a static arena per group, filled with ones (NaN in every float type) at each
 * block's start; under AddressSanitizer the arena past the launch's dynamic bytes is
 * poisoned. Reports name each CUDA thread "b<block>.t<thread>".
 *
 * Built three ways (the runner chooses): plain; under AddressSanitizer, where every buffer is
 * a heap block of exactly its size (a read or write past it is reported with the kernel's
 * source line); or under ThreadSanitizer, where two accesses to one address by different CUDA
 * threads with no barrier between them, one a write, are reported (read-after-write and
 * write-after-read alike: each fiber is a thread to TSan, a fiber switch orders nothing, and
 * each barrier tells it what it orders; a warp collective orders nothing, as on the GPU).
 *
 * Programmatic dependent launch: a launch may name buffers the previous kernel wrote; until a
 * thread's block has passed SMELT_GRID_WAIT (every thread arrived there or returned) they are
 * hidden: poisoned under AddressSanitizer (any access is reported), else overwritten with ones
 * (NaN) and restored at the wait (with several groups, once the first block of each has passed
 * it). Triggering dependents before the wait is reported too.
 *
 * The PTX the kernels use (cp.async, ldmatrix, mma.sync) is in smelt_emu_ptx.h; running a
 * launch in smelt_emu_launch.h. */
#pragma once
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <math.h>
#include <memory>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define SMELT_EMU_ASAN 1
#else
#define SMELT_EMU_ASAN 0
#endif
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define SMELT_EMU_TSAN 1
/* Left out of ThreadSanitizer's view: the emulator's own bookkeeping (barrier counts, which
   fiber runs and which wait), which every fiber touches, all on one OS thread (what a barrier
   orders, it tells ThreadSanitizer itself); and mma's arithmetic, which touches only the
   lane's registers and the warp's exchange slots. */
#define SMELT_EMU_NO_TSAN __attribute__((no_sanitize_thread))
#else
#define SMELT_EMU_TSAN 0
#define SMELT_EMU_NO_TSAN
#endif

struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct alignas(8) uint2 { unsigned int x, y; };
struct smelt_emu_dim3 { unsigned int x, y, z; };
static smelt_emu_dim3 blockDim, gridDim;

/* What each CUDA thread has of its own (besides its stack): its indices; its group of blocks'
   index (static __shared__ arrays are one per group, see source.rs), state and dynamic shared
   memory (what `extern __shared__` names); the grid-dependency barrier it meets at
   SMELT_GRID_WAIT and whether it has; its warp collectives' phase; its cp.async copies (the
   open group, the committed groups not yet landed) and their coin. smelt_emu_self() is the
   running fiber's (smelt_emu_fiber.h): each CUDA thread touches only its own, so that
   ThreadSanitizer, to which each fiber is a thread, sees no race in the emulator's state. */
struct smelt_emu_group_state;
struct smelt_emu_reveal;
template <class F> struct smelt_emu_barrier;
struct smelt_emu_copy { unsigned int dst; const void* src; unsigned int bytes; };
struct smelt_emu_thread {
  smelt_emu_dim3 thread_idx{}, block_idx{};
  unsigned int group = 0;
  smelt_emu_group_state* g = nullptr;
  unsigned char* dynamic = nullptr;
  smelt_emu_barrier<smelt_emu_reveal>* pdl = nullptr;
  bool waited = false;
  unsigned int phase = 0;
  std::vector<smelt_emu_copy> open_copies;
  std::vector<std::vector<smelt_emu_copy>> committed_copies;
  unsigned long long coin = 0;
};
/* Outside a launch: the runner's. */
static smelt_emu_thread smelt_emu_runner_thread;
static smelt_emu_thread* smelt_emu_running_thread = &smelt_emu_runner_thread;
/* Read through functions out of ThreadSanitizer's view: the pointer changes at every switch
   (the scheduler's write, which it does not see), and instrumenting each of the kernels'
   countless reads of threadIdx was a fifth of a race check's time. */
SMELT_EMU_NO_TSAN static smelt_emu_thread* smelt_emu_self() { return smelt_emu_running_thread; }
SMELT_EMU_NO_TSAN static smelt_emu_dim3 smelt_emu_thread_idx() { return smelt_emu_running_thread->thread_idx; }
SMELT_EMU_NO_TSAN static smelt_emu_dim3 smelt_emu_block_idx() { return smelt_emu_running_thread->block_idx; }
#define threadIdx (smelt_emu_thread_idx())
#define blockIdx (smelt_emu_block_idx())

static void smelt_emu_fail(const char* what) {
  fprintf(stderr, "smelt-emu: %s (block %u, thread %u)\n", what, blockIdx.x, threadIdx.x);
  fflush(stderr);
  abort();
}

/* Blocks the running fiber until *word no longer holds value (smelt_emu_fiber.h). */
static void smelt_emu_block_on(const int* word, int value);

/* A barrier of n threads: the last to arrive runs the completion and opens the next phase;
   the others leave the CPU to other fibers until it opens. A thread may drop out (it
   returned). Waiting at it orders memory (__syncthreads, __syncwarp, the grid-dependency
   wait): to ThreadSanitizer every access before it happens before every access after it, and
   before the completion. Meeting at it does not: warp collectives (shuffles, votes, ldmatrix,
   mma) make the warp's lanes wait for each other but order no memory access, on the GPU as
   here. */
struct smelt_emu_no_completion { void operator()() noexcept {} };
template <class F = smelt_emu_no_completion> struct smelt_emu_barrier {
  explicit smelt_emu_barrier(int n, F f = F{}) : left(n), expected(n), completion(f) {}
  void arrive_and_wait() { arrive(false, true); }
  void arrive_and_drop() { arrive(true, true); }
  void meet() { arrive(false, false); }

 private:
  int phase = 0, left, expected, dropped = 0;
  F completion;
  SMELT_EMU_NO_TSAN void arrive(bool drop, bool orders_memory) {
#if SMELT_EMU_TSAN
    if (orders_memory) __tsan_release(this);
#endif
    const int ph = phase;
    if (drop) dropped++;
    if (--left == 0) {
#if SMELT_EMU_TSAN
      __tsan_acquire(this);
#endif
      expected -= dropped, dropped = 0;
      completion();
      left = expected;
#if SMELT_EMU_TSAN
      __tsan_release(this);
#endif
      phase = ph + 1;
      return;
    }
    if (drop) return;
    while (phase == ph) smelt_emu_block_on(&phase, ph);
#if SMELT_EMU_TSAN
    if (orders_memory) __tsan_acquire(this);
#endif
  }
};

/* Blocks run SMELT_EMU_GROUPS at a time, each group's threads sharing nothing with another
   group's but global memory and the kernel's atomics: no barrier orders two groups' blocks,
   so ThreadSanitizer sees a cross-block ordering a kernel relies on without
   making it (split-K's last block reading partials another block stored after its arrival).
   The runner builds it with 1 group but under ThreadSanitizer. */
#ifndef SMELT_EMU_GROUPS
#define SMELT_EMU_GROUPS 1
#endif
static constexpr unsigned int SMELT_EMU_MAX_DYNAMIC = 232448;
struct smelt_emu_reveal { void operator()() noexcept; };
/* What one group's running block owns: its barriers (replaced between blocks), the warps'
   exchange slots and its dynamic shared memory. */
struct smelt_emu_group_state {
  std::unique_ptr<smelt_emu_barrier<>> block;
  std::vector<std::unique_ptr<smelt_emu_barrier<>>> warp;
  /* The block's grid-dependency barrier (null: nothing to wait for, see smelt_emu_run). */
  std::unique_ptr<smelt_emu_barrier<smelt_emu_reveal>> pdl;
  std::atomic<int> or_flag{0};
  unsigned long long slot[2][32][32];
  unsigned int operand[2][32][32][6];
  alignas(128) unsigned char dynamic[SMELT_EMU_MAX_DYNAMIC];
};
static smelt_emu_group_state smelt_emu_groups_state[SMELT_EMU_GROUPS];

static void __syncthreads() { smelt_emu_self()->g->block->arrive_and_wait(); }
/* A barrier that also ORs a predicate over the block. */
static int __syncthreads_or(int p) {
  if (p) smelt_emu_self()->g->or_flag.store(1);
  __syncthreads();
  const int r = smelt_emu_self()->g->or_flag.load();
  __syncthreads();
  if (threadIdx.x == 0) smelt_emu_self()->g->or_flag.store(0);
  __syncthreads();
  return r;
}
static void __syncwarp(unsigned int = 0xffffffffu) { smelt_emu_self()->g->warp[threadIdx.x / 32]->arrive_and_wait(); }
static void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
static float __fmul_rn(float a, float b) { return a * b; }
static float __fadd_rn(float a, float b) { return a + b; }

/* Warp collectives: each lane publishes a word, the warp meets, each reads. The slots
   alternate between two sets, so one meeting per collective is enough: a lane writes a set
   again only after the next collective's meeting, which every lane reaches after its reads of
   that set. (The phase restarts with each block; a warp's lanes run the same collectives.)
   Slots are written and read as relaxed atomics: ThreadSanitizer sees neither a race nor an
   ordering in them (and the compiler plain moves). */
template <class T> static void smelt_emu_put(T* slot, T v) { __atomic_store_n(slot, v, __ATOMIC_RELAXED); }
template <class T> static T smelt_emu_get(const T* slot) { return __atomic_load_n(slot, __ATOMIC_RELAXED); }
template <class T> static T smelt_emu_exchange(T v, unsigned int from) {
  static_assert(sizeof(T) <= 8, "a shuffle moves one register");
  const unsigned int w = threadIdx.x / 32, l = threadIdx.x % 32, p = smelt_emu_self()->phase ^= 1;
  unsigned long long word = 0;
  std::memcpy(&word, &v, sizeof(T));
  smelt_emu_put(&smelt_emu_self()->g->slot[p][w][l], word);
  smelt_emu_self()->g->warp[w]->meet();
  T r;
  word = smelt_emu_get(&smelt_emu_self()->g->slot[p][w][from % 32]);
  std::memcpy(&r, &word, sizeof(T));
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

/* Atomics, counted per launch (a kernel's arrivals can be checked against its grid). The
   count is relaxed: ThreadSanitizer takes a synchronizing one for an ordering between blocks
   that the kernel's own atomics do not make. */
static std::atomic<unsigned long long> smelt_emu_atomics{0};
static void smelt_emu_count() { smelt_emu_atomics.fetch_add(1, std::memory_order_relaxed); }
template <class T> static T atomicAdd(T* p, T v) { smelt_emu_count(); return std::atomic_ref<T>(*p).fetch_add(v); }
template <class T> static T atomicExch(T* p, T v) { smelt_emu_count(); return std::atomic_ref<T>(*p).exchange(v); }

/* The 32-bit shared window: addresses are offsets from the group's dynamic arena, a static,
   so static __shared__ arrays and the arena both fit in 32 bits. */
static unsigned int smelt_emu_dynamic_bytes;
/* What memory nothing wrote holds: all ones (NaN in every float type), or the runner's other
   fill, for a second run whose outputs must not differ (see smelt_emu_main.h). */
static unsigned char smelt_emu_unwritten = 0xff;
static unsigned int smelt_emu_smem_addr(const void* p) {
  return (unsigned int)((uintptr_t)p - (uintptr_t)smelt_emu_self()->dynamic);
}
static unsigned char* smelt_emu_smem_ptr(unsigned int addr) {
  return smelt_emu_self()->dynamic + (intptr_t)(int32_t)addr;
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
  if (smelt_emu_self()->waited) smelt_emu_fail("SMELT_GRID_WAIT twice");
  smelt_emu_self()->waited = true;
  if (smelt_emu_self()->pdl) smelt_emu_self()->pdl->arrive_and_wait();
}
static void smelt_emu_grid_launch() {
  if (!smelt_emu_self()->waited) smelt_emu_fail("SMELT_GRID_LAUNCH before SMELT_GRID_WAIT: dependents would read unfinished inputs");
}

/* ---- The PTX twins' machinery (smelt_emu_ptx.h defines the prelude's names on it). ---- */

enum smelt_emu_landing_mode { SMELT_EMU_LATE, SMELT_EMU_EARLY, SMELT_EMU_RANDOM };
static smelt_emu_landing_mode smelt_emu_landing = SMELT_EMU_LATE;
static unsigned long long smelt_emu_seed;
static bool smelt_emu_coin() {
  /* splitmix64 over (seed, block, thread, draw). */
  unsigned long long z = (smelt_emu_self()->coin += 0x9e3779b97f4a7c15ull);
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
  else smelt_emu_self()->open_copies.push_back({dst, src, bytes});
}
static void smelt_emu_commit() {
  smelt_emu_thread& self = *smelt_emu_self();
  self.committed_copies.push_back(std::move(self.open_copies));
  self.open_copies.clear();
}
static void smelt_emu_wait(unsigned int n) {
  auto& committed = smelt_emu_self()->committed_copies;
  while (committed.size() > n) {
    for (const smelt_emu_copy& c : committed.front()) smelt_emu_land(c);
    committed.erase(committed.begin());
  }
}
static void smelt_emu_begin_copies() {
  smelt_emu_self()->open_copies.clear(), smelt_emu_self()->committed_copies.clear();
  smelt_emu_self()->coin = smelt_emu_seed ^ ((unsigned long long)blockIdx.x << 32) ^ threadIdx.x;
}
static void smelt_emu_end_copies() {
  bool open = !smelt_emu_self()->open_copies.empty();
  for (auto& g : smelt_emu_self()->committed_copies) open |= !g.empty();
  if (open) smelt_emu_fail("cp.async copies still in flight when the thread ended (never waited for)");
}

/* Each lane's operand words, visible to its warp once it has met (in the set of this
   collective's phase, as the exchange's slots); returns the warp's words. */
static unsigned int (*smelt_emu_publish(const unsigned int* v, int n))[6] {
  const unsigned int w = threadIdx.x / 32, l = threadIdx.x % 32, p = smelt_emu_self()->phase ^= 1;
  for (int i = 0; i < n; i++) smelt_emu_put(&smelt_emu_self()->g->operand[p][w][l][i], v[i]);
  smelt_emu_self()->g->warp[w]->meet();
  return smelt_emu_self()->g->operand[p][w];
}
static unsigned short smelt_emu_half(unsigned int addr) {
  smelt_emu_check_smem(addr, 2, "ldmatrix past the dynamic shared memory");
  unsigned short h;
  std::memcpy(&h, smelt_emu_smem_ptr(addr), 2);
  return h;
}
static void smelt_emu_ldmatrix(unsigned int addr, int matrices, bool trans, unsigned int* r) {
  const unsigned int l = threadIdx.x % 32;
  unsigned int(*const lanes)[6] = smelt_emu_publish(&addr, 1);
  for (int i = 0; i < matrices; i++) {
    unsigned int lo, hi;
    if (!trans) {
      const unsigned int row = smelt_emu_get(&lanes[8 * i + l / 4][0]);
      if (row % 16) smelt_emu_fail("ldmatrix: a row address is not 16-byte aligned");
      lo = smelt_emu_half(row + 4 * (l % 4)), hi = smelt_emu_half(row + 4 * (l % 4) + 2);
    } else {
      const unsigned int r0 = smelt_emu_get(&lanes[8 * i + 2 * (l % 4)][0]);
      const unsigned int r1 = smelt_emu_get(&lanes[8 * i + 2 * (l % 4) + 1][0]);
      if (r0 % 16 || r1 % 16) smelt_emu_fail("ldmatrix: a row address is not 16-byte aligned");
      lo = smelt_emu_half(r0 + 2 * (l / 4)), hi = smelt_emu_half(r1 + 2 * (l / 4));
    }
    r[i] = lo | (hi << 16);
  }
}
SMELT_EMU_NO_TSAN static void smelt_emu_mma(float* c, const unsigned int* a, unsigned int b0, unsigned int b1,
                                             float (*value)(unsigned short)) {
  const unsigned int l = threadIdx.x % 32;
  const unsigned int mine[6] = {a[0], a[1], a[2], a[3], b0, b1};
  unsigned int(*const lanes)[6] = smelt_emu_publish(mine, 6);
  /* A[r][k] is in lane (r % 8) * 4 + (k % 8) / 2, register r / 8 + 2 (k / 8), half k % 2;
     B[k][n] in lane n * 4 + (k % 8) / 2, register 4 + k / 8, half k % 2. The lane's rows of A
     (r and r + 8) and columns of B (n and n + 1), each element widened once. (No lambda: it
     would be a function of its own, in ThreadSanitizer's view.) */
  float rows[2][16], columns[2][16];
  for (int h = 0; h < 2; h++) {
    const unsigned int r = l / 4 + 8 * h, n = 2 * (l % 4) + h;
    for (int k = 0; k < 16; k++) {
      const unsigned int shift = 16 * (k % 2);
      rows[h][k] = value((unsigned short)(lanes[(r % 8) * 4 + (k % 8) / 2][r / 8 + 2 * (k / 8)] >> shift));
      columns[h][k] = value((unsigned short)(lanes[n * 4 + (k % 8) / 2][4 + k / 8] >> shift));
    }
  }
  /* c0, c1 = C[r][n, n + 1], c2, c3 = C[r + 8][n, n + 1]; each a sum in k order. */
  for (int i = 0; i < 4; i++)
    for (int k = 0; k < 16; k++) c[i] += rows[i / 2][k] * columns[i % 2][k];
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

