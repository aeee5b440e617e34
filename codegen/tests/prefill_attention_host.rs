//! The prefill attention kernel (tensor cores, flash attention) run on the host through
//! `smelt-emulate` against `ir::eval`: causal GQA (1, 2 and 4 query heads per KV head) over a
//! paged cache through scrambled block tables, prompts of 1 to 130 tokens from scratch and
//! after up to 200 cached ones, with and without the queries' RMSNorm + RoPE prologue, in
//! bf16 and f16, on the kernel's grid and on one block; under AddressSanitizer and under
//! ThreadSanitizer with blocks in a seeded order and `cp.async` copies landing at a seeded
//! moment. Then faults injected into the generated source, each of which must be caught. The
//! grid (`prefill_attention_host/grid.rs`) runs 46 more shapes, T and P on every tile edge,
//! without a sanitizer.

mod common;
#[path = "prefill_attention_host/grid.rs"]
mod grid;
#[path = "common/tensors.rs"]
mod tensors;

use std::collections::HashMap;

use common::emulated;
use common::faults::{Caught, Fault};
use smelt_codegen::kernels::prefill_attention::{prefill_attention, PrefillAttentionSpec};
use smelt_codegen::kernels::View;
use smelt_codegen::Kernel;
use smelt_emulate::{Arg, BlockOrder, Buffer, Checker, EmuError, Emulator, Landing, Launch, Schedule};
use smelt_ir::{shape, Bindings, Bound, Builder, DType, FusedOp, NodeId, Op, Shape, Tensor};
use tensors::{bytes, decode, tensor, whole_tensor_error};

/// The one head dim the kernel supports.
const D: usize = 128;
const BT: usize = 16;
const EPS: f32 = 1e-6;

/// `heads` query heads over `kv_heads`, q the first columns of a fused qkv row.
fn spec(dtype: DType, heads: usize, kv_heads: usize, norm_rope: bool) -> PrefillAttentionSpec {
    PrefillAttentionSpec {
        heads,
        kv_heads,
        d: D,
        dtype,
        scale: (D as f32).powf(-0.5),
        q_view: View { offset: 0, row_stride: (heads + 2 * kv_heads) * D, from_last_row: false },
        norm_rope_eps: norm_rope.then_some(EPS),
    }
}

/// `ir::eval` of (NormRope)Attention: `qkv` rows are T new tokens at `positions`, `k` and `v`
/// the whole caches (`[P + T, KVH, D]`, this step's rows included).
fn reference(
    spec: &PrefillAttentionSpec,
    qkv: &Tensor,
    positions: &Tensor,
    k: &Tensor,
    v: &Tensor,
    w: &Tensor,
    inv: &Tensor,
) -> Tensor {
    let (dtype, h) = (spec.dtype, spec.heads);
    let mut b = Builder::new();
    let t = qkv.shape()[0];
    let x = b.input("qkv", dtype, shape![t, spec.q_view.row_stride]);
    let q = b.slice("q_cols", x, 1, Bound::FromStart(0), Bound::FromStart(h * D)).unwrap();
    let q = b.reshape("q", q, shape![t, h, D]).unwrap();
    let cache =
        |b: &mut Builder, name: &str, c: &Tensor| b.input(name, dtype, Shape::new(c.shape().iter().map(|&d| d.into())));
    let (kc, vc) = (cache(&mut b, "k", k), cache(&mut b, "v", v));
    let mut feed = HashMap::from([("qkv".to_string(), qkv.clone()), ("k".into(), k.clone()), ("v".into(), v.clone())]);
    let out = match spec.norm_rope_eps {
        Some(eps) => {
            let wn = b.input("w", dtype, shape![D]);
            let pos = b.input("pos", DType::I32, shape![t]);
            let invn = b.input("inv", DType::F32, shape![D / 2]);
            feed.extend([("w".to_string(), w.clone()), ("pos".into(), positions.clone()), ("inv".into(), inv.clone())]);
            let ops: [NodeId; 6] = [q, wn, pos, invn, kc, vc];
            b.op("attn", Op::Fused(FusedOp::NormRopeAttention { eps, scale: spec.scale }), &ops).unwrap()
        }
        None => b.op("attn", Op::Attention { scale: spec.scale }, &[q, kc, vc]).unwrap(),
    };
    b.output("out", out).unwrap();
    smelt_ir::eval(&b.finish().unwrap(), feed, &HashMap::<String, Tensor>::new()).unwrap().remove("out").unwrap()
}

