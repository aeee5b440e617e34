//! Matmul and attention (with the KV appends that feed it): against hand-computed values,
//! and property tests against a triple loop and naive causal GQA.

use half::{bf16, f16};
use proptest::prelude::*;

use super::eval;
use super::tests::{assert_close, eval_y, f32t, noise, run, Map, TWO_ULPS};
use crate::{shape, Bound, Builder, DType, Graph, Op, Sym, Tensor};

#[test]
fn matmul_transposes_b_and_keeps_leading_dims() {
    let mut b = Builder::new();
    let a = b.input("x0", DType::F32, shape![2, 2, 3]);
    let w = b.weight("w", DType::F32, shape![2, 3]).unwrap();
    let y = b.matmul("y", a, w).unwrap();
    b.output("y", y).unwrap();
    let g = b.finish().unwrap();
    let weights = Map::from([("w".to_string(), f32t(&[2, 3], &[1.0, 0.0, -1.0, 2.0, 1.0, 0.0]))]);
    let a = f32t(&[2, 2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0]);
    let got = eval_y(&g, &[a], &weights).unwrap();
    assert_close(&got, &[2, 2, 2], &[-2.0, 4.0, -2.0, 13.0, 0.0, 1.0, 0.0, 3.0], 0.0);
    // One row (the decode GEMV path) and five rows (past it, the GEMM path).
    let w = f32t(&[2, 3], &[1.0, 0.0, -1.0, 2.0, 1.0, 0.0]);
    let a1 = f32t(&[1, 3], &[1.0, 2.0, 3.0]);
    assert_close(&run(Op::MatMul, &[a1, w.clone()]), &[1, 2], &[-2.0, 4.0], 0.0);
    let a5 = f32t(&[5, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 2.0, 0.0, 1.0]);
    let want = [-2.0, 4.0, -2.0, 13.0, 0.0, 1.0, 0.0, 3.0, 1.0, 4.0];
    assert_close(&run(Op::MatMul, &[a5, w]), &[5, 2], &want, 0.0);
}

/// `values` as a weight of dtype f32 kept in 16 bits (bf16, or f16 with `f16_storage`), and
/// the same values stored as f32.
fn kept_and_wide(shape: &[usize], values: &[f32], f16_storage: bool) -> (Tensor, Tensor) {
    let kept = if f16_storage {
        Tensor::from_f16(DType::F32, shape.to_vec(), values.iter().map(|&x| f16::from_f32(x)).collect())
    } else {
        Tensor::from_bf16(DType::F32, shape.to_vec(), values.iter().map(|&x| bf16::from_f32(x)).collect())
    };
    let wide = f32t(shape, &kept.to_f32_vec());
    (kept, wide)
}

/// The ops that read weights give the same tensor for a weight kept in 16 bits as for its
/// f32 copy (a gathered embedding row, slices and concatenations, the elementwise ops).
#[test]
fn ops_read_weights_kept_in_16_bits_as_their_f32_copies() {
    for f16_storage in [false, true] {
        let (kept, wide) = kept_and_wide(&[4, 3], &noise(7, 12), f16_storage);
        assert_eq!(kept, wide, "equal values are equal tensors however they are stored");
        assert_ne!(kept, f32t(&[4, 3], &noise(8, 12)));
        let ids = Tensor::from_i32(vec![3], vec![3, 0, 3]);
        assert_eq!(run(Op::Gather, &[kept.clone(), ids.clone()]), run(Op::Gather, &[wide.clone(), ids]));
        let slice = Op::Slice { axis: 1, start: Bound::FromStart(1), end: Bound::FromStart(3) };
        assert_eq!(run(slice.clone(), std::slice::from_ref(&kept)), run(slice, std::slice::from_ref(&wide)));
        let concat = Op::Concat { axis: 0 };
        assert_eq!(run(concat.clone(), &[kept.clone(), wide.clone()]), run(concat, &[wide.clone(), wide.clone()]));
        let mul = Op::Binary(crate::BinaryOp::Mul);
        assert_eq!(run(mul.clone(), &[kept.clone(), kept]), run(mul, &[wide.clone(), wide]));
    }
}

