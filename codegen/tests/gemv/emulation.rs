//! The GEMV run on the host against `ir::eval` through `smelt-emulate`, under
//! AddressSanitizer and under ThreadSanitizer.

use std::collections::HashMap;

use smelt_codegen::kernels::{Grid, View};
use smelt_ir::{shape, BinaryOp, Bound, Builder, DType, Dim, Expr, ExprKind, FusedOp, Op, Shape, Sym, Tensor};

use crate::common::emulated;
use crate::common::epilogues::{acc, node, residual, swiglu, to_f32};
use crate::{Case, Logits, EPS};
use smelt_emulate::{Arg, Buffer, Launch};

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

/// A case's operand buffers (x, w, [norm_w], extras) and what `ir::eval` makes of them.
struct Prepared {
    buffers: Vec<(DType, Vec<f32>)>,
    want: Vec<f32>,
}

/// ArgMax as `ir::eval`'s, of one row: the first index of the largest, -1 if any value is
/// not finite.
fn argmax(row: &[f32]) -> i32 {
    if row.iter().any(|v| !v.is_finite()) {
        return -1;
    }
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as i32
}

fn prepare(case: &Case, seed: u64) -> Prepared {
    let (rows, k, n, dtype) = (case.rows, case.k, case.n, case.dtype);
    let mut rng = Rng(seed);
    // A view from the last row reads row T - 1 of T rows; a GEMM's GEMV reads T rows.
    let x_rows = if case.x_view.from_last_row || case.rows_from_step { case.new_tokens } else { rows };
    let wide = x_rows * case.x_view.row_stride;
    let x_wide = Tensor::from_f32(dtype, vec![x_rows, case.x_view.row_stride], rng.fill(wide, -3.0, 3.0));
    let mut w_values = rng.fill(n * k, -0.08, 0.08);
    match case.argmax {
        Some(Logits::Tie) => {
            // Weights of x's signs (the norm keeps them): the largest logit, twice.
            let x0 = &x_wide.to_f32_vec()[case.x_view.offset..case.x_view.offset + k];
            let row: Vec<f32> = x0.iter().map(|v| 0.05f32.copysign(*v)).collect();
            w_values[5 * k..6 * k].copy_from_slice(&row);
            w_values[190 * k..191 * k].copy_from_slice(&row);
        }
        Some(Logits::NonFinite) => w_values[150 * k + 7] = f32::INFINITY,
        None => {}
    }
    let w = Tensor::from_f32(dtype, vec![n, k], w_values);
    let norm_w = Tensor::from_f32(dtype, vec![k], rng.fill(k, 0.5, 1.5));
    let extras: Vec<Tensor> = case
        .extras
        .iter()
        .map(|(d, s)| {
            let dims: Vec<usize> = s.dims().iter().map(|d| d.fixed().unwrap_or(case.new_tokens)).collect();
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
    for (i, t) in extras.iter().enumerate() {
        ops.push(b.input(&format!("e{i}"), t.dtype(), Shape::new(t.shape().iter().map(|&d| Dim::Fixed(d)))));
    }
    let op = Op::Fused(FusedOp::Linear { norm_eps: case.norm.then_some(EPS), epilogue: case.epilogue.clone() });
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

/// A case's output, and with the fused argmax the token and the arrival counter after (words).
type Emulated = (Vec<f32>, Option<[u32; 2]>);

/// Runs every case's kernel through the emulator under AddressSanitizer (operands in heap
/// blocks of exactly their size; x, what the previous kernel wrote, hidden until the grid
/// wait), then under ThreadSanitizer with the blocks in a seeded order; both must give the
/// same bits. Returns the outputs, or None when no compiler can build them.
fn emulate(cases: &[Case], data: &[Prepared]) -> Option<Vec<Emulated>> {
    let kernels: Vec<_> = cases.iter().map(|c| emulated::source(&c.kernel())).collect();
    let run = |checker, schedule| -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let emu = emulated::build(&kernels, checker)?;
        let outputs = cases.iter().zip(data).enumerate().map(|(i, (case, data))| {
            let kernel = case.kernel();
            assert_eq!(kernel.launch.block, 256);
            let Grid::Fixed(blocks) = kernel.launch.grid else { panic!("a GEMV has a fixed grid") };
            let n = data.buffers.len();
            let mut buffers: Vec<Buffer> =
                data.buffers.iter().map(|(d, v)| Buffer::Bytes(storage_bytes(*d, v))).collect();
            // Exactly the rows it may write: a GEMM's GEMV, the step's.
            let rows = if case.rows_from_step { case.new_tokens } else { case.rows };
            buffers.push(Buffer::Unwritten(rows * case.n_out() * case.out_dtype.size_bytes()));
            let mut args: Vec<Arg> = (0..=n).map(Arg::buffer).collect();
            // The column loop is grid-stride, so any grid computes the same: a smaller one tests it.
            let grid = case.emulated_grid.unwrap_or(blocks);
            if case.argmax.is_some() {
                // The logits again (the argmax's operand), the token, a (value, index) pair
                // per block, the arrival counter (zero).
                buffers.extend([
                    Buffer::Unwritten(4),
                    Buffer::Unwritten(8 * grid as usize),
                    Buffer::Bytes(emulated::words(&[0])),
                ]);
                args.extend([n, n + 1, n + 2, n + 3].map(Arg::buffer));
            }
            let table = buffers.len();
            buffers.push(Buffer::Bytes(emulated::words(&[])));
            let (step, pointers) = emulated::step(table + 1, case.new_tokens, 0, 16, table, None);
            buffers.push(step);
            args.push(Arg::buffer(table + 1));
            let launch =
                Launch { kernel: i, grid, block: 256, shared_bytes: kernel.launch.shared_bytes, args, hidden: vec![0] };
            let out =
                emu.run(&buffers, &pointers, &[launch], schedule).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let greedy = if case.argmax.is_some() { [&out[n + 1][..], &out[n + 3][..]].concat() } else { vec![] };
            (out[n].clone(), greedy)
        });
        Some(outputs.collect())
    };
    let bounds = emulated::bounds_and_races(run)?;
    let words = |b: &[u8]| [0, 1].map(|i| u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()));
    let results = cases
        .iter()
        .zip(&bounds)
        .map(|(case, (out, greedy))| (from_storage(case.out_dtype, out), case.argmax.map(|_| words(greedy))));
    Some(results.collect())
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
    // The argmax cases' logits are held to the tolerance only: their bits are the logits
    // cases' concern. (With an inverse norm one ulp off eval's, from the sum order, 12% of
    // the f16 outputs of one of them move by an ulp.)
    if case.dtype != DType::F32 && case.argmax.is_none() {
        assert!(share > 0.9, "{}: only {:.1}% bit-exact", case.name, share * 100.0);
    }
}

#[test]
fn emulated_kernels_match_eval() {
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
    // The L2-prefetch variant (each prefetched line is read on the host, so AddressSanitizer
    // checks it lies in the weight): the same results, with the weight's columns in parts
    // (gate_up), and with more columns than warps (the logits' stride).
    for mut case in [
        Case::new("gate_up_l2", DType::BF16, 1024, 2 * 96, true, Some(swiglu(DType::BF16))),
        Case::new("logits_l2", DType::F16, 1024, 200, true, Some(to_f32(DType::F16))),
    ] {
        case.l2_prefetch = true;
        case.emulated_grid = Some(3);
        cases.push(case);
    }
    // The lm_head with the greedy token: a tie between blocks 0 and 2 (either may arrive
    // last), an infinite logit; f32 logits from 16-bit weights, and 16-bit ones.
    for (dtype, logits, epilogue) in [
        (DType::BF16, Logits::Tie, Some(to_f32(DType::BF16))),
        (DType::F16, Logits::NonFinite, Some(to_f32(DType::F16))),
        (DType::BF16, Logits::NonFinite, None),
        (DType::F32, Logits::Tie, None),
    ] {
        let mut case = Case::new(&format!("lm_head_argmax_{logits:?}"), dtype, 1024, 200, true, epilogue);
        (case.argmax, case.emulated_grid) = (Some(logits), Some(3));
        cases.push(case);
    }
    // A GEMM's GEMV (a prefill or batched step of few rows): sized for 4 rows, it computes
    // the step's T (3, 4 and 1) and touches no row past them (x and y hold exactly T rows).
    for (dtype, t, epilogue) in [
        (DType::BF16, 3, Some(residual(DType::BF16))),
        (DType::F16, 4, Some(swiglu(DType::F16))),
        (DType::F32, 1, Some(residual(DType::F32))),
        (DType::BF16, 2, None),
    ] {
        let n = if epilogue.as_ref().is_some_and(|e| e.to_string().contains("/2]")) { 2 * 64 } else { 72 };
        let mut case = Case::new(&format!("step_rows_{t}"), dtype, 1024, n, false, epilogue);
        (case.rows, case.rows_from_step, case.new_tokens, case.emulated_grid) = (4, true, t, Some(3));
        case.extras.iter_mut().for_each(|(_, s)| *s = Shape::new([Dim::Sym(Sym::NewTokens), Dim::Fixed(n)]));
        cases.push(case);
    }
    let data: Vec<Prepared> = cases.iter().enumerate().map(|(i, case)| prepare(case, 0x9e37 + i as u64)).collect();
    let Some(outputs) = emulate(&cases, &data) else { return };
    for ((case, data), (got, greedy)) in cases.iter().zip(&data).zip(&outputs) {
        if case.argmax == Some(Logits::NonFinite) {
            // The infinite weight meets x: the logit is +-inf or NaN.
            assert!(!data.want[150].is_finite(), "{}: {}", case.name, data.want[150]);
            assert!(got.iter().enumerate().all(|(i, v)| v.is_finite() == data.want[i].is_finite()), "{}", case.name);
            let finite: Vec<(f32, f32)> =
                got.iter().copied().zip(data.want.iter().copied()).filter(|(_, w)| w.is_finite()).collect();
            let (got, want): (Vec<f32>, Vec<f32>) = finite.into_iter().unzip();
            compare(case, &got, &want);
        } else {
            compare(case, got, &data.want);
        }
        if let Some(logits) = case.argmax {
            let [token, counter] = greedy.expect("the token");
            // The kernel's own logits decide (a sum order may move one by an ulp), and they
            // make what the case was built to make.
            assert_eq!(token as i32, argmax(got), "{}: the greedy token", case.name);
            assert_eq!(token as i32, if logits == Logits::Tie { 5 } else { -1 }, "{}", case.name);
            assert_eq!(counter, 0, "{}: the arrival counter is left at zero", case.name);
        }
    }
}
