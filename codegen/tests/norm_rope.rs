//! The norm, rope, KV-append, gather and argmax kernels at Qwen3-0.6B's shapes compile with
//! NVRTC (no include paths) for sm_80 and sm_90, and ptxas finds no local-memory spills.
//! Without libnvrtc these tests say so and pass, except under `CI=true`, where a missing NVRTC
//! (or ptxas) is a failure (.ci/run installs them). The kernels also run on the CPU, under a
//! C++ shim, and match `ir::eval`.

mod common;
#[path = "common/tensors.rs"]
mod tensors;

use std::collections::HashMap;

use common::emulated;

use smelt_codegen::kernels::argmax::argmax;
use smelt_codegen::kernels::gather::{gather, partial_gather};
use smelt_codegen::kernels::norm::{head_rows, kv_append, norm_rope, norm_rope_kv_append, rmsnorm, HeadPart};
use smelt_codegen::kernels::{Grid, View};
use smelt_codegen::{Kernel, PRELUDE};
use smelt_emulate::{Arg, Buffer, Launch};
use smelt_ir::{shape, Bindings, Bound, Builder, DType, Dim, FusedOp, NodeId, Op, Shape, Sym, Tensor};
use tensors::{bytes, decode, tensor, worst_relative};

// Qwen3-0.6B.
const HIDDEN: usize = 1024;
const HEAD_DIM: usize = 128;
const HEADS: usize = 16;
const KV_HEADS: usize = 8;
const VOCAB: usize = 151936;
const EPS: f32 = 1e-6;
/// The fused q/k/v projection's row: q `[0, 2048)`, k `[2048, 3072)`, v `[3072, 4096)`.
const QKV: usize = (HEADS + 2 * KV_HEADS) * HEAD_DIM;
const Q_VIEW: View = View { offset: 0, row_stride: QKV, from_last_row: false };
const K_VIEW: View = View { offset: HEADS * HEAD_DIM, row_stride: QKV, from_last_row: false };
const V_VIEW: View = View { offset: (HEADS + KV_HEADS) * HEAD_DIM, row_stride: QKV, from_last_row: false };

/// The q, k and v heads' kernel: q's norm + RoPE, k's with the append, v's append.
fn qkv_heads(name: &str, dtype: DType) -> Kernel {
    let parts = [
        HeadPart::NormRope { heads: HEADS, eps: EPS, x_view: Q_VIEW, append: false },
        HeadPart::NormRope { heads: KV_HEADS, eps: EPS, x_view: K_VIEW, append: true },
        HeadPart::Append { heads: KV_HEADS, x_view: V_VIEW },
    ];
    head_rows(name, HEAD_DIM, dtype, &parts)
}

/// Every kernel of one layer's attention front and the model's ends, in `dtype`.
fn kernels(dtype: DType) -> Vec<Kernel> {
    let t = Dim::Sym(Sym::NewTokens);
    let appends =
        [HeadPart::Append { heads: KV_HEADS, x_view: K_VIEW }, HeadPart::Append { heads: KV_HEADS, x_view: V_VIEW }];
    let norms = [
        HeadPart::NormRope { heads: HEADS, eps: EPS, x_view: Q_VIEW, append: false },
        HeadPart::NormRope { heads: KV_HEADS, eps: EPS, x_view: K_VIEW, append: false },
    ];
    vec![
        qkv_heads(&format!("l00_attn_qkv_heads_{dtype}"), dtype),
        head_rows(&format!("l00_attn_kv_appends_{dtype}"), HEAD_DIM, dtype, &appends),
        head_rows(&format!("l00_attn_qk_norms_{dtype}"), HEAD_DIM, dtype, &norms),
        rmsnorm(&format!("final_norm_{dtype}"), t, HIDDEN, dtype, EPS, View::contiguous(HIDDEN)),
        norm_rope(&format!("l00_attn_q_rope_{dtype}"), HEADS, HEAD_DIM, dtype, EPS, Q_VIEW),
        norm_rope_kv_append(&format!("l00_attn_k_append_{dtype}"), KV_HEADS, HEAD_DIM, dtype, EPS, K_VIEW),
        kv_append(&format!("l00_attn_v_append_{dtype}"), KV_HEADS, HEAD_DIM, dtype, V_VIEW),
        gather(&format!("embed_{dtype}"), t, HIDDEN, dtype),
        argmax(&format!("next_token_{dtype}"), t, VOCAB, dtype),
    ]
}

