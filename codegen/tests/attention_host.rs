//! The decode attention kernels (split, then combine) run on the host (`smelt-emulate`) and
//! compared with `ir::eval`: one sequence's T new tokens after P cached (a decode or prefill
//! step), and a batched decode step whose rows are sequences of their own (each row's
//! position and block table from `smelt_step`'s row arrays). Both with and without the
//! queries' RMSNorm + RoPE prologue, in bf16, f16 and f32.

mod common;
#[path = "common/tensors.rs"]
mod tensors;

use std::collections::HashMap;

use common::emulated;
use common::faults::{Caught, Fault};
use smelt_codegen::kernels::attention::{decode_attention, decode_attention_scratch_bytes, AttentionSpec};
use smelt_codegen::kernels::View;
use smelt_codegen::{Kernel, Params};
use smelt_emulate::{Arg, Buffer, Checker, EmuError, Emulator, Launch, Schedule};
use smelt_ir::{shape, Bindings, Bound, Builder, DType, FusedOp, NodeId, Op, Shape, Tensor};
use tensors::{bytes, decode, tensor, worst_relative};

const H: usize = 4;
const KVH: usize = 2;
const D: usize = 64;
/// A fused qkv row: q, then k, then v heads.
const QKV: usize = (H + 2 * KVH) * D;
const BT: usize = 16;
const EPS: f32 = 1e-6;

fn spec(dtype: DType, norm_rope: bool) -> AttentionSpec {
    AttentionSpec {
        heads: H,
        kv_heads: KVH,
        d: D,
        dtype,
        scale: (D as f32).powf(-0.5),
        q_view: View { offset: 0, row_stride: QKV, from_last_row: false },
        norm_rope_eps: norm_rope.then_some(EPS),
        // Small splits, so several split blocks and the combine take part.
        split_tokens: 16,
        merge_splits: false,
    }
}

/// `ir::eval` of (NormRope)Attention for one sequence: `qkv` rows are its T new tokens at
/// `positions`, `k` and `v` its whole caches (`[P + T, KVH, D]`, this step's rows included).
fn reference(
    spec: &AttentionSpec,
    qkv: &Tensor,
    positions: &Tensor,
    k: &Tensor,
    v: &Tensor,
    extra: &[Tensor],
) -> Tensor {
    let dtype = spec.dtype;
    let mut b = Builder::new();
    let t = qkv.shape()[0];
    let x = b.input("qkv", dtype, shape![t, QKV]);
    let q = b.slice("q_cols", x, 1, Bound::FromStart(0), Bound::FromStart(H * D)).unwrap();
    let q = b.reshape("q", q, shape![t, H, D]).unwrap();
    let cache =
        |b: &mut Builder, name: &str, c: &Tensor| b.input(name, dtype, Shape::new(c.shape().iter().map(|&d| d.into())));
    let (kc, vc) = (cache(&mut b, "k", k), cache(&mut b, "v", v));
    let mut feed = HashMap::from([("qkv".to_string(), qkv.clone()), ("k".into(), k.clone()), ("v".into(), v.clone())]);
    let out = match spec.norm_rope_eps {
        Some(eps) => {
            let w = b.input("w", dtype, shape![D]);
            let pos = b.input("pos", DType::I32, shape![t]);
            let inv = b.input("inv", DType::F32, shape![D / 2]);
            feed.extend([
                ("w".to_string(), extra[0].clone()),
                ("pos".into(), positions.clone()),
                ("inv".into(), extra[1].clone()),
            ]);
            let ops: [NodeId; 6] = [q, w, pos, inv, kc, vc];
            b.op("attn", Op::Fused(FusedOp::NormRopeAttention { eps, scale: spec.scale }), &ops).unwrap()
        }
        None => b.op("attn", Op::Attention { scale: spec.scale }, &[q, kc, vc]).unwrap(),
    };
    b.output("out", out).unwrap();
    let g = b.finish().unwrap();
    smelt_ir::eval(&g, feed, &HashMap::<String, Tensor>::new()).unwrap().remove("out").unwrap()
}

/// Rows `rows` of `t` (first axis).
fn rows_of(t: &Tensor, rows: std::ops::Range<usize>) -> Tensor {
    let width: usize = t.shape()[1..].iter().product();
    let values = t.to_f32_vec()[rows.start * width..rows.end * width].to_vec();
    let mut shape = t.shape().to_vec();
    shape[0] = rows.len();
    Tensor::from_f32(t.dtype(), shape, values)
}

