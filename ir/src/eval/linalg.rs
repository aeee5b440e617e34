//! Matmul and attention.

use std::ops::Range;

use crate::dtype::DType;
use crate::tensor::Tensor;

/// `a[.., M, K] @ b[N, K]^T`, f32 accumulation, result rounded to `dtype`.
///
/// Every output element is one [`dot`] of an input row and a weight row, whatever M is, so a
/// row's result does not depend on how many rows share the call: a prompt run in one prefill,
/// in chunks, or token by token (decode) gives bit-identical logits. The batching engine's
/// guarantee that preemption and prefix caching do not change a sequence's output rests on it.
/// A weight kept in 16 bits gives the same bits as its f32 copy (widening is exact).
pub fn matmul(a: &Tensor, b: &Tensor, dtype: DType) -> Tensor {
    let k = *a.shape().last().expect("rank >= 2");
    let n = b.shape()[0];
    let m = a.len() / k.max(1);
    let av = a.floats();
    assert!(b.dtype().is_float(), "matmul weight is float (the verifier checks it)");
    let mut c = vec![0.0f32; m * n];
    if m > 0 && n > 0 {
        matmul_rows(&av, b, &mut c, m, k, n);
    }
    let mut shape = a.shape().to_vec();
    *shape.last_mut().expect("rank >= 2") = n;
    Tensor::from_f32(dtype, shape, c)
}

/// Weight rows a thread keeps hot while every input row passes over them: 32 rows of a
/// 1,024-wide f32 weight are 128 KiB, which stays in a core's L2.
const WEIGHT_ROWS_PER_TILE: usize = 32;

/// `c[i, j] = a[i, :] · b[j, :]` with the output columns split across threads.
fn matmul_rows(a: &[f32], b: &Tensor, c: &mut [f32], m: usize, k: usize, n: usize) {
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get()).min(8);
    let chunk = n.div_ceil(threads).max(64);
    // Column blocks of the output; each thread owns a disjoint range of weight rows.
    let mut blocks: Vec<Vec<f32>> = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|j0| {
                let j1 = (j0 + chunk).min(n);
                s.spawn(move || {
                    let mut out = vec![0.0f32; m * (j1 - j0)];
                    column_block(a, b, j0..j1, &mut out, m, k);
                    out
                })
            })
            .collect();
        blocks = handles.into_iter().map(|h| h.join().expect("matmul worker panicked")).collect();
    });
    let mut j0 = 0;
    for block in blocks {
        let width = block.len() / m;
        for i in 0..m {
            c[i * n + j0..i * n + j0 + width].copy_from_slice(&block[i * width..(i + 1) * width]);
        }
        j0 += width;
    }
}

/// `out[m, w] = a[m, k] @ b[rows, k]^T` (w rows), with AVX2 code where the CPU has it. Both
/// builds do the same IEEE mul and add per lane in the same order (no FMA), so they agree to
/// the bit.
fn column_block(a: &[f32], b: &Tensor, rows: Range<usize>, out: &mut [f32], m: usize, k: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { column_block_avx2(a, b, rows, out, m, k) };
    }
    column_block_portable(a, b, rows, out, m, k)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn column_block_avx2(a: &[f32], b: &Tensor, rows: Range<usize>, out: &mut [f32], m: usize, k: usize) {
    column_block_portable(a, b, rows, out, m, k)
}

