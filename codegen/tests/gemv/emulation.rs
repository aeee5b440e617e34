//! The GEMV run on the host against `ir::eval`: a C++ emulation of CUDA (one OS thread per
//! CUDA thread, real barriers and warp shuffles), under AddressSanitizer.

use std::collections::HashMap;
use std::fmt::Write;
use std::process::Command;

use smelt_codegen::kernels::{Grid, View};
use smelt_ir::{shape, BinaryOp, Bound, Builder, DType, Expr, ExprKind, Op, Tensor};

use crate::common::epilogues::{acc, node, residual, swiglu, to_f32};
use crate::{Case, EPS};

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

/// CUDA, as much as the GEMV uses, on the host: a block's 256 threads run as OS threads
/// (blocks one after another), `__syncthreads` is a barrier, a warp shuffle goes through a
/// per-warp slot array between two warp barriers, `__shared__` is `static`.
const SHIM: &str = r#"#include <barrier>
#include <thread>
#include <vector>
#include <memory>
#include <cstdio>
#include <cstdlib>
#include <math.h>
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct smelt_dim3 { unsigned int x, y, z; };
static thread_local smelt_dim3 threadIdx, blockIdx;
static smelt_dim3 gridDim;
static std::barrier<>* block_barrier;
static std::barrier<>* warp_barrier[8];
static float shuffle_slot[8][32];
static unsigned char* dynamic_smem;
static void __syncthreads() { block_barrier->arrive_and_wait(); }
static float __shfl_xor_sync(unsigned int, float v, int d) {
  const unsigned int w = threadIdx.x / 32, l = threadIdx.x % 32;
  warp_barrier[w]->arrive_and_wait();
  shuffle_slot[w][l] = v;
  warp_barrier[w]->arrive_and_wait();
  return shuffle_slot[w][l ^ d];
}
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#define __restrict__ __restrict
/* The prelude's warp collectives are built on the shuffle above. */
#define SMELT_HOST_WARPS
"#;