/// A case: the kernels' buffers in parameter order (q, [w, positions, inv_freq], k pool,
/// v pool), the step (`T`, `P`, block table, row arrays) and eval's output.
struct Case {
    spec: AttentionSpec,
    bufs: Vec<Vec<u8>>,
    t: usize,
    p: usize,
    table: Vec<u32>,
    rows: Option<(Vec<u32>, Vec<u32>, usize)>,
    want: Tensor,
}

/// `logical` caches of several sequences (`[len, KVH, D]` each) laid into one pool through
/// `tables` (`stride` entries per sequence); free slots hold a sentinel.
fn pool(logical: &[Tensor], tables: &[u32], stride: usize, blocks: usize) -> Vec<u8> {
    let dtype = logical[0].dtype();
    let row = KVH * D;
    let mut phys = vec![5.0f32; blocks * BT * row];
    for (s, cache) in logical.iter().enumerate() {
        for (p, r) in cache.to_f32_vec().chunks(row).enumerate() {
            let at = (tables[s * stride + p / BT] as usize * BT + p % BT) * row;
            phys[at..at + row].copy_from_slice(r);
        }
    }
    bytes(&Tensor::from_f32(dtype, vec![blocks * BT, KVH, D], phys))
}

fn cases() -> Vec<Case> {
    let mut seed = 0xa77e;
    let mut out = Vec::new();
    let inv_freq: Vec<f32> = (0..D / 2).map(|i| 1e6f32.powf(-2.0 * i as f32 / D as f32)).collect();
    let inv_freq = Tensor::from_f32(DType::F32, vec![D / 2], inv_freq);
    for dtype in [DType::BF16, DType::F16, DType::F32] {
        for norm_rope in [false, true] {
            let spec = spec(dtype, norm_rope);
            let w = tensor(&mut seed, dtype, &[D], 0.5, 1.5);
            let extra = [w.clone(), inv_freq.clone()];
            let head = |q: &Tensor, positions: &Tensor| {
                let mut b = vec![bytes(q)];
                if norm_rope {
                    b.extend([bytes(&w), bytes(positions), bytes(&inv_freq)]);
                }
                b
            };
            // One sequence: T = 3 new tokens after P = 37, through a reversed block table.
            let (t, p) = (3, 37);
            let qkv = tensor(&mut seed, dtype, &[t, QKV], -2.0, 2.0);
            let (k, v) = (
                tensor(&mut seed, dtype, &[p + t, KVH, D], -2.0, 2.0),
                tensor(&mut seed, dtype, &[p + t, KVH, D], -2.0, 2.0),
            );
            let positions = Tensor::from_i32(vec![t], (p..p + t).map(|x| x as i32).collect());
            let blocks = (p + t).div_ceil(BT) + 1;
            let table: Vec<u32> = (0..blocks as u32).rev().collect();
            let mut bufs = head(&qkv, &positions);
            bufs.extend([
                pool(std::slice::from_ref(&k), &table, blocks, blocks),
                pool(std::slice::from_ref(&v), &table, blocks, blocks),
            ]);
            let want = reference(&spec, &qkv, &positions, &k, &v, &extra);
            out.push(Case { spec, bufs, t, p, table, rows: None, want });

            // A batched step: row i is a sequence of its own at position pos[i] (keys 0..=pos).
            let pos = [5usize, 40, 17];
            let stride = 4;
            let tables: Vec<u32> = (0..3u32).flat_map(|i| [3 * i + 2, 3 * i + 1, 3 * i, 0]).collect();
            let qkv = tensor(&mut seed, dtype, &[3, QKV], -2.0, 2.0);
            let positions = Tensor::from_i32(vec![3], pos.iter().map(|&x| x as i32).collect());
            let ks: Vec<Tensor> = pos.iter().map(|&n| tensor(&mut seed, dtype, &[n + 1, KVH, D], -2.0, 2.0)).collect();
            let vs: Vec<Tensor> = pos.iter().map(|&n| tensor(&mut seed, dtype, &[n + 1, KVH, D], -2.0, 2.0)).collect();
            let wants: Vec<f32> = (0..3)
                .flat_map(|i| {
                    let one = Tensor::from_i32(vec![1], vec![pos[i] as i32]);
                    reference(&spec, &rows_of(&qkv, i..i + 1), &one, &ks[i], &vs[i], &extra).to_f32_vec()
                })
                .collect();
            let mut bufs = head(&qkv, &positions);
            bufs.extend([pool(&ks, &tables, stride, 9), pool(&vs, &tables, stride, 9)]);
            let want = Tensor::from_f32(dtype, vec![3, H, D], wants);
            let rows = Some((pos.iter().map(|&x| x as u32).collect(), tables, stride));
            out.push(Case { spec, bufs, t: 3, p: 40, table: vec![0], rows, want });
        }
    }
    out
}