#[test]
fn norm_rope_gather_argmax_compile_for_every_arch_without_spills() {
    let Some(tc) = common::toolchain() else { return };
    let mut all = kernels(DType::BF16);
    all.extend(kernels(DType::F16));
    // The logits are f32 when the lm_head computes in f32.
    all.push(argmax("next_token_f32", Dim::Sym(Sym::NewTokens), VOCAB, DType::F32));
    // A tensor-parallel rank's part of the embedding (a quarter of Qwen3-0.6B's vocabulary).
    for dtype in [DType::BF16, DType::F16] {
        all.push(partial_gather(&format!("embed_part_{dtype}"), Dim::Sym(Sym::NewTokens), HIDDEN, dtype, 37984, 37984));
    }
    tc.check_all(&all);
}

/// The generated CUDA, read by people: the snapshots omit the shared prelude.
fn body(k: &Kernel) -> &str {
    k.source.strip_prefix(PRELUDE).expect("every kernel starts with the prelude")
}

#[test]
fn norm_rope_kv_append_source() {
    let k = norm_rope_kv_append("l00_attn_k_append", KV_HEADS, HEAD_DIM, DType::BF16, EPS, K_VIEW);
    insta::assert_snapshot!(body(&k));
}

#[test]
fn qkv_heads_source() {
    insta::assert_snapshot!(body(&qkv_heads("l00_attn_qkv_heads", DType::BF16)));
}

#[test]
fn argmax_source() {
    let k = argmax("next_token", Dim::Sym(Sym::NewTokens), VOCAB, DType::BF16);
    insta::assert_snapshot!(body(&k));
}

#[test]
fn launches_cover_the_rows() {
    let b = |t| Bindings { batch: 1, new_tokens: t, cached_tokens: 9 };
    let blocks = |k: &Kernel, t| k.launch.grid.blocks(&b(t));
    let [qkv, _, _, norm, q, k, v, embed, next] = <[Kernel; 9]>::try_from(kernels(DType::BF16)).expect("nine kernels");
    // A warp per head of q, k and v: 32 heads.
    assert_eq!((blocks(&qkv, 1), blocks(&qkv, 5), qkv.launch.block), (8, 40, 128));
    // One warp per row, four rows per block; one block per gathered row or argmax row.
    assert_eq!((blocks(&norm, 1), blocks(&norm, 9)), (1, 3));
    assert_eq!((blocks(&q, 1), blocks(&q, 5), blocks(&k, 1)), (4, 20, 2));
    assert_eq!((blocks(&v, 1), v.launch.block), (1, 256));
    assert_eq!((blocks(&embed, 7), embed.launch.block, blocks(&next, 3), next.launch.block), (7, 128, 3, 1024));
    assert!(matches!(next.launch.grid, Grid::Cover { max: 65535, .. }));
}

// ---- Host emulation: the kernels run on the CPU (`smelt-emulate`) and match `ir::eval`,
// bit for bit except where the norm's f32 sum (a tree here, left to right in eval) rounds
// differently.

const BLOCK_TOKENS: usize = 16;

/// One kernel run: buffers (operands, then the output's initial contents), the block table,
/// the number of rows `T` (`P` is 37), and what eval says the output is.
struct Run {
    kernel: Kernel,
    bufs: Vec<Tensor>,
    table: Vec<u32>,
    t: usize,
    want: Tensor,
    /// Other outputs (a kernel of several parts): buffer index and what eval says it holds.
    more: Vec<(usize, Tensor)>,
    /// A batched decode step: each row's position, and the rows' block tables at a stride.
    rows: Option<(Vec<u32>, Vec<u32>, usize)>,
}