/// A logical cache `[len, KVH, D]` laid into a pool of `blocks` through `table`; the other
/// rows hold a sentinel that would show if read.
fn pool(logical: &Tensor, table: &[u32], blocks: usize) -> Vec<u8> {
    let kvh = logical.shape()[1];
    let row = kvh * D;
    let mut phys = vec![5.0f32; blocks * BT * row];
    for (p, r) in logical.to_f32_vec().chunks(row).enumerate() {
        let at = (table[p / BT] as usize * BT + p % BT) * row;
        phys[at..at + row].copy_from_slice(r);
    }
    bytes(&Tensor::from_f32(logical.dtype(), vec![blocks * BT, kvh, D], phys))
}

struct Case {
    what: String,
    spec: PrefillAttentionSpec,
    t: usize,
    p: usize,
    /// q, [w, positions, inv_freq], k pool, v pool.
    bufs: Vec<Vec<u8>>,
    table: Vec<u32>,
    want: Tensor,
    one_block: bool,
}

/// A case: `dtype`, heads over KV heads, the prologue or not, T new tokens after P, and
/// whether the grid is one block (the kernel loops over its work items).
type Shape5 = (DType, (usize, usize), bool, (usize, usize), bool);

/// T = 70 from scratch: two row tiles per KV head (G = 2: 140 rows, the second ragged) and two
/// key tiles; T = 1 after 200 (one row of 64, 13 key tiles); T = 130 with G = 4 (520 rows); T
/// = 33 after 50 (keys cross a tile edge); prompts on one block; G = 1.
const SWEEP: [Shape5; 8] = [
    (DType::BF16, (4, 2), false, (70, 0), false),
    (DType::BF16, (4, 2), true, (5, 37), false),
    (DType::F16, (4, 2), true, (70, 0), false),
    (DType::F16, (4, 2), false, (33, 50), false),
    (DType::BF16, (2, 2), true, (1, 200), false),
    (DType::F16, (4, 1), false, (130, 3), false),
    (DType::BF16, (4, 1), true, (17, 100), true),
    (DType::F16, (2, 2), false, (64, 64), true),
];

fn case(seed: &mut u64, (dtype, (h, kvh), norm_rope, (t, p), one_block): Shape5) -> Case {
    let inv: Vec<f32> = (0..D / 2).map(|i| 1e6f32.powf(-2.0 * i as f32 / D as f32)).collect();
    let inv = Tensor::from_f32(DType::F32, vec![D / 2], inv);
    let spec = spec(dtype, h, kvh, norm_rope);
    let qkv = tensor(seed, dtype, &[t, spec.q_view.row_stride], -2.0, 2.0);
    let k = tensor(seed, dtype, &[p + t, kvh, D], -2.0, 2.0);
    let v = tensor(seed, dtype, &[p + t, kvh, D], -2.0, 2.0);
    let w = tensor(seed, dtype, &[D], 0.5, 1.5);
    let positions = Tensor::from_i32(vec![t], (p..p + t).map(|x| x as i32).collect());
    // A scrambled table: logical block i at physical block (m i + 3) mod blocks, m the first
    // number from 5 on that shares no factor with the count (so it is a permutation).
    let blocks = (p + t).div_ceil(BT) + 1;
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let m = (5..).find(|&m| gcd(m, blocks) == 1).expect("a coprime multiplier");
    let table: Vec<u32> = (0..blocks).map(|i| ((m * i + 3) % blocks) as u32).collect();
    let mut bufs = vec![bytes(&qkv)];
    if norm_rope {
        bufs.extend([bytes(&w), bytes(&positions), bytes(&inv)]);
    }
    bufs.extend([pool(&k, &table, blocks), pool(&v, &table, blocks)]);
    let want = reference(&spec, &qkv, &positions, &k, &v, &w, &inv);
    let what = format!(
        "{dtype} {h}/{kvh} heads{} T = {t} after {p}{}",
        if norm_rope { " norm+rope" } else { "" },
        if one_block { " on 1 block" } else { "" }
    );
    Case { what, spec, t, p, bufs, table, want, one_block }
}

fn cases() -> Vec<Case> {
    let mut seed = 0x9fe1;
    SWEEP.into_iter().map(|shape| case(&mut seed, shape)).collect()
}

