//! The GEMM run on the host against `ir::eval`: a C++ emulation of CUDA and of the PTX the
//! kernel uses (`ldmatrix`, `mma`, `cp.async`), under AddressSanitizer.

use smelt_codegen::kernels::View;
use smelt_codegen::PRELUDE;
use smelt_ir::{shape, BinaryOp, DType, Expr, ExprKind, Shape, Sym};

use crate::common::epilogues::{acc, node, residual, swiglu, to_f32};
use crate::{tokens, Case};

/// CUDA and the GEMM's PTX on the host: a block's 256 threads run as OS threads (blocks one
/// after another), `__syncthreads` is a barrier. Warp-collective `ldmatrix` and `mma` publish
/// each lane's operands to a per-warp slot array between two warp barriers, then every lane
/// computes its own registers from the PTX ISA's fragment tables (written here from the ISA,
/// independently of the kernel's index math). `cp.async` copies either wait in their commit
/// groups and land only when a `wait_group` requires them, the latest moment the PTX allows, so
/// a stage read before it is waited for reads stale data (shared memory starts as NaNs); or land
/// at issue, the earliest, so a stage refilled while a warp still reads it changes what it
/// reads. Every case runs both ways and must give the same bits.
const SHIM: &str = r#"#include <barrier>
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
const EMULATED_HELPERS: &str = "\
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

struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    fn fill(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| lo + (hi - lo) * self.unit()).collect()
    }
}

fn storage_bytes(dtype: DType, values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| match dtype {
            DType::BF16 => half::bf16::from_f32(v).to_bits().to_le_bytes().to_vec(),
            DType::F16 => half::f16::from_f32(v).to_bits().to_le_bytes().to_vec(),
            _ => v.to_le_bytes().to_vec(),
        })
        .collect()
}