/// Runs every `Run` through the emulator under AddressSanitizer, then under ThreadSanitizer
/// with the blocks in a seeded order (the same bits both ways); returns each one's output
/// bytes: the last buffer's, then those of `more`.
fn emulate(runs: &[Run]) -> Option<Vec<Vec<Vec<u8>>>> {
    let kernels: Vec<_> = runs.iter().map(|r| emulated::source(&r.kernel)).collect();
    let run = |checker, schedule| -> Option<Vec<Vec<Vec<u8>>>> {
        let emu = emulated::build(&kernels, checker)?;
        let outputs = runs.iter().enumerate().map(|(c, r)| {
            let n = r.bufs.len();
            let mut buffers: Vec<Buffer> = r.bufs.iter().map(|b| Buffer::Bytes(bytes(b))).collect();
            buffers.push(Buffer::Bytes(emulated::words(&r.table)));
            let rows = r.rows.as_ref().map(|(positions, tables, stride)| {
                buffers.extend([Buffer::Bytes(emulated::words(positions)), Buffer::Bytes(emulated::words(tables))]);
                emulated::Rows { positions: n + 1, tables: n + 2, stride: *stride as u32 }
            });
            let step_id = buffers.len();
            let (step, pointers) = emulated::step(step_id, r.t, 37, BLOCK_TOKENS, n, rows);
            buffers.push(step);
            let mut args: Vec<Arg> = (0..n).map(Arg::buffer).collect();
            args.push(Arg::buffer(step_id));
            // A few blocks, so the grid-stride loops go round.
            let grid = r.kernel.launch.grid.blocks(&Bindings { batch: 1, new_tokens: r.t, cached_tokens: 37 }).min(3);
            let (block, shared_bytes) = (r.kernel.launch.block, r.kernel.launch.shared_bytes);
            let launch = Launch { kernel: c, grid, block, shared_bytes, args, hidden: vec![] };
            let out =
                emu.run(&buffers, &pointers, &[launch], schedule).unwrap_or_else(|e| panic!("{}: {e}", r.kernel.name));
            let mut outputs = vec![out[n - 1][..bytes(&r.want).len()].to_vec()];
            outputs.extend(r.more.iter().map(|(i, want)| out[*i][..bytes(want).len()].to_vec()));
            outputs
        });
        Some(outputs.collect())
    };
    emulated::bounds_and_races(run)
}

/// `ir::eval` of one op over named inputs.
fn eval(ins: &[(&str, &Tensor, Shape)], op: impl FnOnce(&mut Builder, &[NodeId]) -> NodeId) -> Tensor {
    let mut b = Builder::new();
    let ids: Vec<NodeId> = ins.iter().map(|(n, t, s)| b.input(n, t.dtype(), s.clone())).collect();
    let out = op(&mut b, &ids);
    b.output("out", out).expect("one output");
    let feed = ins.iter().map(|(n, t, _)| (n.to_string(), (*t).clone())).collect();
    let weights = HashMap::<String, Tensor>::new();
    smelt_ir::eval(&b.finish().expect("verifies"), feed, &weights).expect("evaluates").remove("out").expect("out")
}

/// A cache `[rows, KVH, D]` laid out physically through a reversed block table, the rows past
/// `rows` holding a sentinel (so stray writes show): (physical, table).
fn paged(logical: &Tensor, rows: usize) -> (Tensor, Vec<u32>) {
    let row = KV_HEADS * HEAD_DIM;
    let blocks = rows.div_ceil(BLOCK_TOKENS) + 1;
    let table: Vec<u32> = (0..blocks as u32).rev().collect();
    let mut phys = vec![7.0; blocks * BLOCK_TOKENS * row];
    for (p, r) in logical.to_f32_vec().chunks(row).enumerate() {
        let at = (table[p / BLOCK_TOKENS] as usize * BLOCK_TOKENS + p % BLOCK_TOKENS) * row;
        phys[at..at + row].copy_from_slice(r);
    }
    (Tensor::from_f32(logical.dtype(), vec![blocks * BLOCK_TOKENS, KV_HEADS, HEAD_DIM], phys), table)
}

/// The head slice `view` of `qkv [T, QKV]` as `[T, heads, D]`, in a graph.
fn heads_of(b: &mut Builder, qkv: NodeId, view: View, heads: usize) -> NodeId {
    let (start, end) = (Bound::FromStart(view.offset), Bound::FromStart(view.offset + heads * HEAD_DIM));
    let x = b.slice("view", qkv, 1, start, end).expect("slice");
    b.reshape("heads", x, shape![Sym::NewTokens, heads, HEAD_DIM]).expect("reshape")
}