/// A tile of weight rows is reused by every input row; within it, two input rows meet four
/// weight rows at a time, so each load feeds several accumulators. An f32 weight is read in
/// place; one kept in 16 bits is widened a tile at a time, while the tile is hot.
#[inline(always)]
fn column_block_portable(a: &[f32], b: &Tensor, rows: Range<usize>, out: &mut [f32], m: usize, k: usize) {
    let width = rows.len();
    let row = |i: usize| &a[i * k..(i + 1) * k];
    let mut buf = Vec::new();
    for t0 in (0..width).step_by(WEIGHT_ROWS_PER_TILE) {
        let t1 = (t0 + WEIGHT_ROWS_PER_TILE).min(width);
        let span = (rows.start + t0) * k..(rows.start + t1) * k;
        let tile = match b.f32s() {
            Some(v) => &v[span],
            None => {
                buf.resize(span.len(), 0.0);
                b.floats_into(span.start, &mut buf);
                &buf[..]
            }
        };
        let weight = |j: usize| &tile[(j - t0) * k..(j - t0 + 1) * k];
        let mut i = 0;
        while i < m {
            let pair = i + 1 < m;
            let mut j = t0;
            while j + 4 <= t1 {
                let w = [weight(j), weight(j + 1), weight(j + 2), weight(j + 3)];
                if pair {
                    let [r0, r1] = dots::<2, 4>([row(i), row(i + 1)], w);
                    out[i * width + j..][..4].copy_from_slice(&r0);
                    out[(i + 1) * width + j..][..4].copy_from_slice(&r1);
                } else {
                    let [r0] = dots::<1, 4>([row(i)], w);
                    out[i * width + j..][..4].copy_from_slice(&r0);
                }
                j += 4;
            }
            for j in j..t1 {
                for r in i..i + 1 + pair as usize {
                    out[r * width + j] = dots::<1, 1>([row(r)], [weight(j)])[0][0];
                }
            }
            i += 2;
        }
    }
}

/// `R x W` dot products of equal-length rows, each summed as eight lanes (`acc[l] += x * y`
/// over the row in order), then the lanes in order, then the tail: the same rounding for
/// every `R` and `W`.
#[inline(always)]
fn dots<const R: usize, const W: usize>(x: [&[f32]; R], w: [&[f32]; W]) -> [[f32; W]; R] {
    let k = x[0].len();
    let full = k / 8 * 8;
    let mut acc = [[[0.0f32; 8]; W]; R];
    let mut c = 0;
    while c < full {
        let xs: [&[f32; 8]; R] = x.map(|x| x[c..c + 8].try_into().expect("eight lanes"));
        let ws: [&[f32; 8]; W] = w.map(|w| w[c..c + 8].try_into().expect("eight lanes"));
        for r in 0..R {
            for q in 0..W {
                for l in 0..8 {
                    acc[r][q][l] += xs[r][l] * ws[q][l];
                }
            }
        }
        c += 8;
    }
    let mut result = [[0.0f32; W]; R];
    for r in 0..R {
        for q in 0..W {
            let tail: f32 = x[r][full..].iter().zip(&w[q][full..]).map(|(a, b)| a * b).sum();
            result[r][q] = acc[r][q].iter().sum::<f32>() + tail;
        }
    }
    result
}

/// Causal grouped-query attention; see `Op::Attention`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32, dtype: DType) -> Result<Tensor, String> {
    let (t, h, d) = (q.shape()[0], q.shape()[1], q.shape()[2]);
    let (s, kvh) = (k.shape()[0], k.shape()[1]);
    if t > s {
        return Err(format!("{t} queries but only {s} keys"));
    }
    let group = h / kvh;
    let offset = s - t;
    let (qv, kv, vv) = (q.to_f32_vec(), k.to_f32_vec(), v.to_f32_vec());
    let mut out = vec![0.0f32; t * h * d];
    let mut scores = vec![0.0f32; s];
    for ti in 0..t {
        let visible = offset + ti + 1;
        for hi in 0..h {
            let kh = hi / group;
            let qrow = &qv[(ti * h + hi) * d..][..d];
            let mut max = f32::NEG_INFINITY;
            for (si, score) in scores[..visible].iter_mut().enumerate() {
                let krow = &kv[(si * kvh + kh) * d..][..d];
                let dot: f32 = qrow.iter().zip(krow).map(|(a, b)| a * b).sum();
                *score = dot * scale;
                max = max.max(*score);
            }
            let mut denom = 0.0f32;
            for score in &mut scores[..visible] {
                *score = (*score - max).exp();
                denom += *score;
            }
            let orow = &mut out[(ti * h + hi) * d..][..d];
            for (si, p) in scores[..visible].iter().enumerate() {
                let w = p / denom;
                let vrow = &vv[(si * kvh + kh) * d..][..d];
                for (o, x) in orow.iter_mut().zip(vrow) {
                    *o += w * x;
                }
            }
        }
    }
    Ok(Tensor::from_f32(dtype, vec![t, h, d], out))
}
