/* smelt's CUDA emulator: running a launch, its blocks in groups of threads (smelt_emu.h has
 * the state each group owns), each thread a fiber (smelt_emu_fiber.h). Follows both. */
#pragma once

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
  smelt_emu_thread& self = *smelt_emu_self();
  if (!self.waited && self.pdl) self.pdl->arrive_and_drop();
  self.g->warp[threadIdx.x / 32]->arrive_and_drop();
  self.g->block->arrive_and_drop();
}
struct smelt_emu_next_block {
  unsigned int g, blocks;
  unsigned int* done;
  void operator()() noexcept {
    if (++*done < blocks) smelt_emu_begin_block(g);
  }
};
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
    smelt_emu_thread& self = *smelt_emu_self();
    self.group = g, self.g = &smelt_emu_groups_state[g], self.dynamic = self.g->dynamic;
    for (unsigned int k = g; k < n; k += groups) {
      self.thread_idx = {t, 0, 0}, self.block_idx = {l.order[k], 0, 0};
      /* Reports name the thread as block.thread. */
      char name[16];
      snprintf(name, sizeof name, "b%u.t%u", self.block_idx.x, t);
      smelt_emu_name_thread(name);
      self.pdl = SMELT_EMU_GROUPS == 1 ? self.g->pdl.get() : k == g ? first_wave.get() : nullptr;
      self.waited = false, self.phase = 0;
      smelt_emu_begin_copies();
      kernel();
      smelt_emu_end_copies();
      smelt_emu_end_thread();
      between[g]->arrive_and_wait();
    }
  });
}
