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
    if m > 0 && n > 0 && k > 0 {
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