fn storage_bytes(dtype: DType, values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| match dtype {
            DType::BF16 => half::bf16::from_f32(v).to_bits().to_le_bytes().to_vec(),
            DType::F16 => half::f16::from_f32(v).to_bits().to_le_bytes().to_vec(),
            DType::F32 => v.to_le_bytes().to_vec(),
            DType::I32 => unreachable!(),
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

fn c_type(dtype: DType) -> &'static str {
    if dtype == DType::F32 {
        "float"
    } else {
        "unsigned short"
    }
}

/// A case's operand buffers (x, w, [norm_w], extras) and what `ir::eval` makes of them.
struct Prepared {
    buffers: Vec<(DType, Vec<f32>)>,
    want: Vec<f32>,
}

fn prepare(case: &Case, seed: u64) -> Prepared {
    let (rows, k, n, dtype) = (case.rows, case.k, case.n, case.dtype);
    let mut rng = Rng(seed);
    // A view from the last row reads row T - 1 of T rows.
    let x_rows = if case.x_view.from_last_row { case.new_tokens } else { rows };
    let wide = x_rows * case.x_view.row_stride;
    let x_wide = Tensor::from_f32(dtype, vec![x_rows, case.x_view.row_stride], rng.fill(wide, -3.0, 3.0));
    let w = Tensor::from_f32(dtype, vec![n, k], rng.fill(n * k, -0.08, 0.08));
    let norm_w = Tensor::from_f32(dtype, vec![k], rng.fill(k, 0.5, 1.5));
    let extras: Vec<Tensor> = case
        .extras
        .iter()
        .map(|(d, s)| {
            let dims: Vec<usize> = s.dims().iter().map(|d| d.fixed().expect("fixed")).collect();
            Tensor::from_f32(*d, dims.clone(), rng.fill(dims.iter().product(), -1.0, 1.0))
        })
        .collect();

    // The reference: Op::Linear on a view of x, evaluated by ir::eval.
    let mut b = Builder::new();
    let mut xw = b.input("x", dtype, shape![x_rows, case.x_view.row_stride]);
    if case.x_view.from_last_row {
        xw = b.slice("last_row", xw, 0, Bound::FromEnd(1), Bound::FromEnd(0)).expect("slice");
    }
    let (lo, hi) = (case.x_view.offset, case.x_view.offset + k);
    let x = b.slice("x_view", xw, 1, Bound::FromStart(lo), Bound::FromStart(hi)).expect("slice");
    let mut ops = vec![x, b.weight("w", dtype, shape![n, k]).expect("w")];
    if case.norm {
        ops.push(b.weight("norm_w", dtype, shape![k]).expect("norm_w"));
    }
    for (i, (d, s)) in case.extras.iter().enumerate() {
        ops.push(b.input(&format!("e{i}"), *d, s.clone()));
    }
    let op = Op::Linear { norm_eps: case.norm.then_some(EPS), epilogue: case.epilogue.clone() };
    let y = b.op("y", op, &ops).expect("linear type-checks");
    b.output("y", y).expect("output");
    let g = b.finish().expect("verifies");
    let mut feed: HashMap<String, Tensor> = HashMap::from([("x".to_string(), x_wide.clone())]);
    feed.extend(extras.iter().enumerate().map(|(i, t)| (format!("e{i}"), t.clone())));
    let weights = HashMap::from([("w".to_string(), w.clone()), ("norm_w".to_string(), norm_w.clone())]);
    let want = smelt_ir::eval(&g, feed, &weights).expect("evaluates")["y"].to_f32_vec();

    let mut buffers = vec![(dtype, x_wide.to_f32_vec()), (dtype, w.to_f32_vec())];
    if case.norm {
        buffers.push((dtype, norm_w.to_f32_vec()));
    }
    buffers.extend(extras.iter().map(|t| (t.dtype(), t.to_f32_vec())));
    Prepared { buffers, want }
}

/// Runs every case's kernel in one host program (one compile): each kernel in a namespace of
/// its own (each source carries the prelude), its operands read from files into heap blocks of
/// exactly their size (so AddressSanitizer catches any read past them); returns the outputs.
fn emulate(cases: &[Case], data: &[Prepared], cxx: &str) -> Vec<Vec<f32>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let dynamic = "  extern __shared__ uint4 xs_vec[];";
    let mut c = String::from(SHIM);
    for (i, case) in cases.iter().enumerate() {
        let source = case.kernel().source;
        assert!(source.contains(dynamic), "{}: no dynamic shared memory declaration", case.name);
        let source = source.replace(dynamic, "  uint4* xs_vec = (uint4*)dynamic_smem;");
        let _ = writeln!(c, "namespace case{i} {{\n{source}}}");
    }
    c.push_str("static void* slurp(const char* path) {\n  FILE* f = fopen(path, \"rb\"); fseek(f, 0, SEEK_END);\n");
    c.push_str("  long n = ftell(f); fseek(f, 0, SEEK_SET); void* p = malloc(n);\n");
    c.push_str("  if (fread(p, 1, n, f) != (size_t)n) abort(); fclose(f); return p;\n}\n");
    c.push_str("int main() {\n  block_barrier = new std::barrier<>(256);\n");
    c.push_str("  for (int w = 0; w < 8; w++) warp_barrier[w] = new std::barrier<>(32);\n");
    for (i, (case, data)) in cases.iter().zip(data).enumerate() {
        let kernel = case.kernel();
        assert_eq!(kernel.launch.block, 256);
        let Grid::Fixed(blocks) = kernel.launch.grid else { panic!("a GEMV has a fixed grid") };
        // The column loop is grid-stride, so any grid computes the same: a smaller one tests it.
        let blocks = case.emulated_grid.unwrap_or(blocks);
        let _ = writeln!(c, "  {{ /* {} */\n    std::vector<void*> buf;", case.name);
        for (j, (d, v)) in data.buffers.iter().enumerate() {
            let path = dir.path().join(format!("c{i}_b{j}"));
            std::fs::write(&path, storage_bytes(*d, v)).expect("write operand");
            let _ = writeln!(c, "    buf.push_back(slurp(\"{}\"));", path.display());
        }
        let out_bytes = case.rows * case.n_out() * case.out_dtype.size_bytes();
        let _ = writeln!(c, "    void* y = calloc({out_bytes}, 1);");
        let _ = writeln!(c, "    dynamic_smem = (unsigned char*)malloc({});", kernel.launch.shared_bytes);
        let _ = writeln!(c, "    case{i}::smelt_step step = {{1u, {}u, 0u, 16u, nullptr}};", case.new_tokens);
        let _ = writeln!(c, "    gridDim = {{{blocks}u, 1u, 1u}};\n    std::vector<std::thread> threads;");
        let args: Vec<String> =
            data.buffers.iter().enumerate().map(|(j, (d, _))| format!("(const {}*)buf[{j}]", c_type(*d))).collect();
        let out_type = c_type(case.out_dtype);
        c.push_str("    for (unsigned int t = 0; t < 256u; t++) threads.emplace_back([&, t] {\n");
        let _ = writeln!(c, "      threadIdx = {{t, 0u, 0u}};\n      for (unsigned int b = 0; b < {blocks}u; b++) {{");
        let _ = writeln!(c, "        blockIdx = {{b, 0u, 0u}};");
        let _ = writeln!(c, "        case{i}::{}({}, ({out_type}*)y, &step);", kernel.name, args.join(", "));
        c.push_str("        __syncthreads();\n      }\n    });\n    for (auto& t : threads) t.join();\n");
        let out = dir.path().join(format!("y{i}"));
        let _ =
            writeln!(c, "    FILE* f = fopen(\"{}\", \"wb\"); fwrite(y, 1, {out_bytes}, f); fclose(f);", out.display());
        c.push_str("  }\n");
    }
    c.push_str("  return 0;\n}\n");
    let (src, exe) = (dir.path().join("gemv.cc"), dir.path().join("gemv"));
    std::fs::write(&src, &c).expect("write harness");
    let flags = ["-std=c++20", "-O1", "-pthread", "-fsanitize=address", "-fno-omit-frame-pointer", "-o"];
    let built = Command::new(cxx).args(flags).arg(&exe).arg(&src).arg("-lm").output().expect("run the C++ compiler");
    assert!(built.status.success(), "{cxx} failed on {}:\n{}", src.display(), String::from_utf8_lossy(&built.stderr));
    let ran = Command::new(&exe).env("ASAN_OPTIONS", "detect_leaks=0").output().expect("run the emulation");
    assert!(ran.status.success(), "the emulated kernels failed:\n{}", String::from_utf8_lossy(&ran.stderr));
    (0..cases.len())
        .zip(cases)
        .map(|(i, case)| {
            from_storage(case.out_dtype, &std::fs::read(dir.path().join(format!("y{i}"))).expect("output"))
        })
        .collect()
}