/// Graph `y = kv_append(x0: [P, KVH, D], x1: [T, KVH, D])`, optionally also returning the cache.
fn kv_graph(kvh: usize, d: usize, keep_cache: bool) -> Graph {
    let mut b = Builder::new();
    let cache = b.input("x0", DType::F32, shape![Sym::CachedTokens, kvh, d]);
    let new = b.input("x1", DType::F32, shape![Sym::NewTokens, kvh, d]);
    let y = b.op("append", Op::KvAppend, &[cache, new]).unwrap();
    b.output("y", y).unwrap();
    if keep_cache {
        b.output("old", cache).unwrap();
    }
    b.finish().unwrap()
}

#[test]
fn kv_append_rows() {
    let cache = f32t(&[2, 2, 1], &[1.0, 2.0, 3.0, 4.0]);
    let new = f32t(&[1, 2, 1], &[5.0, 6.0]);
    for keep in [false, true] {
        let g = kv_graph(2, 1, keep);
        let got = eval_y(&g, &[cache.clone(), new.clone()], &Map::new()).unwrap();
        assert_close(&got, &[3, 2, 1], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 0.0);
    }
    let mut out =
        eval(&kv_graph(2, 1, true), Map::from([("x0".into(), cache.clone()), ("x1".into(), new)]), &Map::new())
            .unwrap();
    assert_eq!(out.remove("old").unwrap(), cache, "the in-place append must not touch a cache used again");
    let empty = eval_y(&kv_graph(1, 2, false), &[f32t(&[0, 1, 2], &[]), f32t(&[1, 1, 2], &[7.0, 8.0])], &Map::new());
    assert_close(&empty.unwrap(), &[1, 1, 2], &[7.0, 8.0], 0.0);
}

/// Naive causal GQA: explicit dot products, max-subtracted softmax and weighted sum.
#[allow(clippy::too_many_arguments)]
fn naive_attention(q: &[f32], k: &[f32], v: &[f32], t: usize, s: usize, h: usize, kvh: usize, d: usize) -> Vec<f32> {
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0.0; t * h * d];
    for ti in 0..t {
        for hi in 0..h {
            let kh = hi / (h / kvh);
            let seen = s - t + ti + 1;
            let scores: Vec<f32> = (0..seen)
                .map(|si| (0..d).map(|x| q[(ti * h + hi) * d + x] * k[(si * kvh + kh) * d + x]).sum::<f32>() * scale)
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = scores.iter().map(|sc| (sc - max).exp()).collect();
            let denom: f32 = exps.iter().sum();
            for (si, e) in exps.iter().enumerate() {
                for x in 0..d {
                    out[(ti * h + hi) * d + x] += e / denom * v[(si * kvh + kh) * d + x];
                }
            }
        }
    }
    out
}

/// `attention(q[T, H, D], kv_append(k[P, KVH, D], k_new[T, ...]), kv_append(v, v_new))`.
fn attention_graph(h: usize, kvh: usize, d: usize) -> Graph {
    let mut b = Builder::new();
    let q = b.input("x0", DType::F32, shape![Sym::NewTokens, h, d]);
    let mut kv = Vec::new();
    for (i, name) in ["k", "v"].iter().enumerate() {
        let cache = b.input(&format!("x{}", 1 + 2 * i), DType::F32, shape![Sym::CachedTokens, kvh, d]);
        let new = b.input(&format!("x{}", 2 + 2 * i), DType::F32, shape![Sym::NewTokens, kvh, d]);
        kv.push(b.op(name, Op::KvAppend, &[cache, new]).unwrap());
    }
    let y = b.op("attn", Op::Attention { scale: 1.0 / (d as f32).sqrt() }, &[q, kv[0], kv[1]]).unwrap();
    b.output("y", y).unwrap();
    b.finish().unwrap()
}