/// What a run leaves: the output, and the arrival counters (which every launch must leave zero).
struct Ran {
    out: Vec<u8>,
    counters: Vec<u8>,
}

/// Runs `case` through `kernels` (the family's launches, in order; `first` is the first one's
/// index in `emu`), each called as its `Params` say: q and the caches (what the qkv matmul and
/// the KV append wrote) hidden from the first until its grid wait, the scratch and output from
/// a combine kernel.
fn run_case(
    emu: &Emulator,
    first: usize,
    case: &Case,
    kernels: &[Kernel],
    schedule: Schedule,
) -> Result<Ran, EmuError> {
    let b = Bindings { batch: 1, new_tokens: case.t, cached_tokens: case.p };
    let n = case.bufs.len();
    let (out, scratch, step_id, table) = (n, n + 1, n + 2, n + 3);
    let mut buffers: Vec<Buffer> = case.bufs.iter().cloned().map(Buffer::Bytes).collect();
    buffers.push(Buffer::Unwritten(case.t * H * D * case.spec.dtype.size_bytes()));
    buffers.push(Buffer::Unwritten(decode_attention_scratch_bytes(&case.spec, case.p + case.t, case.t)));
    let rows = case.rows.as_ref().map(|(positions, tables, stride)| {
        buffers.extend([Buffer::Bytes(emulated::words(positions)), Buffer::Bytes(emulated::words(tables))]);
        emulated::Rows { positions: n + 4, tables: n + 5, stride: *stride as u32 }
    });
    let (step, pointers) = emulated::step(step_id, case.t, case.p, BT, table, rows);
    buffers.insert(step_id, step);
    buffers.insert(table, Buffer::Bytes(emulated::words(&case.table)));
    let counters = buffers.len();
    buffers.push(Buffer::Bytes(vec![0; 4 * KVH]));
    let launches: Vec<Launch> = kernels
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let ins = 0..n;
            let (args, hidden): (Vec<usize>, _) = match &k.params {
                Params::Standard => (ins.chain([out]).collect(), vec![0, n - 2, n - 1]),
                Params::WritesScratch(_) => (ins.chain([out, scratch]).collect(), vec![0, n - 2, n - 1]),
                Params::SplitK { .. } => (ins.chain([out, scratch, counters]).collect(), vec![0, n - 2, n - 1]),
                Params::ReadsScratch => (vec![scratch, out], vec![scratch, out]),
            };
            Launch {
                kernel: first + i,
                grid: k.launch.grid.blocks(&b),
                block: k.launch.block,
                shared_bytes: k.launch.shared_bytes,
                args: args.into_iter().chain([step_id]).map(Arg::buffer).collect(),
                hidden,
            }
        })
        .collect();
    let mut bufs = emu.run(&buffers, &pointers, &launches, schedule)?;
    let counters = bufs.swap_remove(counters);
    Ok(Ran { out: bufs.swap_remove(out), counters })
}

/// Runs every case's kernels (`family` of its spec) through the emulator, twice: under
/// AddressSanitizer (bounds; what the previous kernel wrote hidden until each block's
/// grid-dependency wait) and under ThreadSanitizer (races, blocks in a seeded order). Both must
/// give the same bits and leave the counters zero; returns each case's output bytes.
fn emulate(cases: &[Case], family: impl Fn(&AttentionSpec) -> AttentionSpec) -> Option<Vec<Vec<u8>>> {
    let per_case: Vec<Vec<Kernel>> =
        cases.iter().enumerate().map(|(c, case)| decode_attention(&format!("attn{c}"), &family(&case.spec))).collect();
    let kernels: Vec<_> = per_case.iter().flatten().map(emulated::source).collect();
    let run = |checker: Checker, schedule: Schedule| -> Option<Vec<Vec<u8>>> {
        let emu = emulated::build(&kernels, checker)?;
        let mut first = 0;
        let outputs = cases.iter().zip(&per_case).enumerate().map(|(c, (case, family))| {
            let ran = run_case(&emu, first, case, family, schedule).unwrap_or_else(|e| panic!("case {c}: {e}"));
            first += family.len();
            assert!(ran.counters.iter().all(|&b| b == 0), "case {c}: counters left {:?}", ran.counters);
            ran.out
        });
        Some(outputs.collect())
    };
    emulated::bounds_and_races(run)
}

