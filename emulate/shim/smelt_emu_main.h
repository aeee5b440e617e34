/* The emulator's runner: `kernels SCRIPT [FILL]` reads a script of buffers and launches, runs
 * it, writes buffers back. Memory nothing wrote (buffers given no bytes, filled ones, each
 * block's dynamic shared memory) holds all ones, or every byte FILL (decimal): the runner's
 * second run, whose dumps differ from the first only where a kernel read such memory.
 *
 *   buffer <id> <bytes> <path | ->     a heap block of exactly <bytes>, from a file or unwritten
 *   pointer <buf> <offset> <target> <target offset>
 *                                      stores the host address of target + offset at buf + offset
 *   launch <kernel> <grid> <block> <shared bytes> <landing: 0 late, 1 early, 2 random> <seed>
 *          <block order: 0 in order, r reversed, else a seed> <n> (<buf> <offset>) x n
 *          <m> (<buf>) x m
 *                                      the m buffers stay hidden until each block's grid wait
 *   dump <buf> <path>                  writes the buffer's bytes
 *   fill <buf>                         sets the buffer back to unwritten
 *   atomics <path>                     writes the number of atomic operations of the last
 *                                      launch (8 bytes, little-endian)
 *
 * Ids are dense from 0. Each launch's parameters are pointers into buffers. */
#pragma once
#include <fstream>
#include <string>

typedef void (*smelt_emu_kernel)(void** args);
extern const smelt_emu_kernel smelt_emu_kernels[];
extern const unsigned int smelt_emu_kernel_count;

static std::vector<unsigned int> smelt_emu_block_order(unsigned int grid, const std::string& how) {
  std::vector<unsigned int> order(grid);
  for (unsigned int b = 0; b < grid; b++) order[b] = how == "r" ? grid - 1 - b : b;
  unsigned long long seed = how == "r" ? 0 : std::stoull(how);
  for (unsigned int b = grid; seed && b > 1; b--) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    std::swap(order[b - 1], order[(seed >> 33) % b]);
  }
  return order;
}

int main(int argc, char** argv) {
  if (argc != 2 && argc != 3) smelt_emu_fail("usage: emulator SCRIPT [FILL]");
  if (argc == 3) smelt_emu_unwritten = (unsigned char)std::stoul(argv[2]);
  std::ifstream script(argv[1]);
  std::vector<unsigned char*> buffers;
  std::vector<size_t> sizes;
  std::string word;
  while (script >> word) {
    if (word == "buffer") {
      size_t id, bytes;
      std::string path;
      script >> id >> bytes >> path;
      if (id != buffers.size()) smelt_emu_fail("buffer ids must be dense");
      unsigned char* p = (unsigned char*)malloc(bytes ? bytes : 1);
      if (path == "-") std::memset(p, smelt_emu_unwritten, bytes);
      else {
        FILE* f = fopen(path.c_str(), "rb");
        if (!f || fread(p, 1, bytes, f) != bytes) smelt_emu_fail("cannot read a buffer's file");
        fclose(f);
      }
      buffers.push_back(p), sizes.push_back(bytes);
    } else if (word == "pointer") {
      size_t buf, offset, target, target_offset;
      script >> buf >> offset >> target >> target_offset;
      if (buf >= buffers.size() || target >= buffers.size() || offset + 8 > sizes[buf] || target_offset > sizes[target])
        smelt_emu_fail("pointer out of range");
      void* value = buffers[target] + target_offset;
      std::memcpy(buffers[buf] + offset, &value, 8);
    } else if (word == "launch") {
      unsigned int kernel, landing, n, m;
      std::string order_seed;
      smelt_emu_launch l;
      script >> kernel >> l.grid >> l.block >> l.shared_bytes >> landing >> smelt_emu_seed >> order_seed >> n;
      if (kernel >= smelt_emu_kernel_count || landing > 2) smelt_emu_fail("bad launch line");
      smelt_emu_landing = (smelt_emu_landing_mode)landing;
      std::vector<void*> params(n);
      for (unsigned int i = 0; i < n; i++) {
        size_t buf, offset;
        script >> buf >> offset;
        if (buf >= buffers.size() || offset > sizes[buf]) smelt_emu_fail("parameter out of range");
        params[i] = buffers[buf] + offset;
      }
      script >> m;
      smelt_emu_hide_list.clear();
      for (unsigned int i = 0; i < m; i++) {
        size_t buf;
        script >> buf;
        if (buf >= buffers.size()) smelt_emu_fail("hidden buffer out of range");
        smelt_emu_hide_list.push_back({buffers[buf], sizes[buf], {}});
      }
      l.order = smelt_emu_block_order(l.grid, order_seed);
      std::vector<void*> args(n);
      for (unsigned int i = 0; i < n; i++) args[i] = &params[i];
      smelt_emu_atomics = 0;
      smelt_emu_run(l, [&] { smelt_emu_kernels[kernel](args.data()); });
      smelt_emu_hide_list.clear();
    } else if (word == "dump") {
      size_t buf;
      std::string path;
      script >> buf >> path;
      if (buf >= buffers.size()) smelt_emu_fail("dump of a buffer that does not exist");
      FILE* f = fopen(path.c_str(), "wb");
      if (!f || fwrite(buffers[buf], 1, sizes[buf], f) != sizes[buf]) smelt_emu_fail("cannot write a dump");
      fclose(f);
    } else if (word == "fill") {
      size_t buf;
      script >> buf;
      if (buf >= buffers.size()) smelt_emu_fail("fill of a buffer that does not exist");
      std::memset(buffers[buf], smelt_emu_unwritten, sizes[buf]);
    } else if (word == "atomics") {
      std::string path;
      script >> path;
      const unsigned long long n = smelt_emu_atomics.load();
      FILE* f = fopen(path.c_str(), "wb");
      if (!f || fwrite(&n, 8, 1, f) != 1) smelt_emu_fail("cannot write the atomics count");
      fclose(f);
    } else {
      smelt_emu_fail("unknown script word");
    }
  }
  for (unsigned char* p : buffers) free(p);
  return 0;
}