/// Runs `case` on kernel `index` of `emu` (`kernel` its launch), with q and the caches (what
/// the qkv matmul and the KV append wrote) hidden until the grid-dependency wait; the output
/// bytes, or the emulator's report.
fn run(emu: &Emulator, index: usize, kernel: &Kernel, case: &Case, schedule: Schedule) -> Result<Vec<u8>, EmuError> {
    let n = case.bufs.len();
    let (out, step_id, table) = (n, n + 1, n + 2);
    let mut buffers: Vec<Buffer> = case.bufs.iter().cloned().map(Buffer::Bytes).collect();
    buffers.push(Buffer::Unwritten(case.t * case.spec.heads * D * case.spec.dtype.size_bytes()));
    let (step, pointers) = emulated::step(step_id, case.t, case.p, BT, table, None);
    buffers.extend([step, Buffer::Bytes(emulated::words(&case.table))]);
    let mut args: Vec<Arg> = (0..=n).map(Arg::buffer).collect();
    args.push(Arg::buffer(step_id));
    let b = Bindings { batch: 1, new_tokens: case.t, cached_tokens: case.p };
    let grid = if case.one_block { 1 } else { kernel.launch.grid.blocks(&b) };
    let (block, shared_bytes) = (kernel.launch.block, kernel.launch.shared_bytes);
    let launch = Launch { kernel: index, grid, block, shared_bytes, args, hidden: vec![0, n - 2, n - 1] };
    let mut bufs = emu.run(&buffers, &pointers, &[launch], schedule)?;
    Ok(bufs.swap_remove(out))
}

/// Every case's kernel, built with `checker` and run with `schedule`; each case's output bytes.
fn emulate(cases: &[Case], checker: Checker, schedule: Schedule) -> Option<Vec<Vec<u8>>> {
    let kernels: Vec<_> =
        cases.iter().enumerate().map(|(c, case)| prefill_attention(&format!("prefill_attn{c}"), &case.spec)).collect();
    let emu = emulated::build(&kernels.iter().map(emulated::source).collect::<Vec<_>>(), checker)?;
    let outputs = cases.iter().zip(&kernels).enumerate().map(|(c, (case, kernel))| {
        run(&emu, c, kernel, case, schedule).unwrap_or_else(|e| panic!("{}: {e}", case.what))
    });
    Some(outputs.collect())
}

#[test]
fn prefill_attention_matches_eval() {
    let cases = cases();
    let seeded = Schedule { landing: Landing::Random(7), block_order: BlockOrder::Seeded(11) };
    let both = emulated::with_both_checkers(|checker| match checker {
        Checker::Races => emulate(&cases, checker, seeded),
        _ => emulate(&cases, checker, Schedule::default()),
    });
    let Some((bounds, races)) = both else { return };
    for ((case, got), again) in cases.iter().zip(&bounds).zip(&races) {
        assert!(got == again, "{}: the output depends on the block order or when copies land", case.what);
        assert_matches_eval(case, got);
    }
}

/// `got` (output bytes) against `ir::eval` over the whole tensor: ‖got − want‖ / ‖want‖ and
/// the largest absolute difference (the outputs are of order 1). Besides the decode kernels'
/// differences (summation order, online softmax, host expf), the probabilities enter P V
/// rounded to the storage dtype (the module doc): about 2^-9 relative per weight in bf16,
/// 2^-12 in f16; per element that is a large relative error where an output nearly cancels,
/// hence not a per-element measure. Measured over the sweep: bf16 2.6e-3 and 7.8e-3 at worst,
/// f16 2.6e-4 and 9.8e-4; a causal mask one key too wide gives 0.31 and 2.4.
fn assert_matches_eval(case: &Case, got: &[u8]) {
    let dtype = case.spec.dtype;
    let (got, want) = (decode(dtype, got), case.want.to_f32_vec());
    assert_eq!(got.len(), want.len(), "{}: output size", case.what);
    assert!(got.iter().all(|v| v.is_finite()), "{}: non-finite outputs (an unwritten or poisoned read)", case.what);
    let (rel, max_abs) = whole_tensor_error(&got, &want);
    let (tol_rel, tol_abs) = if dtype == DType::BF16 { (4e-3, 2e-2) } else { (5e-4, 4e-3) };
    let exact = got.iter().zip(&want).filter(|(g, w)| g.to_bits() == w.to_bits()).count();
    eprintln!("{}: {exact} of {} bit-exact, relative error {rel:.2e}, max abs {max_abs:.2e}", case.what, want.len());
    assert!(
        rel <= tol_rel && max_abs <= tol_abs,
        "{}: relative {rel:e} (tolerance {tol_rel:e}), max abs {max_abs:e} (tolerance {tol_abs:e})",
        case.what
    );
}