#[test]
fn split_and_combine_match_eval_for_one_sequence_and_for_rows_of_their_own() {
    let cases = cases();
    let Some(outputs) = emulate(&cases, |spec| *spec) else { return };
    for (case, got) in cases.iter().zip(&outputs) {
        let dtype = case.spec.dtype;
        let what = format!(
            "{dtype}{} {}",
            if case.spec.norm_rope_eps.is_some() { " norm+rope" } else { "" },
            if case.rows.is_some() { "rows of their own" } else { "one sequence" }
        );
        let (got, want) = (decode(dtype, got), case.want.to_f32_vec());
        assert_eq!(got.len(), want.len(), "{what}: output size");
        // Relative per element (`worst_relative`). The kernels sum in another order (lanes,
        // warps, splits; online softmax) and use the device's exp. Measured (worst over each
        // dtype's 4 cases): bf16 0, bit-exact; f16 6.3e-4, one ulp where an f32 sum rounds the
        // other way; f32 7.0e-7.
        let tol = match dtype {
            DType::BF16 => 0.0,
            DType::F16 => 2f32.powi(-10),
            _ => 2e-6,
        };
        let worst = worst_relative(&got, &want, dtype);
        let exact = got.iter().zip(&want).filter(|(g, w)| g.to_bits() == w.to_bits()).count();
        eprintln!("{what}: {exact} of {} bit-exact, worst relative error {worst:e}", want.len());
        assert!(worst <= tol, "{what}: differs from eval by {worst:e} (tolerance {tol:e})");
    }
}

/// One sequence's decode step (T = 1) after P cached tokens, P from the first block to a dozen
/// splits, for every dtype, with and without the prologue.
fn one_token_cases() -> Vec<Case> {
    let mut seed = 0x1e1e;
    let inv_freq: Vec<f32> = (0..D / 2).map(|i| 1e6f32.powf(-2.0 * i as f32 / D as f32)).collect();
    let inv_freq = Tensor::from_f32(DType::F32, vec![D / 2], inv_freq);
    let mut out = Vec::new();
    for dtype in [DType::BF16, DType::F16, DType::F32] {
        for norm_rope in [false, true] {
            let spec = spec(dtype, norm_rope);
            let w = tensor(&mut seed, dtype, &[D], 0.5, 1.5);
            for p in [0, 37, 100] {
                let qkv = tensor(&mut seed, dtype, &[1, QKV], -2.0, 2.0);
                let k = tensor(&mut seed, dtype, &[p + 1, KVH, D], -2.0, 2.0);
                let v = tensor(&mut seed, dtype, &[p + 1, KVH, D], -2.0, 2.0);
                let positions = Tensor::from_i32(vec![1], vec![p as i32]);
                let blocks = (p + 1).div_ceil(BT);
                let table: Vec<u32> = (0..blocks as u32).rev().collect();
                let mut bufs = vec![bytes(&qkv)];
                if norm_rope {
                    bufs.extend([bytes(&w), bytes(&positions), bytes(&inv_freq)]);
                }
                bufs.extend([
                    pool(std::slice::from_ref(&k), &table, blocks, blocks),
                    pool(std::slice::from_ref(&v), &table, blocks, blocks),
                ]);
                let want = reference(&spec, &qkv, &positions, &k, &v, &[w.clone(), inv_freq.clone()]);
                out.push(Case { spec, bufs, t: 1, p, table, rows: None, want });
            }
        }
    }
    out
}

/// The merged kernel (the last split of each KV head merges them, T = 1) gives the bits the
/// split and combine kernels give, and leaves its counters zero, at 1, 2 and 6 splits.
#[test]
fn merged_splits_give_the_split_and_combine_bits() {
    let cases = one_token_cases();
    let Some(pairs) = emulate(&cases, |spec| *spec) else { return };
    let Some(merged) = emulate(&cases, |spec| AttentionSpec { merge_splits: true, ..*spec }) else { return };
    for (case, (pair, merged)) in cases.iter().zip(pairs.iter().zip(&merged)) {
        let what = format!("{} P = {} norm+rope {}", case.spec.dtype, case.p, case.spec.norm_rope_eps.is_some());
        assert!(pair == merged, "{what}: the merged kernel's output differs from split + combine");
        let worst = worst_relative(&decode(case.spec.dtype, merged), &case.want.to_f32_vec(), case.spec.dtype);
        assert!(worst <= 2f32.powi(-10), "{what}: differs from eval by {worst:e}");
    }
}

