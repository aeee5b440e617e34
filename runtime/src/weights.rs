//! Loading Hugging Face safetensors checkpoints from a model directory.
//!
//! A model directory holds either `model.safetensors` or `model.safetensors.index.json` plus the
//! shards it names. [`Checkpoint::open`] memory-maps every file and parses every header up front,
//! so a truncated download or a non-safetensors file fails immediately with the path at fault.
//! [`Checkpoint::validate`] then checks the checkpoint against what the model expects (names,
//! exact shapes, float dtypes) and reports *all* missing tensors at once, before any of the
//! (large) conversion work in [`Checkpoint::load`] happens.

mod convert;
mod diagnose;
mod error;
// Mapping a checkpoint file (memmap2 cannot make that safe: another process may change it).
#[allow(unsafe_code)]
mod file;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use smelt_ir::{DType, Tensor};

pub use error::WeightError;
pub use file::{INDEX_FILE, SINGLE_FILE};

use file::{Entry, MappedFile};

/// What the model expects: a tensor name and its exact shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl WeightSpec {
    pub fn new(name: impl Into<String>, shape: impl Into<Vec<usize>>) -> WeightSpec {
        WeightSpec { name: name.into(), shape: shape.into() }
    }
}

/// The result of [`Checkpoint::load_all`]: tensors in spec order, plus names the checkpoint holds
/// that were neither expected nor ignored (the caller decides whether to warn).
#[derive(Debug)]
pub struct LoadedWeights {
    pub tensors: Vec<(String, Tensor)>,
    pub unexpected: Vec<String>,
}