/// Summation order differs from `ir::eval` (lanes, then a butterfly), so an f32 sum may land on
/// the other side of a storage rounding: allow one 16-bit storage ulp (relative per element,
/// with a floor of a tenth of the outputs' RMS; measured: every 16-bit output bit-exact) or 4
/// f32 ulps (measured 3.4, swiglu_f32, whose K-long sums reorder), but most outputs must match
/// bit for bit, which they only do if every rounding point is where `ir::eval` puts it.
fn compare(case: &Case, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{}", case.name);
    let ulp = match case.dtype {
        DType::BF16 => 1.0 / 128.0,
        DType::F16 => 1.0 / 1024.0,
        _ => 1.0 / 8_388_608.0,
    };
    let scale = (want.iter().map(|v| v * v).sum::<f32>() / want.len() as f32).sqrt();
    let exact = got.iter().zip(want).filter(|(g, w)| g.to_bits() == w.to_bits()).count();
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ulps = if case.dtype == DType::F32 { 4.0 } else { 1.0 };
        let tol = ulps * ulp * (w.abs() + 0.1 * scale) + 1e-6 * scale;
        assert!((g - w).abs() <= tol, "{} [{i}]: kernel {g:e}, ir::eval {w:e} (tolerance {tol:e})", case.name);
    }
    let share = exact as f64 / want.len() as f64;
    eprintln!("{}: {} outputs, {:.1}% bit-exact, the rest within the tolerance", case.name, want.len(), share * 100.0);
    if case.dtype != DType::F32 {
        assert!(share > 0.9, "{}: only {:.1}% bit-exact", case.name, share * 100.0);
    }
}