/// Faults in the split kernel of a batched step (rows of their own), each caught by a wrong
/// output: every row reading row 0's position, or row 0's block table.
#[test]
fn batched_rows_reading_another_rows_position_or_table_are_caught() {
    let faults = [
        Fault {
            name: "rows read row 0's position",
            from: "smelt_row_position(step, t)",
            nth: 0,
            to: "smelt_row_position(step, 0u)",
            caught: Caught::Wrong,
        },
        Fault {
            name: "rows read row 0's block table",
            from: "smelt_row_table(step, t)",
            nth: 0,
            to: "smelt_row_table(step, 0u)",
            caught: Caught::Wrong,
        },
    ];
    let case = cases().into_iter().find(|c| c.rows.is_some() && c.spec.dtype == DType::BF16).expect("a batched case");
    let pairs: Vec<Vec<Kernel>> = faults
        .iter()
        .enumerate()
        .map(|(i, f)| match &decode_attention(&format!("fault{i}"), &case.spec)[..] {
            [split, combine] => vec![f.inject(split.clone()), combine.clone()],
            _ => panic!("a split and a combine kernel"),
        })
        .collect();
    let kernels: Vec<_> = pairs.iter().flatten().map(emulated::source).collect();
    let Some((bounds, races)) = emulated::build_both(&kernels) else { return };
    let want = case.want.to_f32_vec();
    let wrong = |ran: &Ran| worst_relative(&decode(DType::BF16, &ran.out), &want, DType::BF16) > 0.0;
    for (i, (f, pair)) in faults.iter().zip(&pairs).enumerate() {
        let plain = run_case(&bounds, 2 * i, &case, pair, Schedule::default());
        let raced = run_case(&races, 2 * i, &case, pair, Schedule::default());
        f.assert_caught(&plain, &raced, wrong, |_| false);
    }
}

/// Faults in the merged kernel's arrival: a counter not reset for the next launch, a merge one
/// arrival early (it reads the last split's partial, which nothing wrote yet), and a merge by
/// every arrival (the last one's, complete, is what stays; but the others read partials that
/// blocks running beside them are still writing: a race between blocks).
#[test]
fn merged_arrival_faults_are_caught() {
    let faults = [
        Fault {
            name: "counter not reset",
            from: "if (threadIdx.x == 0u) counters[kvh] = 0u;",
            nth: 0,
            to: "",
            caught: Caught::CounterLeft,
        },
        Fault {
            name: "the next-to-last arrival merges",
            from: "== nsplit - 1u",
            nth: 0,
            to: "== nsplit - 2u",
            caught: Caught::Unwritten,
        },
        Fault { name: "every arrival merges", from: "== nsplit - 1u", nth: 0, to: ">= 0u", caught: Caught::Race },
    ];
    let case = one_token_cases().into_iter().find(|c| c.p == 100 && c.spec.dtype == DType::BF16).expect("6 splits");
    let spec = AttentionSpec { merge_splits: true, ..case.spec };
    let kernels: Vec<Kernel> = faults
        .iter()
        .enumerate()
        .map(|(i, f)| f.inject(decode_attention(&format!("fault{i}"), &spec).remove(0)))
        .collect();
    let sources: Vec<_> = kernels.iter().map(emulated::source).collect();
    let Some((bounds, races)) = emulated::build_both(&sources) else { return };
    let want = case.want.to_f32_vec();
    let wrong = |ran: &Ran| worst_relative(&decode(DType::BF16, &ran.out), &want, DType::BF16) > 2f32.powi(-10);
    let counter_left = |ran: &Ran| ran.counters.iter().any(|&b| b != 0);
    for (i, (f, kernel)) in faults.iter().zip(&kernels).enumerate() {
        let one = std::slice::from_ref(kernel);
        let plain = run_case(&bounds, i, &case, one, Schedule::default());
        let raced = run_case(&races, i, &case, one, Schedule::default());
        f.assert_caught(&plain, &raced, wrong, counter_left);
    }
}