/// Runs `attention_graph` with the first `p` rows of `k`/`v` cached and the rest new.
fn run_attention(q: &[f32], k: &[f32], v: &[f32], p: usize, h: usize, kvh: usize, d: usize) -> Tensor {
    let (t, row) = (q.len() / (h * d), kvh * d);
    let ins = [
        f32t(&[t, h, d], q),
        f32t(&[p, kvh, d], &k[..p * row]),
        f32t(&[t, kvh, d], &k[p * row..]),
        f32t(&[p, kvh, d], &v[..p * row]),
        f32t(&[t, kvh, d], &v[p * row..]),
    ];
    eval_y(&attention_graph(h, kvh, d), &ins, &Map::new()).unwrap()
}

#[test]
fn attention_by_hand() {
    // D = 1 so scale = 1. Query 0 sees key 0 only; query 1 sees scores (0, ln 3): weights 1/4, 3/4.
    let got = run_attention(&[1.0, 1.0], &[0.0, 3f32.ln()], &[4.0, 8.0], 0, 1, 1, 1);
    assert_close(&got, &[2, 1, 1], &[4.0, 7.0], TWO_ULPS);
    // One key: every head returns its KV head's value row; heads 0, 1 read KV head 0, heads 2, 3 KV head 1.
    let q = noise(1, 4 * 2);
    let got = run_attention(&q, &[0.3, -0.2, 0.9, 0.1], &[1.0, 2.0, 3.0, 4.0], 0, 4, 2, 2);
    assert_close(&got, &[1, 4, 2], &[1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 4.0], TWO_ULPS);
}

#[test]
fn attention_gqa_with_cache_offset() {
    let (h, kvh, d, p, t) = (4, 2, 3, 2, 3);
    let (q, k, v) = (noise(2, t * h * d), noise(3, (p + t) * kvh * d), noise(4, (p + t) * kvh * d));
    let got = run_attention(&q, &k, &v, p, h, kvh, d);
    assert_close(&got, &[t, h, d], &naive_attention(&q, &k, &v, t, p + t, h, kvh, d), TWO_ULPS);
    // Query 0 at position P sees keys 0..=P: changing key P+1 leaves it alone but moves query 1.
    let mut k2 = k.clone();
    k2[(p + 1) * kvh * d] += 5.0;
    let moved = run_attention(&q, &k2, &v, p, h, kvh, d).to_f32_vec();
    let before = got.to_f32_vec();
    assert_eq!(moved[..h * d], before[..h * d]);
    assert_ne!(moved[h * d..2 * h * d], before[h * d..2 * h * d]);
}

