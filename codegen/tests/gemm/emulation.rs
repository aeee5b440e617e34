//! The GEMM run on the host against `ir::eval`: a C++ emulation of CUDA and of the PTX the
//! kernel uses (`ldmatrix`, `mma`, `cp.async`), under AddressSanitizer.

use smelt_codegen::kernels::{gemm_split_k, Grid, View};
use smelt_codegen::PRELUDE;
use smelt_ir::{shape, BinaryOp, DType, Expr, ExprKind, Shape, Sym};

use crate::common::epilogues::{acc, node, residual, swiglu, to_f32};
use crate::{tokens, Case};

#[path = "shim.rs"]
mod shim;
#[path = "split.rs"]
mod split;

use shim::{EMULATED_HELPERS, SHIM};

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

/// A case's launch in the host program: its operands (files the harness reads), its scratch
/// and counters when it splits K (exactly [`Scratch::bytes`] and the counters it asks for, so
/// AddressSanitizer catches a slot past them), two launches in the block order `argv[2]`
/// gives, each checked for the arrivals its grid implies and for counters left at zero.
fn launch_code(i: usize, case: &Case, run: &Run, dir: &std::path::Path) -> String {
    use std::fmt::Write;
    let kernel = case.kernel();
    let blocks = run.grid.unwrap_or_else(|| kernel.launch.grid.blocks(&tokens(run.t)));
    let mut c = format!("  {{ /* {} at T = {} */\n    std::vector<void*> buf;\n", case.name, run.t);
    for (j, (d, v)) in run.buffers.iter().enumerate() {
        let path = dir.join(format!("c{i}_b{j}"));
        std::fs::write(&path, storage_bytes(*d, v)).expect("write operand");
        let _ = writeln!(c, "    buf.push_back(slurp(\"{}\"));", path.display());
    }
    let out_bytes = run.want.len() * out_dtype(case).size_bytes();
    let _ = writeln!(c, "    void* y = calloc({out_bytes}, 1);");
    let shared = kernel.launch.shared_bytes;
    let _ = writeln!(c, "    dynamic_bytes = {shared}u; dynamic_smem = (unsigned char*)malloc({shared});");
    let _ = writeln!(c, "    memset(dynamic_smem, 0xff, {shared});");
    let c_type = |d: DType| if d == DType::F32 { "float" } else { "unsigned short" };
    let mut args: Vec<String> =
        run.buffers.iter().enumerate().map(|(j, (d, _))| format!("(const {}*)buf[{j}]", c_type(*d))).collect();
    args.push(format!("({}*)y", c_type(out_dtype(case))));
    let split = gemm_split_k(&case.spec()).map(|(s, n)| (s.bytes(0, run.t), n));
    if split.is_some() {
        args.extend(["(float*)scratch".to_string(), "counters".to_string()]);
    }
    let (scratch, counters) = split.unwrap_or((0, 0));
    let _ = writeln!(c, "    void* scratch = malloc({});", scratch.max(1));
    let _ = writeln!(c, "    unsigned int* counters = (unsigned int*)calloc({}, 4);", counters.max(1));
    let _ = writeln!(c, "    case{i}::smelt_step step = {{1u, {}u, 0u, 16u, nullptr}};", run.t);
    let _ = writeln!(c, "    gridDim = {{{blocks}u, 1u, 1u}};");
    c.push_str("    for (int launch = 0; launch < 2; launch++) {\n");
    let _ = writeln!(c, "      memset(scratch, 0xff, {});", scratch.max(1));
    let _ = writeln!(c, "      if (launch) memset(y, 0xff, {out_bytes});");
    c.push_str("      emu_arrivals = 0;\n      std::vector<std::thread> threads;\n");
    c.push_str("      for (unsigned int t = 0; t < 256u; t++) threads.emplace_back([&, t] {\n");
    let _ = writeln!(c, "        threadIdx = {{t, 0u, 0u}};\n        for (unsigned int b = 0; b < {blocks}u; b++) {{");
    let _ = writeln!(c, "          blockIdx = {{emu_reverse ? {blocks}u - 1u - b : b, 0u, 0u}};");
    let _ = writeln!(c, "          case{i}::{}({}, &step);", kernel.name, args.join(", "));
    c.push_str("          __syncthreads();\n        }\n      });\n      for (auto& t : threads) t.join();\n");
    let arrivals = split_arrivals(&kernel.launch.grid, run.t);
    let _ = writeln!(c, "      if (emu_arrivals != {arrivals}u) {{ fprintf(stderr, \"{}: %u arrivals, the grid implies {arrivals}\\n\", emu_arrivals.load()); abort(); }}", case.name);
    let _ = writeln!(
        c,
        "      for (int k = 0; k < {counters}; k++) if (counters[k]) emu_fail(\"a counter left nonzero\");"
    );
    let out = dir.join(format!("y{i}"));
    let _ = writeln!(c, "      char path[4096]; snprintf(path, sizeof path, \"{}_%d\", launch);", out.display());
    let _ = writeln!(c, "      FILE* f = fopen(path, \"wb\"); fwrite(y, 1, {out_bytes}, f); fclose(f);");
    c.push_str("    }\n    free(dynamic_smem); free(scratch); free(counters);\n  }\n");
    c
}