/// The V append of a batched decode step: row t of `qkv` is one new token of sequence t, at
/// its own position through its own block table, in a pool whose other slots hold a sentinel.
fn batched_v_append(name: &str, qkv: &Tensor, dtype: DType) -> Run {
    let (row, t) = (KV_HEADS * HEAD_DIM, qkv.shape()[0]);
    let positions: Vec<u32> = vec![5, 40, 17];
    // Sequence t owns blocks 3t..3t+2, listed in reverse; tables padded to a stride of 4.
    let stride = 4;
    let tables: Vec<u32> = (0..t as u32).flat_map(|i| [3 * i + 2, 3 * i + 1, 3 * i, 0]).collect();
    let blocks = 3 * t;
    let before = vec![7.0; blocks * BLOCK_TOKENS * row];
    let mut want = before.clone();
    let values = qkv.to_f32_vec();
    for (i, &p) in positions.iter().enumerate() {
        let block = tables[i * stride + p as usize / BLOCK_TOKENS] as usize;
        let at = (block * BLOCK_TOKENS + p as usize % BLOCK_TOKENS) * row;
        let from = i * QKV + V_VIEW.offset;
        want[at..at + row].copy_from_slice(&values[from..from + row]);
    }
    let pool = |v: Vec<f32>| Tensor::from_f32(dtype, vec![blocks * BLOCK_TOKENS, KV_HEADS, HEAD_DIM], v);
    let before = pool(before);
    Run {
        kernel: kv_append(name, KV_HEADS, HEAD_DIM, dtype, V_VIEW),
        bufs: vec![before.clone(), qkv.clone(), before],
        table: vec![],
        t,
        want: pool(want),
        more: vec![],
        rows: Some((positions, tables, stride)),
    }
}

/// Operands every dtype shares, for T = 3 rows: RoPE's inverse frequencies, positions (far
/// ones for q: large angles; the next ones for k) and the gathered ids.
struct Shared {
    inv_freq: Tensor,
    q_pos: Tensor,
    k_pos: Tensor,
    ids: Tensor,
}

