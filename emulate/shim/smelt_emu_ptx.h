/* The PTX smelt's kernels use, emulated from the PTX ISA's definitions, independently of the
 * kernels' own index math. Included after the prelude, which defines these names only for
 * NVRTC (under __CUDACC__); so the kernels call them unchanged.
 *
 * cp.async: each 16-byte copy joins the thread's open group; commit closes it; wait_group n
 * lands all but the newest n groups. A copy lands at the latest moment the ISA allows (its
 * wait), at the earliest (at issue), or either, by a seeded coin per copy: a kernel that reads
 * a stage before waiting for it, or refills a stage another warp still reads, gives different
 * bits across the modes (and under ThreadSanitizer, a race report).
 *
 * ldmatrix .m8n8 .x1/.x2/.x4 (.trans) and mma.sync .m16n8k16 .row.col (f32 += bf16/f16 x
 * bf16/f16): the warp's lanes publish their operands, and each lane computes its registers
 * from the fragment tables ("Matrix Fragments for mma.m16n8k16 with floating point type",
 * g = lane / 4, t = lane % 4):
 *   A (16x16): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..];
 *   B (16x8):  b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g];
 *   C (16x8):  c0, c1 = C[g][2t, 2t+1]; c2, c3 = C[g+8][2t, 2t+1];
 *   ldmatrix: register i of lane l is row l/4, elements 2(l%4), 2(l%4)+1 of matrix i, whose
 *   8 row addresses lanes 8i..8i+7 give; with .trans, column l/4, rows 2(l%4), 2(l%4)+1.
 * A register holds its lower-indexed element in its low half. */

SMELT_FN unsigned int smelt_smem_addr(const void* p) { return smelt_emu_smem_addr(p); }
SMELT_FN void smelt_cp_async16(unsigned int dst, const void* src, unsigned int n) { smelt_emu_cp16(dst, src, n); }
SMELT_FN void smelt_cp_async_commit() { smelt_emu_commit(); }
#define SMELT_CP_ASYNC_WAIT(n) smelt_emu_wait(n)
SMELT_FN void smelt_ldmatrix_x4(unsigned int a, unsigned int& r0, unsigned int& r1, unsigned int& r2, unsigned int& r3) {
  unsigned int r[4];
  smelt_emu_ldmatrix(a, 4, false, r);
  r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}
SMELT_FN void smelt_ldmatrix_x4_trans(unsigned int a, unsigned int& r0, unsigned int& r1, unsigned int& r2, unsigned int& r3) {
  unsigned int r[4];
  smelt_emu_ldmatrix(a, 4, true, r);
  r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}
SMELT_FN void smelt_mma_bf16(float* c, const unsigned int* a, unsigned int b0, unsigned int b1) {
  smelt_emu_mma(c, a, b0, b1, smelt_load_bf16);
}
SMELT_FN void smelt_mma_f16(float* c, const unsigned int* a, unsigned int b0, unsigned int b1) {
  smelt_emu_mma(c, a, b0, b1, smelt_load_f16);
}
SMELT_FN unsigned int smelt_pack_bf16(float lo, float hi) {
  return (unsigned int)smelt_store_bf16(lo) | ((unsigned int)smelt_store_bf16(hi) << 16);
}
SMELT_FN unsigned int smelt_pack_f16(float lo, float hi) {
  return (unsigned int)smelt_store_f16(lo) | ((unsigned int)smelt_store_f16(hi) << 16);
}
#undef SMELT_GRID_WAIT
#undef SMELT_GRID_LAUNCH
#define SMELT_GRID_WAIT() smelt_emu_grid_wait()
#define SMELT_GRID_LAUNCH() smelt_emu_grid_launch()
