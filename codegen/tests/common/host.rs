//! Generated CUDA C run on the host, no GPU needed: a small C++ shim runs one std::thread per
//! CUDA thread, barriers for `__syncthreads` and the warp shuffles, blocks one after another.
//! The host libm gives eval's sin, cos and exp.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What a kernel source needs around it to compile as C++ and run on the host.
pub const SHIM: &str = r#"#include <math.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <barrier>
#include <memory>
#include <thread>
#include <vector>
#define __global__
#define __launch_bounds__(n)
#define __restrict__ __restrict
#define __shared__ static
/* The prelude's warp collectives are built on the shuffles below. */
#define SMELT_HOST_WARPS
struct uint2 { unsigned x, y; };
struct uint4 { unsigned x, y, z, w; };
struct smelt_idx { unsigned x; };
static thread_local smelt_idx threadIdx, blockIdx;
static smelt_idx blockDim, gridDim;
static std::barrier<>* smelt_block;
static std::vector<std::unique_ptr<std::barrier<>>> smelt_warps;
static unsigned smelt_slots[1024];
static void __syncthreads() { smelt_block->arrive_and_wait(); }
static float __fmul_rn(float a, float b) { return a * b; }
static float __fadd_rn(float a, float b) { return a + b; }
template <class T> static T __shfl_xor_sync(unsigned, T v, int o) {
  const unsigned t = threadIdx.x;
  T r;
  std::memcpy(&smelt_slots[t], &v, 4);
  smelt_warps[t / 32]->arrive_and_wait();
  std::memcpy(&r, &smelt_slots[t ^ o], 4);
  smelt_warps[t / 32]->arrive_and_wait();
  return r;
}
template <class T> static T __shfl_sync(unsigned, T v, int src) {
  const unsigned t = threadIdx.x;
  T r;
  std::memcpy(&smelt_slots[t], &v, 4);
  smelt_warps[t / 32]->arrive_and_wait();
  std::memcpy(&r, &smelt_slots[t / 32 * 32 + src], 4);
  smelt_warps[t / 32]->arrive_and_wait();
  return r;
}
template <class F> static void smelt_launch(unsigned grid, unsigned block, F f) {
  blockDim.x = block, gridDim.x = grid;
  for (unsigned b = 0; b < grid; ++b) {
    std::barrier<> bar(block);
    smelt_block = &bar, smelt_warps.clear();
    for (unsigned w = 0; w < block / 32; ++w) smelt_warps.emplace_back(new std::barrier<>(32));
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < block; ++t) ts.emplace_back([=] { threadIdx.x = t, blockIdx.x = b, f(); });
    for (auto& t : ts) t.join();
  }
}
/* A buffer from a file; converts to whatever pointer a kernel parameter wants. */
struct smelt_any { void* p; template <class T> operator T*() const { return (T*)p; } };
static smelt_any smelt_read(const char* path) {
  FILE* f = fopen(path, "rb");
  fseek(f, 0, SEEK_END); long n = ftell(f); fseek(f, 0, SEEK_SET);
  void* p = aligned_alloc(64, (n + 127) / 64 * 64);
  if (fread(p, 1, n, f) != (size_t)n) abort();
  return smelt_any{p};
}
"#;

/// Compiles the C++20 program `src` in `dir`; None (and a "skipped" line) without a compiler.
pub fn build(dir: &Path, src: &str) -> Option<PathBuf> {
    let (cpp, exe) = (dir.join("kernels.cpp"), dir.join("kernels"));
    std::fs::write(&cpp, src).expect("write C++");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    // No FMA contraction on the host either: eval rounds every product before a sum.
    let flags = ["-std=c++20", "-O1", "-ffp-contract=off", "-pthread", "-w", "-o"];
    match Command::new(&cxx).args(flags).arg(&exe).arg(&cpp).status() {
        Ok(s) if s.success() => Some(exe),
        Ok(_) => panic!("{cxx} failed on the emulated kernels ({})", cpp.display()),
        Err(e) => {
            smelt_codegen::skip::missing_tool(&super::current_test(), &format!("no C++20 compiler ({cxx}: {e})"));
            None
        }
    }
}
