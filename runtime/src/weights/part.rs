//! What a weight name reads from the checkpoint: a whole stored tensor, or a slice of one
//! (`base[start:end]`, `base[:, start:end]`; see [`WeightSlice`]), as byte runs in its file.
//!
//! A row-major tensor's slice along axis `a` is one run per index of the axes before `a`
//! (one run for axis 0, one per row for a column slice), all the same length and evenly
//! spaced, so the runs are three numbers, not a list: a column slice of a 150k-row
//! embedding would otherwise be a list of 150k ranges.

use std::ops::Range;

use smelt_ir::WeightSlice;

use super::file::Entry;

/// A weight name resolved against the checkpoint: the stored tensor it reads (`base`) and,
/// for a slice, which part.
pub struct Part<'a> {
    pub base: &'a str,
    pub entry: &'a Entry,
    pub slice: Option<WeightSlice>,
}

impl Part<'_> {
    /// The shape read: the slice's, or the stored tensor's; the slice when it does not fit
    /// the stored shape.
    pub fn shape(&self) -> Result<Vec<usize>, WeightSlice> {
        match self.slice {
            Some(slice) => slice.shape_in(&self.entry.shape).ok_or(slice),
            None => Ok(self.entry.shape.clone()),
        }
    }

    /// Whether the stored shape, in elements of `element_bytes`, is exactly the tensor's byte
    /// range (safetensors checks it when parsing; [`Part::runs`] relies on it).
    pub fn shape_covers_bytes(&self, element_bytes: usize) -> bool {
        let numel = self.entry.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        numel.and_then(|n| n.checked_mul(element_bytes)) == Some(self.entry.end - self.entry.start)
    }

    /// Where the part's bytes lie in the file, for elements of `element_bytes` bytes; the
    /// slice when it does not fit. Only for a part whose [shape covers its
    /// bytes](Part::shape_covers_bytes): the byte range lies in the file, so no product here
    /// overflows.
    pub fn runs(&self, element_bytes: usize) -> Result<Runs, WeightSlice> {
        let shape = &self.entry.shape;
        let whole = Runs { first: self.entry.start, len: self.entry.end - self.entry.start, stride: 0, count: 1 };
        let Some(slice) = self.slice else { return Ok(whole) };
        self.shape()?;
        let outer: usize = shape[..slice.axis].iter().product();
        // Bytes of one index of the sliced axis: everything after it.
        let inner = shape[slice.axis + 1..].iter().product::<usize>() * element_bytes;
        let stride = shape[slice.axis] * inner;
        let len = slice.len() * inner;
        if len == stride || outer == 1 {
            // One contiguous range: the slice spans its axis whole, or nothing is outside it.
            let first = self.entry.start + slice.start * inner;
            return Ok(Runs { first, len: len * outer, stride: 0, count: 1 });
        }
        Ok(Runs { first: self.entry.start + slice.start * inner, len, stride, count: outer })
    }
}

/// `count` byte ranges of `len` bytes, the first at `first`, each `stride` after the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Runs {
    pub first: usize,
    pub len: usize,
    pub stride: usize,
    pub count: usize,
}

impl Runs {
    /// The bytes the runs cover together.
    pub fn bytes(&self) -> usize {
        self.len * self.count
    }

    pub fn iter(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        (0..self.count).map(|k| {
            let start = self.first + k * self.stride;
            start..start + self.len
        })
    }
}

#[cfg(test)]
mod tests {
    use safetensors::Dtype;

    use super::*;

    /// The runs as (start, end) pairs.
    fn runs(shape: &[usize], slice: Option<WeightSlice>) -> Option<Vec<(usize, usize)>> {
        let end = 100 + shape.iter().product::<usize>() * 4;
        let entry = Entry { file: 0, dtype: Dtype::F32, shape: shape.to_vec(), start: 100, end };
        let part = Part { base: "w", entry: &entry, slice };
        part.runs(4).ok().map(|r| r.iter().map(|run| (run.start, run.end)).collect())
    }

    #[test]
    fn slices_are_runs_of_whole_elements() {
        assert_eq!(runs(&[4, 3], None), Some(vec![(100, 148)]));
        assert_eq!(runs(&[4, 3], Some(WeightSlice::new(0, 1..3))), Some(vec![(112, 136)]));
        assert_eq!(
            runs(&[4, 3], Some(WeightSlice::new(1, 1..3))),
            Some(vec![(104, 112), (116, 124), (128, 136), (140, 148)])
        );
        // The whole of axis 1 is the rows themselves: one run.
        assert_eq!(runs(&[4, 3], Some(WeightSlice::new(1, 0..3))), Some(vec![(100, 148)]));
        // Axis 1 of a rank-3 tensor: one run per index of axis 0, each whole rows of axis 2.
        assert_eq!(runs(&[2, 3, 2], Some(WeightSlice::new(1, 2..3))), Some(vec![(116, 124), (140, 148)]));
        assert_eq!(runs(&[1, 3, 2], Some(WeightSlice::new(2, 1..2))), Some(vec![(104, 108), (112, 116), (120, 124)]));
        assert_eq!(runs(&[4, 3], Some(WeightSlice::new(0, 3..5))), None);
        assert_eq!(runs(&[4, 3], Some(WeightSlice::new(2, 0..1))), None);
    }
}