#[test]
fn decode_query_sees_every_key() {
    let (h, kvh, d) = (2, 1, 4);
    let (q, k, v) = (noise(5, h * d), noise(6, 4 * kvh * d), noise(7, 4 * kvh * d));
    let decode = run_attention(&q, &k, &v, 3, h, kvh, d);
    // Unmasked softmax over all 4 keys.
    let full = naive_attention(&q, &k, &v, 1, 4, h, kvh, d);
    assert_close(&decode, &[1, h, d], &full, TWO_ULPS);
    // ... which is also the last row of a 4-token prefill ending with this query.
    let mut q4 = noise(8, 3 * h * d);
    q4.extend(&q);
    let prefill = run_attention(&q4, &k, &v, 0, h, kvh, d).to_f32_vec();
    assert_close(&decode, &[1, h, d], &prefill[3 * h * d..], TWO_ULPS);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn matmul_matches_triple_loop(batch in 1usize..=3, m in 1usize..=17, k in 1usize..=17, n in 1usize..=17, seed: u64) {
        let (a, w) = (noise(seed, batch * m * k), noise(seed ^ 0x5eed, n * k));
        let got = run(Op::MatMul, &[f32t(&[batch, m, k], &a), f32t(&[n, k], &w)]);
        prop_assert_eq!(got.shape(), &[batch, m, n][..]);
        let got = got.to_f32_vec();
        for (row, out) in got.chunks(n).enumerate() {
            for (j, &g) in out.iter().enumerate() {
                let terms = (0..k).map(|x| a[row * k + x] as f64 * w[j * k + x] as f64);
                let (want, mag) = terms.fold((0.0, 0.0), |(s, m), p| (s + p, m + p.abs()));
                // Recursive f32 summation of k terms is within (k - 1) units of 2^-24 of the sum
                // of the magnitudes; measured at most 1.7e-7 of it (k up to 17).
                let bound = k as f64 * 2f64.powi(-24) * mag;
                prop_assert!((g as f64 - want).abs() <= bound, "[{row}, {j}]: {g} vs {want}");
            }
        }
    }

    /// A row's result does not depend on the rows computed with it (the engine's exactness
    /// under chunked prefill, preemption and prefix caching rests on this).
    #[test]
    fn matmul_rows_are_bit_identical_however_the_rows_are_split(
        m in 1usize..=9, k in 1usize..=40, n in 1usize..=150, split in 1usize..=8, seed: u64,
    ) {
        let (a, w) = (noise(seed, m * k), noise(seed ^ 0x5eed, n * k));
        let whole = run(Op::MatMul, &[f32t(&[m, k], &a), f32t(&[n, k], &w)]).to_f32_vec();
        let split = split.min(m);
        let head = run(Op::MatMul, &[f32t(&[split, k], &a[..split * k]), f32t(&[n, k], &w)]).to_f32_vec();
        let mut parts = head;
        for i in split..m {
            parts.extend(run(Op::MatMul, &[f32t(&[1, k], &a[i * k..(i + 1) * k]), f32t(&[n, k], &w)]).to_f32_vec());
        }
        let same = whole.iter().zip(&parts).all(|(x, y)| x.to_bits() == y.to_bits());
        prop_assert!(same, "rows differ once split at {split}");
    }

    /// A weight kept in 16 bits (as a bf16 or f16 checkpoint loads for f32) gives the bits of
    /// its f32 copy: widening is exact, and done a tile of rows at a time (n up to 100 spans
    /// several tiles and a partial one).
    #[test]
    fn matmul_weight_kept_in_16_bits_gives_the_f32_bits(
        m in 1usize..=5, k in 1usize..=40, n in 1usize..=100, f16_storage: bool, seed: u64,
    ) {
        let a = f32t(&[m, k], &noise(seed, m * k));
        let (kept, wide) = kept_and_wide(&[n, k], &noise(seed ^ 0x5eed, n * k), f16_storage);
        let (x, y) = (run(Op::MatMul, &[a.clone(), kept]).to_f32_vec(), run(Op::MatMul, &[a, wide]).to_f32_vec());
        prop_assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()));
    }

    /// GQA (1 to 3 query heads per KV head) after 0 to 5 cached tokens, against the naive
    /// loop. The two sum in the same order: every value was bit-identical over 5,000 cases
    /// once (512 a run), so any difference fails.
    #[test]
    #[allow(clippy::too_many_arguments)]
    fn attention_matches_naive_with_gqa_and_cached_tokens(
        t in 1usize..=6, kvh in 1usize..=3, group in 1usize..=3, d in 1usize..=8, p in 0usize..=5, seed: u64,
    ) {
        let h = kvh * group;
        let s = p + t;
        let (q, k, v) = (noise(seed, t * h * d), noise(seed + 1, s * kvh * d), noise(seed + 2, s * kvh * d));
        let got = run_attention(&q, &k, &v, p, h, kvh, d);
        prop_assert_eq!(got.shape(), &[t, h, d][..]);
        for (g, w) in got.to_f32_vec().iter().zip(naive_attention(&q, &k, &v, t, s, h, kvh, d)) {
            prop_assert_eq!(g.to_bits(), w.to_bits(), "{} vs {}", g, w);
        }
    }
}