const FAULTS: [Fault; 10] = [
    Fault { name: "barrier 1 dropped", from: "__syncthreads();", nth: 0, to: "", caught: Caught::Race },
    Fault { name: "barrier 2 dropped", from: "__syncthreads();", nth: 1, to: "", caught: Caught::Race },
    Fault { name: "barrier 3 dropped", from: "__syncthreads();", nth: 2, to: "", caught: Caught::Race },
    Fault {
        name: "K's wait_group off by one",
        from: "SMELT_CP_ASYNC_WAIT(0);",
        nth: 0,
        to: "SMELT_CP_ASYNC_WAIT(1);",
        caught: Caught::Copies,
    },
    Fault {
        name: "V's wait_group off by one",
        from: "SMELT_CP_ASYNC_WAIT(0);",
        nth: 1,
        to: "SMELT_CP_ASYNC_WAIT(1);",
        caught: Caught::Copies,
    },
    Fault {
        name: "mma B registers swapped",
        from: "smelt_mma_bf16(o[2u * dp], pf[kk], b[0], b[1]);",
        nth: 0,
        to: "smelt_mma_bf16(o[2u * dp], pf[kk], b[1], b[0]);",
        caught: Caught::Wrong,
    },
    Fault {
        name: "V loaded without .trans",
        from: "smelt_ldmatrix_x4_trans(",
        nth: 0,
        to: "smelt_ldmatrix_x4(",
        caught: Caught::Wrong,
    },
    Fault {
        name: "no grid-dependency wait (q and the caches read before it)",
        from: "SMELT_GRID_WAIT();\n  SMELT_GRID_LAUNCH();",
        nth: 0,
        to: "",
        caught: Caught::Bounds("use-after-poison"),
    },
    Fault {
        name: "stale block-table lookup (K_{j+1} copied from K_j's rows)",
        from: "if (j + 1u < nk) lookup(kbase + BK);",
        nth: 0,
        to: "",
        caught: Caught::Wrong,
    },
    Fault {
        name: "padding rows of the ragged tile stored",
        from: "if (row < rows) {\n        unsigned int* __restrict__ dst",
        nth: 0,
        to: "if (true) {\n        unsigned int* __restrict__ dst",
        caught: Caught::Bounds("heap-buffer-overflow"),
    },
];

/// Whether `got` (output bytes) is wrong: non-finite, or beyond the bf16 tolerance above.
fn wrong(case: &Case, got: &[u8]) -> bool {
    let got = decode(case.spec.dtype, got);
    let (rel, max_abs) = whole_tensor_error(&got, &case.want.to_f32_vec());
    got.iter().any(|v| !v.is_finite()) || rel > 4e-3 || max_abs > 2e-2
}

/// Every fault injected into the bf16 kernel of the first sweep case (T = 70 from scratch: a
/// ragged second row tile, two key tiles) run on one block, built under both checkers: each
/// must be caught as its entry says.
#[test]
fn injected_faults_are_caught() {
    let mut seed = 0x9fe1;
    // On one block: its 6 work items one after another, so the barriers between items matter
    // 5 times over (ThreadSanitizer keeps a few accesses per word: one crossing can miss).
    let case = case(&mut seed, (DType::BF16, (4, 2), false, (70, 0), true));
    let kernels: Vec<Kernel> =
        FAULTS.iter().enumerate().map(|(i, f)| f.inject(prefill_attention(&format!("fault{i}"), &case.spec))).collect();
    let sources: Vec<_> = kernels.iter().map(emulated::source).collect();
    let Some((bounds, races)) = emulated::build_both(&sources) else { return };
    let seeded = Schedule { landing: Landing::Random(7), block_order: BlockOrder::Seeded(11) };
    for (i, (f, k)) in FAULTS.iter().zip(&kernels).enumerate() {
        let plain = run(&bounds, i, k, &case, Schedule::default());
        let raced = run(&races, i, k, &case, seeded);
        f.assert_caught(&plain, &raced, |out| wrong(&case, out), |_| false);
    }
}