/// Blocks that arrive on a split-K counter at `t` rows: every (tile, split) unit when the
/// tiles split, none otherwise.
fn split_arrivals(grid: &Grid, t: usize) -> usize {
    let Grid::Tiles { tile_rows, column_tiles, split_k: Some(s), .. } = grid else { return 0 };
    let tiles = t.div_ceil(*tile_rows as usize) * *column_tiles as usize;
    let splits = s.splits(tiles) as usize;
    if splits > 1 {
        tiles * splits
    } else {
        0
    }
}

fn out_dtype(case: &Case) -> DType {
    case.epilogue.as_ref().map_or(case.dtype, |e| e.dtype)
}

/// Runs every case's kernel in one host program (one compile), each in a namespace of its
/// own, operands in heap blocks of exactly their size (AddressSanitizer catches any read past
/// them); returns the outputs. Every run must give the same bits: copies landing as late and
/// as early as the PTX allows (else a stage is read while it is refilled: a missing barrier),
/// blocks in order and reversed (else a split-K sum depends on which block arrives last), and
/// a second launch (else a counter or a stale partial carries over).
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
    c.push_str("  const bool emu_reverse = argc > 2 && strcmp(argv[2], \"reverse\") == 0;\n");
    c.push_str("  for (int w = 0; w < 8; w++) warp_barrier[w] = new std::barrier<>(32);\n");
    for (i, (case, run)) in cases.iter().enumerate() {
        c.push_str(&launch_code(i, case, run, dir.path()));
    }
    c.push_str("  return 0;\n}\n");
    let (src, exe) = (dir.path().join("gemm.cc"), dir.path().join("gemm"));
    std::fs::write(&src, &c).expect("write harness");
    let flags = ["-std=c++20", "-O1", "-pthread", "-fsanitize=address", "-fno-omit-frame-pointer", "-o"];
    let built = std::process::Command::new(cxx).args(flags).arg(&exe).arg(&src).arg("-lm").output().expect("run c++");
    assert!(built.status.success(), "{cxx} failed on {}:\n{}", src.display(), String::from_utf8_lossy(&built.stderr));
    let run = |landing: &str, order: &str| -> Vec<[Vec<f32>; 2]> {
        let ran = std::process::Command::new(&exe)
            .args([landing, order])
            .env("ASAN_OPTIONS", "detect_leaks=0")
            .output()
            .expect("run emulation");
        let stderr = String::from_utf8_lossy(&ran.stderr);
        assert!(ran.status.success(), "the emulated kernels failed ({landing}, {order}):\n{stderr}");
        let read = |i: usize, launch: usize| {
            let bytes = std::fs::read(dir.path().join(format!("y{i}_{launch}"))).expect("output");
            from_storage(out_dtype(&cases[i].0), &bytes)
        };
        (0..cases.len()).map(|i| [read(i, 0), read(i, 1)]).collect()
    };
    let (late, early) = (run("late", "forward"), run("early", "reverse"));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    for (i, (l, e)) in late.iter().zip(&early).enumerate() {
        let name = &cases[i].0.name;
        assert!(bits(&l[0]) == bits(&l[1]), "{name}: a second launch gives other bits (state carried over)");
        assert!(bits(&e[0]) == bits(&e[1]), "{name}: a second launch gives other bits (state carried over)");
        let same = bits(&l[0]) == bits(&e[0]);
        assert!(same, "{name}: early cp.async landing or reversed blocks change the output (a race)");
    }
    late.into_iter().map(|[first, _]| first).collect()
}

