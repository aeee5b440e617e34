//! The prefill attention kernel over a grid of shapes that puts T and P on every tile edge,
//! built once without a sanitizer (the 8 points of `SWEEP` run under AddressSanitizer and
//! ThreadSanitizer), each case against `ir::eval` with the sweep's tolerance.

use std::collections::{HashMap, HashSet};

use super::{assert_matches_eval, case, emulated, prefill_attention, run, Case, Shape5};
use smelt_codegen::Kernel;
use smelt_emulate::{Checker, Schedule};
use smelt_ir::DType;

/// New tokens. A work item is 64 rows of the T G (token, group head) rows, 16 per warp; keys
/// come in tiles of 64. So T = 16, 17, 32, 33 put T G (G = 4) at and one past a row tile
/// edge, 32, 33, 64, 65 (G = 2) and 64, 65, 128, 129 (G = 1) likewise; 15, 31, 63, 127 fall
/// one short; 1, 2 (one row of 64 mostly padding) and 130 (a ragged last tile) as well.
const T_EDGES: [usize; 15] = [1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 130];
/// Cached tokens: at, one past and one short of cache block edges (16 tokens) and key tile
/// edges (64), up to the 200 of the issue.
const P_EDGES: [usize; 12] = [0, 1, 15, 16, 17, 63, 64, 65, 127, 128, 199, 200];
/// The P paired with each T (the order of `T_EDGES`): every P once, the larger with the smaller
/// T (the emulator's time grows with T P), the four largest T after 0, 1 and 16 cached tokens.
const P_OF_T: [usize; 15] = [200, 199, 128, 127, 65, 64, 63, 17, 16, 15, 1, 0, 0, 16, 1];
/// (heads, KV heads) for G = 1, 2, 4: one KV head (the sweep has two, for G = 1 and 2).
const GQA: [(usize, usize); 3] = [(1, 1), (2, 1), (4, 1)];

/// Each (T, P) pair above at each G (45 cases), plus T = 130 after P = 200 at G = 1 (the
/// largest corner); the dtype alternates over T and G, so every T and every G meets both; the
/// Q prologue (RMSNorm + RoPE) runs in bf16, not in f16 (6 kernels to build, not 12), and about
/// one case in five runs on one block. A covering design: every T and every P with every G and
/// both dtypes, each T with one P (not the full cross product of 2160 cases: about 90 ms of
/// emulated time per (work item, key tile) made that minutes).
fn grid() -> Vec<Shape5> {
    let mut shapes = Vec::new();
    for (g, &gqa) in GQA.iter().enumerate() {
        for (i, (&t, &p)) in T_EDGES.iter().zip(&P_OF_T).enumerate() {
            let dtype = if (i + g) % 2 == 0 { DType::BF16 } else { DType::F16 };
            shapes.push((dtype, gqa, dtype == DType::BF16, (t, p), (i + 2 * g) % 5 == 0));
        }
    }
    shapes.push((DType::F16, GQA[0], false, (130, 200), false));
    shapes
}

#[test]
fn the_grid_puts_every_t_and_p_with_every_gqa_ratio_and_dtype() {
    let shapes = grid();
    let pairs = |f: &dyn Fn(&Shape5) -> (String, String)| shapes.iter().map(f).collect::<HashSet<_>>().len();
    let g = |s: &Shape5| format!("{}/{}", s.1 .0, s.1 .1);
    assert_eq!(pairs(&|s| (s.3 .0.to_string(), g(s))), T_EDGES.len() * GQA.len(), "a (T, G) pair is missing");
    let ps: HashSet<usize> = shapes.iter().map(|s| s.3 .1).collect();
    assert_eq!(ps, P_EDGES.into_iter().collect(), "the cases' P are not the edges");
    assert_eq!(pairs(&|s| (s.3 .1.to_string(), g(s))), P_EDGES.len() * GQA.len(), "a (P, G) pair is missing");
    assert_eq!(pairs(&|s| (s.3 .0.to_string(), s.0.to_string())), T_EDGES.len() * 2, "a (T, dtype) pair is missing");
    assert_eq!(pairs(&|s| (g(s), s.0.to_string())), GQA.len() * 2, "a (G, dtype) pair is missing");
    assert_eq!(pairs(&|s| (g(s), s.4.to_string())), GQA.len() * 2, "a G never on one block, or never on its grid");
}

/// The kernel of each distinct spec once (12 at most), and each case's index among them.
fn kernels(cases: &[Case]) -> (Vec<Kernel>, Vec<usize>) {
    let (mut kernels, mut index) = (Vec::new(), HashMap::new());
    let of_case = cases
        .iter()
        .map(|c| {
            let s = &c.spec;
            let key = (s.dtype.to_string(), s.heads, s.kv_heads, s.norm_rope_eps.is_some());
            *index.entry(key).or_insert_with(|| {
                kernels.push(prefill_attention(&format!("prefill_attn_grid{}", kernels.len()), s));
                kernels.len() - 1
            })
        })
        .collect();
    (kernels, of_case)
}

#[test]
fn prefill_attention_matches_eval_on_every_tile_edge() {
    let mut seed = 0x61d;
    let cases: Vec<Case> = grid().into_iter().map(|shape| case(&mut seed, shape)).collect();
    let (kernels, of_case) = kernels(&cases);
    let Some(emu) = emulated::build(&kernels.iter().map(emulated::source).collect::<Vec<_>>(), Checker::Plain) else {
        return;
    };
    for (case, &k) in cases.iter().zip(&of_case) {
        let got = run(&emu, k, &kernels[k], case, Schedule::default()).unwrap_or_else(|e| panic!("{}: {e}", case.what));
        assert_matches_eval(case, &got);
    }
}