/// The mmapped checkpoint: one file or the shards of an index.
///
/// The maps stay alive as long as the checkpoint; tensor metadata is owned, so nothing borrows
/// from the maps between calls and every byte access is bounds-checked.
pub struct Checkpoint {
    files: Vec<MappedFile>,
    entries: BTreeMap<String, Entry>,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors`, or `dir/model.safetensors.index.json` and every shard it
    /// names. Every file is mapped and its header parsed and checked here.
    pub fn open(dir: &Path) -> Result<Checkpoint, WeightError> {
        let opened = file::open_dir(dir)?;
        tracing::debug!(dir = %dir.display(), files = opened.files.len(), tensors = opened.entries.len(), "checkpoint opened");
        Ok(Checkpoint { files: opened.files, entries: opened.entries })
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }

    /// The files this checkpoint was read from (one, or the shards in name order).
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// The file holding tensor `name`, if the checkpoint has it.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.entries.get(name).map(|e| self.path_of(e))
    }

    /// The stored shape of a tensor.
    pub fn shape(&self, name: &str) -> Result<&[usize], WeightError> {
        Ok(&self.entry(name)?.shape)
    }

    /// The stored dtype of a tensor; an error for anything but BF16, F16 or F32.
    pub fn dtype(&self, name: &str) -> Result<DType, WeightError> {
        let entry = self.entry(name)?;
        match entry.dtype {
            safetensors::Dtype::F32 => Ok(DType::F32),
            safetensors::Dtype::F16 => Ok(DType::F16),
            safetensors::Dtype::BF16 => Ok(DType::BF16),
            other => Err(WeightError::DType {
                name: name.to_string(),
                path: self.path_of(entry).to_path_buf(),
                found: other.to_string(),
            }),
        }
    }

    /// Checks every spec is present with exactly that shape and a float dtype.
    ///
    /// All specs are checked. If any are missing, the error is [`WeightError::Missing`] listing
    /// every missing name (the usual sign of a wrong model, best seen whole); otherwise the first
    /// shape/dtype problem in spec order is returned. `ignore` names tensors that may be present
    /// and are skipped (e.g. `lm_head.weight` of a tied model). Returns the names present but
    /// neither expected nor ignored, sorted, for the caller to warn about.
    pub fn validate(&self, specs: &[WeightSpec], ignore: &[&str]) -> Result<Vec<String>, WeightError> {
        let mut missing = Vec::new();
        let mut first_problem = None;
        let mut expected = HashSet::with_capacity(specs.len());
        for spec in specs {
            if !expected.insert(spec.name.as_str()) {
                continue;
            }
            match self.entries.get(&spec.name) {
                None => missing.push(spec.name.clone()),
                Some(_) if first_problem.is_some() => {}
                Some(entry) => first_problem = self.check(&spec.name, entry, &spec.shape).err(),
            }
        }
        if !missing.is_empty() {
            return Err(WeightError::Missing { missing, searched: self.searched() });
        }
        if let Some(problem) = first_problem {
            return Err(problem);
        }
        let ignore: HashSet<&str> = ignore.iter().copied().collect();
        Ok(self
            .entries
            .keys()
            .filter(|n| !expected.contains(n.as_str()) && !ignore.contains(n.as_str()))
            .cloned()
            .collect())
    }

    /// Converts one tensor to a host [`Tensor`] of `dtype`: stored values are widened to f32
    /// exactly, then rounded to `dtype` (so bf16 → bf16 and bf16 → f32 are exact).
    pub fn load(&self, name: &str, dtype: DType) -> Result<Tensor, WeightError> {
        let entry = self.entry(name)?;
        let path = self.path_of(entry);
        if !dtype.is_float() {
            return Err(WeightError::Target { name: name.to_string(), path: path.to_path_buf(), requested: dtype });
        }
        // Checks the stored dtype (and names the tensor) before any conversion work.
        self.dtype(name)?;
        let bytes = self
            .files
            .get(entry.file)
            .and_then(|f| f.mmap.get(entry.start..entry.end))
            .ok_or_else(|| WeightError::malformed(path, format!("tensor {name}: data lies outside the file")))?;
        // The dtype was checked above, so this is `Some`; an empty default would fail the size
        // check below rather than panic.
        let (values, finite) = convert::to_f32(entry.dtype, bytes).unwrap_or_default();
        let numel = entry.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let exact = values.len().checked_mul(entry.dtype.bitsize() / 8) == Some(bytes.len());
        if numel != Some(values.len()) || !exact {
            return Err(WeightError::malformed(
                path,
                format!("tensor {name}: {} bytes of {} do not match shape {:?}", bytes.len(), entry.dtype, entry.shape),
            ));
        }
        // NaN or inf in a weight makes every logit NaN, and greedy decoding then prints token
        // 0 forever: refused here, where the tensor and file can be named.
        if !finite {
            let first = values.iter().position(|v| !v.is_finite()).unwrap_or_default();
            let count = values[first..].iter().filter(|v| !v.is_finite()).count();
            return Err(WeightError::NonFinite { name: name.to_string(), path: path.to_path_buf(), count, first });
        }
        let tensor = Tensor::from_f32(dtype, entry.shape.clone(), values);
        if dtype == DType::F16 {
            let count = tensor.f32s().map_or(0, |v| v.iter().filter(|x| !x.is_finite()).count());
            if count > 0 {
                return Err(WeightError::F16Range { name: name.to_string(), path: path.to_path_buf(), count });
            }
        }
        Ok(tensor)
    }

    /// [`validate`](Self::validate), then [`load`](Self::load) every spec, in spec order.
    pub fn load_all(&self, specs: &[WeightSpec], ignore: &[&str], dtype: DType) -> Result<LoadedWeights, WeightError> {
        let unexpected = self.validate(specs, ignore)?;
        let tensors = specs
            .iter()
            .map(|s| Ok((s.name.clone(), self.load(&s.name, dtype)?)))
            .collect::<Result<_, WeightError>>()?;
        tracing::debug!(tensors = specs.len(), ?dtype, unexpected = unexpected.len(), "weights loaded");
        Ok(LoadedWeights { tensors, unexpected })
    }

    fn entry(&self, name: &str) -> Result<&Entry, WeightError> {
        self.entries
            .get(name)
            .ok_or_else(|| WeightError::Missing { missing: vec![name.to_string()], searched: self.searched() })
    }

    /// One present tensor against its spec: float dtype first (an unsupported checkpoint), then
    /// the exact shape.
    fn check(&self, name: &str, entry: &Entry, expected: &[usize]) -> Result<(), WeightError> {
        self.dtype(name)?;
        if entry.shape != expected {
            return Err(WeightError::Shape {
                name: name.to_string(),
                path: self.path_of(entry).to_path_buf(),
                expected: expected.to_vec(),
                found: entry.shape.clone(),
            });
        }
        Ok(())
    }

    fn path_of(&self, entry: &Entry) -> &Path {
        self.files.get(entry.file).map_or(Path::new("<unknown file>"), |f| f.path.as_path())
    }

    fn searched(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.path.clone()).collect()
    }
}