/// Every kernel's run in `dtype` at T = 3 after P = 37, its operands drawn from `r`.
fn dtype_runs(r: &mut u64, dtype: DType, shared: &Shared) -> Vec<Run> {
    let (t, p, s, eps) = (3, 37, Dim::Sym(Sym::NewTokens), EPS);
    let (tok, past) = (|n: usize| shape![Sym::NewTokens, n], shape![Sym::CachedTokens, KV_HEADS, HEAD_DIM]);
    let Shared { inv_freq, q_pos, k_pos, ids } = shared;
    let mut runs = Vec::new();
    let name = |k: &str| format!("{k}_{dtype}");
    let (qkv, w) = (tensor(r, dtype, &[t, QKV], -3.0, 3.0), tensor(r, dtype, &[HEAD_DIM], 0.5, 1.5));
    let (x, x_w) = (tensor(r, dtype, &[t, HIDDEN], -3.0, 3.0), tensor(r, dtype, &[HIDDEN], 0.5, 1.5));
    let (k_cache, v_cache) =
        (tensor(r, dtype, &[p, KV_HEADS, HEAD_DIM], -3.0, 3.0), tensor(r, dtype, &[p, KV_HEADS, HEAD_DIM], -3.0, 3.0));
    let embed = tensor(r, dtype, &[300, HIDDEN], -1.0, 1.0);
    let rope_ins = |pos| {
        let pos_shape = shape![Sym::NewTokens];
        vec![
            ("qkv", &qkv, tok(QKV)),
            ("w", &w, shape![HEAD_DIM]),
            ("pos", pos, pos_shape),
            ("inv", inv_freq, shape![HEAD_DIM / 2]),
        ]
    };
    let want = eval(&[("x", &x, tok(HIDDEN)), ("w", &x_w, shape![HIDDEN])], |b, i| {
        b.op("n", Op::Fused(FusedOp::RmsNorm { eps }), i).unwrap()
    });
    let kernel = rmsnorm(&name("norm"), s, HIDDEN, dtype, eps, View::contiguous(HIDDEN));
    runs.push(Run { kernel, bufs: vec![x, x_w, want.clone()], table: vec![], t, want, more: vec![], rows: None });
    let want = eval(&rope_ins(q_pos), |b, i| {
        let x = heads_of(b, i[0], Q_VIEW, HEADS);
        b.op("q", Op::Fused(FusedOp::NormRope { eps, append: false }), &[x, i[1], i[2], i[3]]).unwrap()
    });
    let kernel = norm_rope(&name("q"), HEADS, HEAD_DIM, dtype, eps, Q_VIEW);
    let bufs = vec![qkv.clone(), w.clone(), q_pos.clone(), inv_freq.clone(), want.clone()];
    let (q_bufs, q_want) = (bufs.clone(), want.clone());
    runs.push(Run { kernel, bufs, table: vec![], t, want, more: vec![], rows: None });
    let mut ins = rope_ins(k_pos);
    ins.push(("cache", &k_cache, past.clone()));
    let want = eval(&ins, |b, i| {
        let x = heads_of(b, i[0], K_VIEW, KV_HEADS);
        b.op("k", Op::Fused(FusedOp::NormRope { eps, append: true }), &[x, i[1], i[2], i[3], i[4]]).unwrap()
    });
    let ((before, table), (want, _)) = (paged(&k_cache, p + t), paged(&want, p + t));
    let kernel = norm_rope_kv_append(&name("k"), KV_HEADS, HEAD_DIM, dtype, eps, K_VIEW);
    let bufs = vec![qkv.clone(), w.clone(), k_pos.clone(), inv_freq.clone(), before.clone(), before];
    let (k_bufs, k_want) = (bufs.clone(), want.clone());
    runs.push(Run { kernel, bufs, table, t, want, more: vec![], rows: None });
    let want = eval(&[("cache", &v_cache, past.clone()), ("qkv", &qkv, tok(QKV))], |b, i| {
        let x = heads_of(b, i[1], V_VIEW, KV_HEADS);
        b.op("v", Op::KvAppend, &[i[0], x]).unwrap()
    });
    let ((before, table), (want, _)) = (paged(&v_cache, p + t), paged(&want, p + t));
    let kernel = kv_append(&name("v"), KV_HEADS, HEAD_DIM, dtype, V_VIEW);
    let v_bufs = vec![before.clone(), qkv.clone(), before];
    runs.push(Run {
        kernel,
        bufs: v_bufs.clone(),
        table: table.clone(),
        t,
        want: want.clone(),
        more: vec![],
        rows: None,
    });
    // The three as one kernel, each part with its own operands (q's positions are far, k's
    // the next ones): the buffers q's, k's, then v's; q's output is buffer 4, k's 10, v's last.
    // k's and v's caches share the block table.
    let bufs = [q_bufs, k_bufs, v_bufs].concat();
    let more = vec![(4, q_want), (10, k_want)];
    runs.push(Run { kernel: qkv_heads(&name("qkv"), dtype), bufs, table, t, want, more, rows: None });
    runs.push(batched_v_append(&name("v_rows"), &qkv, dtype));
    let want = eval(&[("e", &embed, shape![300, HIDDEN]), ("ids", ids, shape![Sym::NewTokens])], |b, i| {
        b.gather("g", i[0], i[1]).unwrap()
    });
    let kernel = gather(&name("g"), s, HIDDEN, dtype);
    runs.push(Run {
        kernel,
        bufs: vec![embed.clone(), ids.clone(), want.clone()],
        table: vec![],
        t,
        want,
        more: vec![],
        rows: None,
    });
    // A tensor-parallel rank's part of the table, rows 10..210: of the ids 299, 0 and 17 only
    // 17 is this rank's; the others' rows are zeros.
    let part = embed.slice_along(0, 10..210);
    let want = eval(&[("e", &part, shape![200, HIDDEN]), ("ids", ids, shape![Sym::NewTokens])], |b, i| {
        b.op("pg", Op::PartialGather { start: 10, total: 300 }, i).unwrap()
    });
    let zero_rows = want.to_f32_vec().chunks(HIDDEN).filter(|r| r.iter().all(|&v| v == 0.0)).count();
    assert_eq!(zero_rows, 2, "eval's partial gather");
    let kernel = partial_gather(&name("pg"), s, HIDDEN, dtype, 10, 200);
    runs.push(Run {
        kernel,
        bufs: vec![part, ids.clone(), want.clone()],
        table: vec![],
        t,
        want,
        more: vec![],
        rows: None,
    });
    runs.push(argmax_run(r, dtype, &name("a")));
    runs
}