/// Summation order differs from `ir::eval`, so an f32 sum may land on the other side of a
/// storage rounding: allow one storage ulp (relative per element, with a floor of a tenth of
/// the outputs' RMS; the worst measured is 0.075 of one, plain_bf16), but most outputs must
/// match bit for bit, which they only do if every rounding point is where `ir::eval` puts it.
fn compare(case: &Case, t: usize, got: &[f32], want: &[f32]) {
    compare_with_slack(case, t, got, want, &[]);
}

/// [`compare`] with `slack[i]` more magnitude under output i's ulp (missing entries: 0): where
/// an epilogue adds the rounded accumulator to another value (the residual), a sum on the
/// other side of the accumulator's rounding moves the output by one ulp of |acc| <= |y| +
/// |in0|, which cancellation can make many ulps of y. Longer K (split-K's cases) meets it:
/// without slack split3_uneven_f16 measured 1.15 of the tolerance at one output (in0 + acc =
/// -0.0088, acc off by 2^-11, one f16 ulp at |acc| in [0.5, 1)); its unsplit twin 0.83.
fn compare_with_slack(case: &Case, t: usize, got: &[f32], want: &[f32], slack: &[f32]) {
    assert_eq!(got.len(), want.len(), "{}", case.name);
    let ulp = if case.dtype == DType::BF16 { 1.0 / 128.0 } else { 1.0 / 1024.0 };
    let scale = (want.iter().map(|v| v * v).sum::<f32>() / want.len() as f32).sqrt();
    let mut worst: f32 = 0.0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let basis = w.abs() + slack.get(i).map_or(0.0, |s| s.abs()) + 0.1 * scale;
        let tol = ulp * basis + 1e-6 * scale;
        assert!((g - w).abs() <= tol, "{} T = {t} [{i}]: kernel {g:e}, ir::eval {w:e} (tolerance {tol:e})", case.name);
        worst = worst.max((g - w).abs() / (ulp * basis));
    }
    let exact = got.iter().zip(want).filter(|(g, w)| g.to_bits() == w.to_bits()).count();
    let share = exact as f64 / want.len() as f64;
    let n = want.len();
    eprintln!("{} T = {t}: {n} outputs, {:.1}% bit-exact, worst {worst:.3} of the tolerance", case.name, share * 100.0);
    assert!(share > 0.9, "{} T = {t}: only {:.1}% bit-exact", case.name, share * 100.0);
}

/// The C++20 compiler with AddressSanitizer the emulation needs (`$CXX`, else `c++`), or
/// None after saying that `test` is skipped (a failure under CI).
fn host_cxx(test: &str) -> Option<String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let probe =
        std::process::Command::new(&cxx).args(["-std=c++20", "-fsanitize=address", "-x", "c++", "-E", "-"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        let why = format!("no C++20 compiler with AddressSanitizer ({cxx}) to emulate the kernel on the host");
        smelt_codegen::skip::missing_tool(test, &why);
        return None;
    }
    Some(cxx)
}

#[test]
fn emulated_kernels_match_eval() {
    let Some(cxx) = host_cxx("emulated_kernels_match_eval") else { return };
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
