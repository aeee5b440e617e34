//! Ops that move data without arithmetic: gather, slice, concat, KV append.

use super::elementwise::around;
use crate::op::Bound;
use crate::tensor::{Data, Tensor};

fn rebuild(like: &Tensor, shape: Vec<usize>, data: Data) -> Tensor {
    match data {
        Data::F32(v) => Tensor::from_stored(like.dtype(), shape, v),
        Data::I32(v) => Tensor::from_i32(shape, v),
        Data::Bf16(v) => Tensor::from_bf16(like.dtype(), shape, v),
        Data::F16(v) => Tensor::from_f16(like.dtype(), shape, v),
    }
}

/// Copies `rows` of `inner` elements each, chosen by `pick`, out of `src`.
fn gather_rows<T: Copy>(src: &[T], inner: usize, rows: impl Iterator<Item = usize>) -> Vec<T> {
    let mut out = Vec::new();
    for r in rows {
        out.extend_from_slice(&src[r * inner..(r + 1) * inner]);
    }
    out
}

/// Rows of `table` picked by `ids`: the partial gather of a rank that holds the whole table.
pub fn gather(table: &Tensor, ids: &Tensor) -> Result<Tensor, String> {
    partial_gather(table, ids, 0, table.shape()[0])
}

/// One rank's part of a gather from a table of `total` rows split by rows
/// ([`crate::Op::PartialGather`]): ids in `start..start + rows` pick row `id - start`, every
/// other id in `0..total` gives a row of zeros.
pub fn partial_gather(table: &Tensor, ids: &Tensor, start: usize, total: usize) -> Result<Tensor, String> {
    let mut shape = ids.shape().to_vec();
    let ids = ids.i32s().ok_or("gather ids must be i32")?;
    let (rows, width) = (table.shape()[0], table.shape()[1]);
    if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as usize >= total) {
        return Err(format!("token id {bad} is out of range for a table of {total} rows"));
    }
    if !table.dtype().is_float() {
        return Err("gather table must be float".to_string());
    }
    // Row by row: an embedding table kept in 16 bits is widened only where it is read.
    let mut out = vec![0.0; ids.len() * width];
    for (&i, row) in ids.iter().zip(out.chunks_exact_mut(width.max(1))) {
        if let Some(local) = (i as usize).checked_sub(start).filter(|&r| r < rows) {
            table.floats_into(local * width, row);
        }
    }
    shape.push(width);
    Ok(Tensor::from_stored(table.dtype(), shape, out))
}

pub fn slice(x: &Tensor, axis: usize, start: Bound, end: Bound) -> Result<Tensor, String> {
    let (outer, len, inner) = around(x.shape(), axis);
    let (s, e) = match (start.resolve(len), end.resolve(len)) {
        (Some(s), Some(e)) if s < e => (s, e),
        _ => return Err(format!("slice {start}:{end} out of range for an axis of {len}")),
    };
    // View the tensor as [outer * len, inner] rows and keep rows s..e of every outer block.
    let rows = (0..outer).flat_map(|o| (s..e).map(move |k| o * len + k));
    let data = match x.data() {
        Data::F32(v) => Data::F32(gather_rows(v, inner, rows)),
        Data::I32(v) => Data::I32(gather_rows(v, inner, rows)),
        Data::Bf16(v) => Data::Bf16(gather_rows(v, inner, rows)),
        Data::F16(v) => Data::F16(gather_rows(v, inner, rows)),
    };
    let mut shape = x.shape().to_vec();
    shape[axis] = e - s;
    Ok(rebuild(x, shape, data))
}

pub fn concat(parts: &[&Tensor], axis: usize) -> Tensor {
    let first = parts[0];
    let (outer, _, inner) = around(first.shape(), axis);
    let total: usize = parts.iter().map(|p| p.shape()[axis]).sum();
    let mut shape = first.shape().to_vec();
    shape[axis] = total;
    // Interleave each part's block of `shape[axis] * inner` elements per outer index.
    fn interleave<T: Copy>(blocks: &[(&[T], usize)], outer: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(blocks.iter().map(|(v, _)| v.len()).sum());
        for o in 0..outer {
            for (v, chunk) in blocks {
                out.extend_from_slice(&v[o * chunk..(o + 1) * chunk]);
            }
        }
        out
    }
    let chunk = |p: &Tensor| p.shape()[axis] * inner;
    if let Data::I32(_) = first.data() {
        let blocks: Vec<(&[i32], usize)> = parts.iter().map(|p| (p.i32s().unwrap_or_default(), chunk(p))).collect();
        return Tensor::from_i32(shape, interleave(&blocks, outer));
    }
    let floats: Vec<_> = parts.iter().map(|p| p.floats()).collect();
    let blocks: Vec<(&[f32], usize)> = floats.iter().zip(parts).map(|(v, p)| (&v[..], chunk(p))).collect();
    Tensor::from_stored(first.dtype(), shape, interleave(&blocks, outer))
}

/// Appends `new`'s rows (axis 0) to `cache`, reusing `cache`'s allocation.
pub fn append_rows(cache: Tensor, new: &Tensor) -> Tensor {
    let mut shape = cache.shape().to_vec();
    shape[0] += new.shape()[0];
    let dtype = cache.dtype();
    match cache.into_data() {
        Data::I32(mut v) => {
            v.extend(new.i32s().unwrap_or_default());
            Tensor::from_i32(shape, v)
        }
        floats => {
            let mut v = floats.into_floats();
            v.extend(new.to_f32_vec().into_iter().map(|x| dtype.round(x)));
            Tensor::from_stored(dtype, shape, v)
        }
    }
}
