//! Matmul (through the `matrixmultiply` GEMM) and attention.

use crate::dtype::DType;
use crate::tensor::Tensor;

/// `a[.., M, K] @ b[N, K]^T`, f32 accumulation, result rounded to `dtype`.
pub fn matmul(a: &Tensor, b: &Tensor, dtype: DType) -> Tensor {
    let k = *a.shape().last().expect("rank >= 2");
    let n = b.shape()[0];
    let m = a.len() / k.max(1);
    let av = a.f32s().map(|s| s.to_vec()).unwrap_or_else(|| a.to_f32_vec());
    let bv = b.f32s().expect("matmul weight is float");
    let mut c = vec![0.0f32; m * n];
    if m <= GEMV_MAX_ROWS {
        gemv_rows(&av, bv, &mut c, m, k, n);
    } else if n > 0 && k > 0 {
        // SAFETY: the pointers cover m*k, n*k and m*n elements with exactly the strides given:
        // a is row-major [m, k]; b is row-major [n, k] read as its transpose [k, n]
        // (row stride 1, column stride k); c is row-major [m, n].
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                av.as_ptr(),
                k as isize,
                1,
                bv.as_ptr(),
                1,
                k as isize,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            );
        }
    }
    let mut shape = a.shape().to_vec();
    *shape.last_mut().expect("rank >= 2") = n;
    Tensor::from_f32(dtype, shape, c)
}

/// Up to this many rows, matmul runs as dot products against the weight rows instead of the
/// GEMM: the GEMM packs the whole weight matrix on every call, which for decode (one row)
/// doubles the memory traffic of a step that is nothing but memory traffic.
const GEMV_MAX_ROWS: usize = 4;

/// `c[i, j] = a[i, :] · b[j, :]` with the output columns split across threads.
fn gemv_rows(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get()).min(8);
    let chunk = n.div_ceil(threads).max(64);
    // Column blocks of the output; each thread owns a disjoint range of weight rows.
    let mut blocks: Vec<Vec<f32>> = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk.max(1))
            .map(|j0| {
                let j1 = (j0 + chunk).min(n);
                s.spawn(move || {
                    let mut out = vec![0.0f32; m * (j1 - j0)];
                    for j in j0..j1 {
                        let w = &b[j * k..][..k];
                        for i in 0..m {
                            out[i * (j1 - j0) + (j - j0)] = dot(&a[i * k..][..k], w);
                        }
                    }
                    out
                })
            })
            .collect();
        blocks = handles.into_iter().map(|h| h.join().expect("gemv worker panicked")).collect();
    });
    let mut j0 = 0;
    for block in blocks {
        let width = block.len() / m.max(1);
        for i in 0..m {
            c[i * n + j0..i * n + j0 + width].copy_from_slice(&block[i * width..(i + 1) * width]);
        }
        j0 += width;
    }
}

/// A dot product with eight independent accumulators so the compiler can vectorize it.
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f32 = xc.remainder().iter().zip(yc.remainder()).map(|(a, b)| a * b).sum();
    for (xs, ys) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] += xs[l] * ys[l];
        }
    }
    acc.iter().sum::<f32>() + tail
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
