//! The GEMM run on the host against `ir::eval` through `smelt-emulate` (CUDA and the PTX the
//! kernel uses: `ldmatrix`, `mma`, `cp.async`), under AddressSanitizer and ThreadSanitizer.

use smelt_codegen::kernels::gemm::gemm_split_k;
use smelt_codegen::kernels::{Grid, View};
use smelt_emulate::{Arg, BlockOrder, Buffer, Checker, Landing, Launch, Pointer, Schedule, Step};
use smelt_ir::{shape, BinaryOp, DType, Expr, ExprKind, FusedOp, Shape, Sym};

use crate::common::emulated;
use crate::common::epilogues::{acc, node, residual, swiglu, to_f32};
use crate::{tokens, Case};

#[path = "faults.rs"]
mod faults;
#[path = "split.rs"]
mod split;

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
    let op = Op::Fused(FusedOp::Linear { norm_eps: None, epilogue: case.epilogue.clone() });
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

/// A case's buffers (x, w, extras, y, [scratch, counters,] table, step) and its steps: two
/// launches on the same counters, y and the scratch set back to unwritten before the second,
/// each followed by dumps of y and the counters and the launch's count of atomic additions.
fn case_steps(index: usize, case: &Case, run: &Run) -> (Vec<Buffer>, Vec<Pointer>, Vec<Step>) {
    let kernel = case.kernel();
    let n = run.buffers.len();
    let mut buffers: Vec<Buffer> = run.buffers.iter().map(|(d, v)| Buffer::Bytes(storage_bytes(*d, v))).collect();
    let y = n;
    buffers.push(Buffer::Unwritten(run.want.len() * out_dtype(case).size_bytes()));
    let mut args: Vec<Arg> = (0..=n).map(Arg::buffer).collect();
    // Split-K: exactly `Scratch::bytes` of partials (AddressSanitizer sees a slot past them)
    // and the counters it asks for, zero.
    let split = gemm_split_k(&case.spec()).map(|(s, counters)| (s.bytes(0, run.t), counters));
    let (scratch, counters) = (buffers.len(), buffers.len() + 1);
    if let Some((bytes, words)) = split {
        buffers.extend([Buffer::Unwritten(bytes), Buffer::Bytes(vec![0; 4 * words])]);
        args.extend([Arg::buffer(scratch), Arg::buffer(counters)]);
    }
    let (table, step_id) = (buffers.len(), buffers.len() + 1);
    let (step, pointers) = emulated::step(step_id, run.t, 0, 16, table, None);
    buffers.extend([Buffer::Bytes(emulated::words(&[])), step]);
    args.push(Arg::buffer(step_id));
    let grid = run.grid.unwrap_or_else(|| kernel.launch.grid.blocks(&tokens(run.t)));
    let launch =
        Launch { kernel: index, grid, block: 256, shared_bytes: kernel.launch.shared_bytes, args, hidden: vec![0] };
    let mut steps = Vec::new();
    for again in [false, true] {
        if again {
            steps.push(Step::Fill(y));
            if split.is_some() {
                steps.push(Step::Fill(scratch));
            }
        }
        steps.extend([Step::Launch(launch.clone()), Step::Atomics, Step::Dump(y)]);
        if split.is_some() {
            steps.push(Step::Dump(counters));
        }
    }
    (buffers, pointers, steps)
}

/// Runs every case's kernel through the emulator, twice: under AddressSanitizer (operands in
/// heap blocks of exactly their size; x, the previous kernel's output, hidden until the grid
/// wait) with copies landing at their wait and blocks in order; under ThreadSanitizer (a
/// missing barrier is a race report) with copies landing at a seeded moment and blocks in
/// reverse order (another block arrives last on a split-K counter). Each runs every case twice on the same counters. All four outputs must have
/// the same bits (else a race, a sum that depends on which block arrives last, or state
/// carried over); the counters end at zero, and the atomic additions are the (tile, split)
/// arrivals the grid implies. Returns the outputs, or None when no compiler can build them.
fn emulate(cases: &[(Case, Run)]) -> Option<Vec<Vec<f32>>> {
    let kernels: Vec<_> = cases.iter().map(|(c, _)| emulated::source(&c.kernel())).collect();
    let run = |checker, schedule| -> Option<Vec<Vec<u8>>> {
        let emu = emulated::build(&kernels, checker)?;
        let outputs = cases.iter().enumerate().map(|(i, (case, run))| {
            let (buffers, pointers, steps) = case_steps(i, case, run);
            let dumps = emu
                .run_steps(&buffers, &pointers, &steps, schedule)
                .unwrap_or_else(|e| panic!("{} ({checker:?}): {e}", case.name));
            let per_launch = dumps.len() / 2;
            let arrivals = split_arrivals(&case.kernel().launch.grid, run.t) as u64;
            for launch in dumps.chunks(per_launch) {
                let atomics = u64::from_le_bytes(launch[0][..8].try_into().expect("8 bytes"));
                assert_eq!(atomics, arrivals, "{}: arrivals against the (tile, split) units of its grid", case.name);
                if let Some(counters) = launch.get(2) {
                    assert!(counters.iter().all(|&b| b == 0), "{}: a counter left nonzero", case.name);
                }
            }
            let (first, second) = (&dumps[1], &dumps[per_launch + 1]);
            assert!(first == second, "{}: a second launch gives other bits (state carried over)", case.name);
            first.clone()
        });
        Some(outputs.collect())
    };
    // The two checkers at once: each emulator run keeps one CPU busy.
    let (bounds, races) = std::thread::scope(|s| {
        let reordered = Schedule { landing: Landing::Random(0x5eed), block_order: BlockOrder::Reversed };
        let races = s.spawn(move || run(Checker::Races, reordered));
        let bounds = run(Checker::Bounds, Schedule::default());
        (bounds, races.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    let (bounds, races) = (bounds?, races?);
    for (i, (a, b)) in bounds.iter().zip(&races).enumerate() {
        assert!(a == b, "{}: copies landing early or blocks in another order change the output", cases[i].0.name);
    }
    Some(cases.iter().zip(&bounds).map(|((case, _), out)| from_storage(out_dtype(case), out)).collect())
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

#[test]
fn emulated_kernels_match_eval() {
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
    let Some(outputs) = emulate(&runs) else { return };
    for ((case, run), got) in runs.iter().zip(&outputs) {
        compare(case, run.t, got, &run.want);
    }
}