fn which_cxx() -> Option<String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let probe = Command::new(&cxx).args(["-std=c++20", "-fsanitize=address", "-x", "c++", "-E", "-"]).output();
    probe.is_ok_and(|o| o.status.success()).then_some(cxx)
}

#[test]
fn emulated_kernels_match_eval() {
    let Some(cxx) = which_cxx() else {
        let why = "no C++20 compiler with AddressSanitizer (c++) to emulate the kernel on the host";
        smelt_codegen::skip::missing_tool("emulated_kernels_match_eval", why);
        return;
    };
    // The Qwen3-0.6B decode projections with their real K, parts and epilogues, but fewer
    // columns: the emulation costs milliseconds per column, and columns are independent.
    let mut cases: Vec<Case> = Vec::new();
    for dtype in [DType::BF16, DType::F16] {
        cases.push(Case::new("qkv", dtype, 1024, 256, true, None));
        cases.push(Case::new("attn_residual", dtype, 2048, 128, false, Some(residual(dtype))));
        cases.push(Case::new("gate_up", dtype, 1024, 2 * 96, true, Some(swiglu(dtype))));
        cases.push(Case::new("ffn_residual", dtype, 3072, 128, false, Some(residual(dtype))));
        // lm_head's columns outnumber the warps (1024 blocks of 8 at most): here, 3 blocks.
        let mut logits = Case::new("logits", dtype, 1024, 200, true, Some(to_f32(dtype)));
        logits.emulated_grid = Some(3);
        cases.push(logits);
    }
    // Three rows, x a slice of a wider tensor, K with a partial last step (25 vectors), and a
    // per-column extra broadcast over the rows: add(in0, mul(acc, in1[1, N])).
    let d = DType::BF16;
    let mut odd = Case::new("rows3_view", d, 200, 72, true, None);
    let scaled = node(ExprKind::Binary(BinaryOp::Mul, acc(0, 1, d), node(ExprKind::Input(1), d)), d);
    odd.epilogue = Some(Expr::new(ExprKind::Binary(BinaryOp::Add, node(ExprKind::Input(0), d), scaled), d));
    (odd.rows, odd.x_view) = (3, View { offset: 24, row_stride: 264, from_last_row: false });
    odd.extras = vec![(d, shape![3, 72]), (d, shape![1, 72])];
    cases.push(odd);
    // The prefill lm_head on the last of T = 5 rows (a slice, then a column view of it).
    let mut last = Case::new("last_row", d, 256, 48, false, Some(to_f32(d)));
    (last.x_view, last.new_tokens) = (View { offset: 8, row_stride: 264, from_last_row: true }, 5);
    cases.push(last);
    let mut f32_case = Case::new("swiglu", DType::F32, 512, 96, true, Some(swiglu(DType::F32)));
    f32_case.rows = 2;
    cases.push(f32_case);
    cases.push(Case::new("plain", DType::F16, 256, 40, false, None));
    // Qwen3-4B's down_proj shape of batching: K of 19 steps (a prime), so the batch (16) does
    // not divide them and the second batch's loads past K are guarded; the residual read too.
    cases.push(Case::new("partial_batch", DType::BF16, 19 * 32 * 8, 24, false, Some(residual(DType::BF16))));
    let data: Vec<Prepared> = cases.iter().enumerate().map(|(i, case)| prepare(case, 0x9e37 + i as u64)).collect();
    let outputs = emulate(&cases, &data, &cxx);
    for ((case, data), got) in cases.iter().zip(&data).zip(&outputs) {
        compare(case, got, &data.want);
    }
}