fn from_storage(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::BF16 => bytes.chunks(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        DType::F16 => bytes.chunks(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        _ => bytes.chunks(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
    }
}

/// A case run at T rows: its operand buffers (x, w, extras) and what `ir::eval` makes of them.
struct Run {
    t: usize,
    /// Blocks the emulation launches, when not the kernel's own grid.
    grid: Option<u32>,
    buffers: Vec<(DType, Vec<f32>)>,
    want: Vec<f32>,
}

fn prepare(case: &Case, t: usize, grid: Option<u32>, seed: u64) -> Run {
    use smelt_ir::{Bound, Builder, Op, Tensor};
    use std::collections::HashMap;
    let (k, n, dtype, stride) = (case.k, case.n, case.dtype, case.x_view.row_stride);
    let mut rng = Rng(seed);
    let x_wide = Tensor::from_f32(dtype, vec![t, stride], rng.fill(t * stride, -3.0, 3.0));
    let w = Tensor::from_f32(dtype, vec![n, k], rng.fill(n * k, -0.2, 0.2));
    let extras: Vec<Tensor> = case
        .extras
        .iter()
        .map(|(d, s)| {
            let dims = s.resolve(&tokens(t));
            Tensor::from_f32(*d, dims.clone(), rng.fill(dims.iter().product(), -1.0, 1.0))
        })
        .collect();
    let mut b = Builder::new();
    let xw = b.input("x", dtype, shape![t, stride]);
    let (lo, hi) = (case.x_view.offset, case.x_view.offset + k);
    let x = b.slice("x_view", xw, 1, Bound::FromStart(lo), Bound::FromStart(hi)).expect("slice");
    let mut ops = vec![x, b.weight("w", dtype, shape![n, k]).expect("w")];
    for (i, e) in extras.iter().enumerate() {
        ops.push(b.input(&format!("e{i}"), e.dtype(), Shape::new(e.shape().iter().map(|&d| d.into()))));
    }
    let op = Op::Linear { norm_eps: None, epilogue: case.epilogue.clone() };
    let y = b.op("y", op, &ops).expect("linear type-checks");
    b.output("y", y).expect("output");
    let g = b.finish().expect("verifies");
    let mut feed = HashMap::from([("x".to_string(), x_wide.clone())]);
    feed.extend(extras.iter().enumerate().map(|(i, e)| (format!("e{i}"), e.clone())));
    let weights = HashMap::from([("w".to_string(), w.clone())]);
    let want = smelt_ir::eval(&g, feed, &weights).expect("evaluates")["y"].to_f32_vec();
    let mut buffers = vec![(dtype, x_wide.to_f32_vec()), (dtype, w.to_f32_vec())];
    buffers.extend(extras.iter().map(|e| (e.dtype(), e.to_f32_vec())));
    Run { t, grid, buffers, want }
}

/// Runs every case's kernel in one host program (one compile), each in a namespace of its
/// own, operands in heap blocks of exactly their size (AddressSanitizer catches any read past
/// them); returns the outputs.
fn emulate(cases: &[(Case, Run)], cxx: &str) -> Vec<Vec<f32>> {
    use std::fmt::Write;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = String::from(SHIM);
    for (i, (case, _)) in cases.iter().enumerate() {
        let source = case.kernel().source;
        let body = source.strip_prefix(PRELUDE).expect("a kernel source starts with the prelude");
        let source = format!("{PRELUDE}{EMULATED_HELPERS}{body}");
        let dynamic = "  extern __shared__ uint4 gemm_smem[];";
        assert!(source.contains(dynamic), "{}: no dynamic shared memory declaration", case.name);
        let source = source.replace(dynamic, "  uint4* gemm_smem = (uint4*)dynamic_smem;");
        let _ = writeln!(c, "namespace case{i} {{\n{source}}}");
    }
    c.push_str("static void* slurp(const char* path) {\n  FILE* f = fopen(path, \"rb\"); fseek(f, 0, SEEK_END);\n");
    c.push_str("  long n = ftell(f); fseek(f, 0, SEEK_SET); void* p = malloc(n);\n");
    c.push_str("  if (fread(p, 1, n, f) != (size_t)n) abort(); fclose(f); return p;\n}\n");
    c.push_str("int main(int argc, char** argv) {\n  block_barrier = new std::barrier<>(256);\n");
    c.push_str("  emu_land_early = argc > 1 && strcmp(argv[1], \"early\") == 0;\n");
    c.push_str("  for (int w = 0; w < 8; w++) warp_barrier[w] = new std::barrier<>(32);\n");
    for (i, (case, run)) in cases.iter().enumerate() {
        let kernel = case.kernel();
        let blocks = run.grid.unwrap_or_else(|| kernel.launch.grid.blocks(&tokens(run.t)));
        let _ = writeln!(c, "  {{ /* {} at T = {} */\n    std::vector<void*> buf;", case.name, run.t);
        for (j, (d, v)) in run.buffers.iter().enumerate() {
            let path = dir.path().join(format!("c{i}_b{j}"));
            std::fs::write(&path, storage_bytes(*d, v)).expect("write operand");
            let _ = writeln!(c, "    buf.push_back(slurp(\"{}\"));", path.display());
        }
        let out_dtype = case.epilogue.as_ref().map_or(case.dtype, |e| e.dtype);
        let out_bytes = run.want.len() * out_dtype.size_bytes();
        let _ = writeln!(c, "    void* y = calloc({out_bytes}, 1);");
        let _ = writeln!(
            c,
            "    dynamic_bytes = {0}u; dynamic_smem = (unsigned char*)malloc({0}); memset(dynamic_smem, 0xff, {0});",
            kernel.launch.shared_bytes
        );
        let _ = writeln!(c, "    case{i}::smelt_step step = {{1u, {}u, 0u, 16u, nullptr}};", run.t);
        let _ = writeln!(c, "    gridDim = {{{blocks}u, 1u, 1u}};\n    std::vector<std::thread> threads;");
        let c_type = |d: DType| if d == DType::F32 { "float" } else { "unsigned short" };
        let args: Vec<String> =
            run.buffers.iter().enumerate().map(|(j, (d, _))| format!("(const {}*)buf[{j}]", c_type(*d))).collect();
        c.push_str("    for (unsigned int t = 0; t < 256u; t++) threads.emplace_back([&, t] {\n");
        let _ = writeln!(c, "      threadIdx = {{t, 0u, 0u}};\n      for (unsigned int b = 0; b < {blocks}u; b++) {{");
        let _ = writeln!(c, "        blockIdx = {{b, 0u, 0u}};");
        let _ = writeln!(c, "        case{i}::{}({}, ({}*)y, &step);", kernel.name, args.join(", "), c_type(out_dtype));
        c.push_str("        __syncthreads();\n      }\n    });\n    for (auto& t : threads) t.join();\n");
        let out = dir.path().join(format!("y{i}"));
        let _ =
            writeln!(c, "    FILE* f = fopen(\"{}\", \"wb\"); fwrite(y, 1, {out_bytes}, f); fclose(f);", out.display());
        c.push_str("    free(dynamic_smem);\n  }\n");
    }
    c.push_str("  return 0;\n}\n");
    let (src, exe) = (dir.path().join("gemm.cc"), dir.path().join("gemm"));
    std::fs::write(&src, &c).expect("write harness");
    let flags = ["-std=c++20", "-O1", "-pthread", "-fsanitize=address", "-fno-omit-frame-pointer", "-o"];
    let built = std::process::Command::new(cxx).args(flags).arg(&exe).arg(&src).arg("-lm").output().expect("run c++");
    assert!(built.status.success(), "{cxx} failed on {}:\n{}", src.display(), String::from_utf8_lossy(&built.stderr));
    let out_dtype = |case: &Case| case.epilogue.as_ref().map_or(case.dtype, |e| e.dtype);
    let run = |mode: &str| -> Vec<Vec<f32>> {
        let ran = std::process::Command::new(&exe)
            .arg(mode)
            .env("ASAN_OPTIONS", "detect_leaks=0")
            .output()
            .expect("run emulation");
        assert!(
            ran.status.success(),
            "the emulated kernels failed ({mode}):\n{}",
            String::from_utf8_lossy(&ran.stderr)
        );
        (0..cases.len())
            .map(|i| {
                from_storage(out_dtype(&cases[i].0), &std::fs::read(dir.path().join(format!("y{i}"))).expect("output"))
            })
            .collect()
    };
    // Copies landing as late and as early as the PTX allows: the same bits, or a stage is
    // read while it is refilled (a missing barrier).
    let (late, early) = (run("late"), run("early"));
    for (i, (l, e)) in late.iter().zip(&early).enumerate() {
        let same = l.iter().zip(e).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{}: cp.async landing at issue changes the output (a race on a stage)", cases[i].0.name);
    }
    late
}

/// Summation order differs from `ir::eval`, so an f32 sum may land on the other side of a
/// storage rounding: allow one storage ulp (relative per element, with a floor of a tenth of
/// the outputs' RMS; the worst measured is 0.075 of one, plain_bf16), but most outputs must
/// match bit for bit, which they only do if every rounding point is where `ir::eval` puts it.
fn compare(case: &Case, t: usize, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{}", case.name);
    let ulp = if case.dtype == DType::BF16 { 1.0 / 128.0 } else { 1.0 / 1024.0 };
    let scale = (want.iter().map(|v| v * v).sum::<f32>() / want.len() as f32).sqrt();
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = ulp * (w.abs() + 0.1 * scale) + 1e-6 * scale;
        assert!((g - w).abs() <= tol, "{} T = {t} [{i}]: kernel {g:e}, ir::eval {w:e} (tolerance {tol:e})", case.name);
    }
    let exact = got.iter().zip(want).filter(|(g, w)| g.to_bits() == w.to_bits()).count();
    let share = exact as f64 / want.len() as f64;
    eprintln!("{} T = {t}: {} outputs, {:.1}% bit-exact, the rest within an ulp", case.name, want.len(), share * 100.0);
    assert!(share > 0.9, "{} T = {t}: only {:.1}% bit-exact", case.name, share * 100.0);
}

#[test]
fn emulated_kernels_match_eval() {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let probe =
        std::process::Command::new(&cxx).args(["-std=c++20", "-fsanitize=address", "-x", "c++", "-E", "-"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        let why = format!("no C++20 compiler with AddressSanitizer ({cxx}) to emulate the kernel on the host");
        smelt_codegen::skip::missing_tool("emulated_kernels_match_eval", &why);
        return;
    }
    // Qwen3's epilogues with small K and N (emulated warps are slow), chosen for the edges: M
    // tails (T = 130: two row tiles, the second of 2 rows), partial column tiles (N_out = 192,
    // 72, 40), K of 1, 2, 3 and 4 stages, a grid smaller than the tiles (1 block for 2 tiles:
    // the ring reused across tiles), a strided x view, broadcast extras and 4 parts.
    let (b, h) = (DType::BF16, DType::F16);
    let mut cases: Vec<(Case, usize, Option<u32>)> = vec![
        (Case::new("plain", b, 96, 192, None), 130, None),
        (Case::new("residual", h, 64, 128, Some(residual(h))), 17, None),
        (Case::new("swiglu", b, 128, 144, Some(swiglu(b))), 33, None),
        (Case::new("swiglu", h, 32, 2 * 128, Some(swiglu(h))), 3, None),
        (Case::new("logits", b, 32, 256, Some(to_f32(b))), 5, Some(1)),
    ];
    // add(in0, mul(acc, in1[1, N])) over a view of a wider x.
    let scaled = node(ExprKind::Binary(BinaryOp::Mul, acc(0, 1, b), node(ExprKind::Input(1), b)), b);
    let mut view = Case::new(
        "view",
        b,
        64,
        64,
        Some(Expr::new(ExprKind::Binary(BinaryOp::Add, node(ExprKind::Input(0), b), scaled), b)),
    );
    (view.x_view, view.extras) = (
        View { offset: 16, row_stride: 96, from_last_row: false },
        vec![(b, shape![Sym::NewTokens, 64]), (b, shape![1, 64])],
    );
    cases.push((view, 20, None));
    // Four parts: add(mul(acc[0/4], acc[1/4]), add(acc[2/4], acc[3/4])).
    let mul = node(ExprKind::Binary(BinaryOp::Mul, acc(0, 4, h), acc(1, 4, h)), h);
    let add = node(ExprKind::Binary(BinaryOp::Add, acc(2, 4, h), acc(3, 4, h)), h);
    cases.push((
        Case::new("parts4", h, 64, 4 * 40, Some(Expr::new(ExprKind::Binary(BinaryOp::Add, mul, add), h))),
        9,
        None,
    ));
    let runs: Vec<(Case, Run)> = cases
        .into_iter()
        .enumerate()
        .map(|(i, (case, t, grid))| {
            let run = prepare(&case, t, grid, 0x5eed + i as u64);
            (case, run)
        })
        .collect();
    let outputs = emulate(&runs, &cxx);
    for ((case, run), got) in runs.iter().zip(&outputs) {
        compare(case, run.t, got, &run.want);
    }
}