/// ArgMax rows: random (16-bit rounding makes ties), a repeated maximum, a NaN first, a NaN
/// and an inf elsewhere, all -inf, a long run of NaNs (each non-finite row: -1).
fn argmax_run(r: &mut u64, dtype: DType, name: &str) -> Run {
    let mut v = tensor(r, dtype, &[6, VOCAB], -8.0, 8.0).to_f32_vec();
    let at = |i: usize, k: usize| i * VOCAB + k;
    (v[at(1, 5000)], v[at(1, 100000)], v[at(2, 0)], v[at(2, 7)]) = (9.0, 9.0, f32::NAN, 9.0);
    (v[at(3, 1)], v[at(3, 150000)], v[at(3, 9)]) = (f32::NAN, f32::INFINITY, 9.0);
    v[at(4, 0)..at(5, 0)].fill(f32::NEG_INFINITY);
    v[at(5, 3)..at(5, 60000)].fill(f32::NAN);
    let x = Tensor::from_f32(dtype, vec![6, VOCAB], v);
    let want = eval(&[("x", &x, shape![Sym::NewTokens, VOCAB])], |b, i| b.op("a", Op::ArgMax { axis: 1 }, i).unwrap());
    assert_eq!(want.i32s().map(|w| &w[1..6]), Some(&[5000, -1, -1, -1, -1][..]), "eval's argmax");
    let kernel = argmax(name, Dim::Sym(Sym::NewTokens), VOCAB, dtype);
    Run { kernel, bufs: vec![x, want.clone()], table: vec![], t: 6, want, more: vec![], rows: None }
}

/// A kernel's output bytes `got` against eval's: bit for bit, except where the norm's f32 sum
/// rounds differently.
fn check_against_eval(run: &Run, want: &Tensor, got: &[u8]) {
    let (kind, dtype) = (run.kernel.kind, want.dtype());
    assert_eq!(got.len(), bytes(want).len(), "{}: output size", run.kernel.name);
    let want = want.to_f32_vec();
    let got = decode(dtype, got);
    let differ = got.iter().zip(&want).filter(|(g, w)| g.to_bits() != w.to_bits()).count();
    let worst = worst_relative(&got, &want, dtype);
    eprintln!("{}: {differ} of {} differ from eval, worst relative error {worst:e}", run.kernel.name, want.len());
    // The norm's sum order can move the inverse norm by an f32 ulp, and so the rounded
    // normed value by an ulp, and the output (times the weight, or rotated, which can
    // cancel) by two: under 1% of the 16-bit results move; in f32 most move a little.
    // Relative per element (`worst_relative`), each with the worst measured: bf16 2^-6
    // (6.3e-3, q), f16 2^-5 (1.9e-2, q: an output at 2^-10 of the largest, from one ulp of
    // its normed input), f32 1e-6 (2.3e-7); every other kernel bit-exact.
    let exact = !matches!(kind, "rmsnorm" | "norm_rope" | "norm_rope_kv_append" | "head_rows");
    let (few, tol) = match dtype {
        DType::BF16 => (differ * 100 < want.len(), 2f32.powi(-6)),
        DType::F16 => (differ * 100 < want.len(), 2f32.powi(-5)),
        _ => (true, 1e-6),
    };
    let ok = differ == 0 || (!exact && few && worst <= tol);
    assert!(ok, "{}: {differ} elements differ, by up to {worst:e}", run.kernel.name);
}

#[test]
fn kernels_emulated_on_the_host_match_eval() {
    let t = 3;
    let inv_freq: Vec<f32> = (0..HEAD_DIM / 2).map(|i| 1e6f32.powf(-2.0 * i as f32 / HEAD_DIM as f32)).collect();
    let shared = Shared {
        inv_freq: Tensor::from_f32(DType::F32, vec![HEAD_DIM / 2], inv_freq),
        q_pos: Tensor::from_i32(vec![t], vec![40000, 12345, 7]),
        k_pos: Tensor::from_i32(vec![t], vec![37, 38, 39]),
        ids: Tensor::from_i32(vec![t], vec![299, 0, 17]),
    };
    let mut r = 0x5eed;
    let runs: Vec<Run> =
        [DType::BF16, DType::F16, DType::F32].into_iter().flat_map(|d| dtype_runs(&mut r, d, &shared)).collect();
    let Some(got) = emulate(&runs) else { return };
    for (run, got) in runs.iter().zip(&got) {
        let wants = std::iter::once(&run.want).chain(run.more.iter().map(|(_, w)| w));
        for (want, got) in wants.zip(got) {
            check_against_eval(run, want, got);
        }
    }
}
