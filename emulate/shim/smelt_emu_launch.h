/* smelt's CUDA emulator: running a launch, its blocks in groups of threads (smelt_emu.h has
 * the state each group owns). Follows smelt_emu.h. */
#pragma once
#include <condition_variable>
#include <functional>
#include <mutex>

/* One launch. `order` lists the blocks in the order they start: group g runs blocks g,
   g + G, g + 2G, ... of it, one after another (G groups, fewer for a smaller grid). */
struct smelt_emu_launch {
  unsigned int grid, block, shared_bytes;
  std::vector<unsigned int> order;
};
/* Readies group g for its next block: fresh barriers, its dynamic shared memory all ones (and
   under AddressSanitizer poisoned past the launch's bytes); with one group, the hidden buffers
   hidden again until this block's wait. */
static void smelt_emu_begin_block(unsigned int g) {
  smelt_emu_group_state& s = smelt_emu_groups_state[g];
  s.block.reset(new smelt_emu_barrier<>(blockDim.x));
  s.warp.clear();
  for (unsigned int w = 0; w < blockDim.x / 32; w++) s.warp.emplace_back(new smelt_emu_barrier<>(32));
#if SMELT_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(s.dynamic, SMELT_EMU_MAX_DYNAMIC);
  ASAN_POISON_MEMORY_REGION(s.dynamic + smelt_emu_dynamic_bytes, SMELT_EMU_MAX_DYNAMIC - smelt_emu_dynamic_bytes);
#endif
  std::memset(s.dynamic, smelt_emu_unwritten, smelt_emu_dynamic_bytes);
  if (SMELT_EMU_GROUPS == 1) {
    s.pdl.reset(new smelt_emu_barrier<smelt_emu_reveal>(blockDim.x));
    smelt_emu_hide();
  }
}
static void smelt_emu_end_thread() {
  if (!smelt_emu_waited && smelt_emu_pdl) smelt_emu_pdl->arrive_and_drop();
  smelt_emu_g->warp[threadIdx.x / 32]->arrive_and_drop();
  smelt_emu_g->block->arrive_and_drop();
}
struct smelt_emu_next_block {
  unsigned int g, blocks;
  unsigned int* done;
  void operator()() noexcept {
    if (++*done < blocks) smelt_emu_begin_block(g);
  }
};
/* OS threads kept from launch to launch: ThreadSanitizer makes creating and ending a thread
   slow (a third of a run's time when each launch had threads of its own). A launch hands its
   job to the first n; the pool's lock orders the launch's setup before the job and the job
   before whatever follows the launch, as creating and joining threads did. */
struct smelt_emu_pool_state {
  std::mutex m;
  std::condition_variable start, finished;
  std::vector<std::thread> threads;
  std::function<void(unsigned int)> job;
  unsigned long long launch = 0;
  unsigned int need = 0, done = 0;
  bool quit = false;
};
static smelt_emu_pool_state smelt_emu_pool;
static void smelt_emu_pool_worker(unsigned int id) {
  smelt_emu_pool_state& p = smelt_emu_pool;
  unsigned long long seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(p.m);
      p.start.wait(lock, [&] { return p.quit || p.launch != seen; });
      if (p.quit) return;
      seen = p.launch;
      if (id >= p.need) continue;
    }
    p.job(id);
    std::lock_guard<std::mutex> lock(p.m);
    if (++p.done == p.need) p.finished.notify_all();
  }
}
/* Runs job(i) for i < n, each on a pool thread, and returns when all have. */
static void smelt_emu_pool_run(unsigned int n, std::function<void(unsigned int)> job) {
  smelt_emu_pool_state& p = smelt_emu_pool;
  while (p.threads.size() < n) p.threads.emplace_back(smelt_emu_pool_worker, (unsigned int)p.threads.size());
  std::unique_lock<std::mutex> lock(p.m);
  p.job = std::move(job), p.need = n, p.done = 0, p.launch++;
  p.start.notify_all();
  p.finished.wait(lock, [&] { return p.done == p.need; });
}
static void smelt_emu_pool_end() {
  {
    std::lock_guard<std::mutex> lock(smelt_emu_pool.m);
    smelt_emu_pool.quit = true;
  }
  smelt_emu_pool.start.notify_all();
  for (auto& th : smelt_emu_pool.threads) th.join();
}
/* Runs `kernel()` for every thread of every block. With several groups, the hidden buffers
   are hidden from the first block of each (every block with one group) and shown once all of
   those have passed their waits: a barrier across groups there alone, before which a kernel
   reads only weights, so it orders nothing a race check needs. */
template <class F> static void smelt_emu_run(const smelt_emu_launch& l, F kernel) {
  if (l.block == 0 || l.block % 32 || l.block > 1024) smelt_emu_fail("block size must be a multiple of 32, at most 1024");
  if (l.shared_bytes > SMELT_EMU_MAX_DYNAMIC) smelt_emu_fail("more dynamic shared memory than a GPU has");
  blockDim = {l.block, 1, 1}, gridDim = {l.grid, 1, 1};
  smelt_emu_dynamic_bytes = l.shared_bytes;
  const unsigned int n = (unsigned int)l.order.size();
  if (n == 0) return;
  const unsigned int groups = n < SMELT_EMU_GROUPS ? n : SMELT_EMU_GROUPS;
  std::unique_ptr<smelt_emu_barrier<smelt_emu_reveal>> first_wave;
  if (SMELT_EMU_GROUPS > 1 && !smelt_emu_hide_list.empty()) {
    smelt_emu_hide();
    first_wave.reset(new smelt_emu_barrier<smelt_emu_reveal>(groups * l.block));
  }
  std::vector<unsigned int> done(groups, 0);
  std::vector<std::unique_ptr<smelt_emu_barrier<smelt_emu_next_block>>> between;
  for (unsigned int g = 0; g < groups; g++) {
    smelt_emu_begin_block(g);
    const unsigned int blocks = (n - g + groups - 1) / groups;
    between.emplace_back(new smelt_emu_barrier<smelt_emu_next_block>(l.block, smelt_emu_next_block{g, blocks, &done[g]}));
  }
  smelt_emu_pool_run(groups * l.block, [&](unsigned int i) {
    const unsigned int g = i / l.block, t = i % l.block;
    smelt_emu_group = g, smelt_emu_g = &smelt_emu_groups_state[g], smelt_emu_dynamic = smelt_emu_g->dynamic;
    for (unsigned int k = g; k < n; k += groups) {
      threadIdx = {t, 0, 0}, blockIdx = {l.order[k], 0, 0};
      /* Reports name the thread as block.thread. */
      char name[16];
      snprintf(name, sizeof name, "b%u.t%u", blockIdx.x, t);
      pthread_setname_np(pthread_self(), name);
      smelt_emu_pdl = SMELT_EMU_GROUPS == 1 ? smelt_emu_g->pdl.get() : k == g ? first_wave.get() : nullptr;
      smelt_emu_waited = false, smelt_emu_phase = 0;
      smelt_emu_begin_copies();
      kernel();
      smelt_emu_end_copies();
      smelt_emu_end_thread();
      between[g]->arrive_and_wait();
    }
  });
}
