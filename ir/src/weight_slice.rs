//! A weight that is part of a checkpoint tensor: tensor parallelism gives each rank a slice
//! of the tensors it shards, and the rank's graph names it `base[start:end]` (rows) or
//! `base[:, start:end]` (columns), NumPy's spelling, so dumps read as what they are. The
//! runtimes read only the slice's bytes from the checkpoint. A concatenation
//! ([`crate::WEIGHT_CONCAT`]) may join slices: `q[0:512]+k[0:256]+v[0:256]`.

use std::fmt;
use std::ops::Range;

/// Elements `start..end` of axis `axis` of the checkpoint tensor `base`, every other axis whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WeightSlice {
    pub axis: usize,
    pub start: usize,
    pub end: usize,
}

impl WeightSlice {
    pub fn new(axis: usize, range: Range<usize>) -> WeightSlice {
        WeightSlice { axis, start: range.start, end: range.end }
    }

    /// The name of this slice of `base`.
    pub fn name(&self, base: &str) -> String {
        format!("{base}{self}")
    }

    /// Splits one part of a weight name (no [`crate::WEIGHT_CONCAT`]) into the checkpoint
    /// tensor's name and the slice, if it names one. A suffix that is not a well-formed slice
    /// is part of the name (and the checkpoint lookup names it).
    pub fn parse(part: &str) -> (&str, Option<WeightSlice>) {
        let plain = (part, None);
        let Some(body) = part.strip_suffix(']') else { return plain };
        let Some(open) = body.rfind('[') else { return plain };
        let (base, spec) = (&body[..open], &body[open + 1..]);
        let mut axes: Vec<&str> = spec.split(',').map(str::trim).collect();
        let Some(range) = axes.pop() else { return plain };
        if base.is_empty() || axes.iter().any(|a| *a != ":") {
            return plain;
        }
        let Some((start, end)) = range.split_once(':') else { return plain };
        match (start.parse::<usize>(), end.parse::<usize>()) {
            (Ok(start), Ok(end)) if start < end => (base, Some(WeightSlice { axis: axes.len(), start, end })),
            _ => plain,
        }
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// The slice's shape in a tensor of shape `full`, or `None` when it does not fit.
    pub fn shape_in(&self, full: &[usize]) -> Option<Vec<usize>> {
        let len = *full.get(self.axis)?;
        if self.is_empty() || self.end > len {
            return None;
        }
        let mut shape = full.to_vec();
        shape[self.axis] = self.len();
        Some(shape)
    }
}

impl fmt::Display for WeightSlice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for _ in 0..self.axis {
            f.write_str(":, ")?;
        }
        write!(f, "{}:{}]", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (axis, name) in [(0, "w.weight[4:12]"), (1, "w.weight[:, 4:12]"), (2, "w[:, :, 4:12]")] {
            let slice = WeightSlice::new(axis, 4..12);
            assert_eq!(slice.name(name.split('[').next().unwrap()), name);
            assert_eq!(WeightSlice::parse(name), (name.split('[').next().unwrap(), Some(slice)));
        }
    }

    #[test]
    fn malformed_suffixes_are_part_of_the_name() {
        for name in ["w", "w[]", "w[3]", "w[5:5]", "w[6:5]", "w[x:5]", "w[1, 0:4]", "[0:4]", "w[0:4"] {
            assert_eq!(WeightSlice::parse(name), (name, None), "{name}");
        }
    }

    #[test]
    fn shapes_are_checked_against_the_tensor() {
        let rows = WeightSlice::new(0, 2..6);
        assert_eq!(rows.shape_in(&[8, 3]), Some(vec![4, 3]));
        assert_eq!(WeightSlice::new(1, 1..3).shape_in(&[8, 3]), Some(vec![8, 2]));
        assert_eq!(WeightSlice::new(1, 1..4).shape_in(&[8, 3]), None);
        assert_eq!(WeightSlice::new(2, 0..1).shape_in(&[8, 3]), None);
    }
}
