//! Loading Hugging Face safetensors checkpoints from a model directory.
//!
//! A model directory holds either `model.safetensors` or `model.safetensors.index.json` plus the
//! shards it names. [`Checkpoint::open`] opens every file and parses every header up front,
//! so a truncated download or a non-safetensors file fails immediately with the path at fault.
//! [`Checkpoint::validate`] then checks the checkpoint against what the model expects (names,
//! exact shapes, float dtypes) and reports *all* missing tensors at once, before any of the
//! (large) conversion work in [`Checkpoint::load`] happens.
//!
//! A weight name may name a slice of a stored tensor (`base[start:end]`, `base[:, start:end]`:
//! [`WeightSlice`], a tensor-parallel rank's part): only the slice's bytes are read.

mod convert;
mod diagnose;
mod error;
// Mapping a checkpoint file to parse its header (memmap2 cannot make that safe: another
// process may change it).
#[allow(unsafe_code)]
mod file;
mod part;
#[cfg(test)]
mod slice_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use smelt_ir::{DType, Tensor, WeightSlice};

use crate::progress::{Task, Unit};

pub use error::{SliceMismatch, WeightError};
pub use file::{INDEX_FILE, SINGLE_FILE};

use file::{Entry, TensorFile};
use part::Part;
use safetensors::Dtype;

/// Bytes read from a checkpoint at a time (a multiple of every element size).
const STAGING_BYTES: usize = 4 << 20;

/// What [`Checkpoint::read`] keeps: the whole tensor, or each chunk until the next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    Whole,
    Chunk,
}

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

/// The opened checkpoint: one file or the shards of an index.
///
/// Tensor metadata is owned and every byte range was checked against its file's length at
/// open time; data is read on demand by [`Checkpoint::load`].
pub struct Checkpoint {
    files: Vec<TensorFile>,
    entries: BTreeMap<String, Entry>,
    /// Bytes read at a time: [`STAGING_BYTES`], smaller in tests (a multiple of every
    /// element size).
    staging_bytes: usize,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors`, or `dir/model.safetensors.index.json` and every shard it
    /// names. Every file is mapped and its header parsed and checked here.
    pub fn open(dir: &Path) -> Result<Checkpoint, WeightError> {
        let opened = file::open_dir(dir)?;
        tracing::debug!(dir = %dir.display(), files = opened.files.len(), tensors = opened.entries.len(), "checkpoint opened");
        Ok(Checkpoint { files: opened.files, entries: opened.entries, staging_bytes: STAGING_BYTES })
    }

    /// This checkpoint reading `bytes` at a time (a multiple of 4: every element size), so
    /// tests cross staging buffers with small tensors.
    #[cfg(test)]
    fn with_staging_bytes(self, bytes: usize) -> Checkpoint {
        assert!(bytes > 0 && bytes % 4 == 0, "{bytes} staging bytes");
        Checkpoint { staging_bytes: bytes, ..self }
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

    /// The stored shape of a tensor (a stored name: a slice's name is not one).
    pub fn shape(&self, name: &str) -> Result<&[usize], WeightError> {
        Ok(&self.entry(name)?.shape)
    }

    /// The stored dtype of a tensor (of the one it slices, for a slice's name); an error for
    /// anything but BF16, F16 or F32.
    pub fn dtype(&self, name: &str) -> Result<DType, WeightError> {
        self.dtype_of(name, self.part(name)?.entry)
    }

    /// [`dtype`](Self::dtype) of the tensor `entry`, named `name` in the error.
    fn dtype_of(&self, name: &str, entry: &Entry) -> Result<DType, WeightError> {
        match entry.dtype {
            Dtype::F32 => Ok(DType::F32),
            Dtype::F16 => Ok(DType::F16),
            Dtype::BF16 => Ok(DType::BF16),
            other => Err(WeightError::DType {
                name: name.to_string(),
                path: self.path_of(entry).to_path_buf(),
                found: other.to_string(),
            }),
        }
    }

    /// Checks every spec is present with exactly that shape and a float dtype. A spec naming
    /// a slice needs its stored tensor, and the slice must fit it and give the spec's shape.
    ///
    /// All specs are checked. If any are missing, the error is [`WeightError::Missing`] listing
    /// every missing name (the usual sign of a wrong model, best seen whole); otherwise the first
    /// shape/dtype problem in spec order is returned. `ignore` names tensors that may be present
    /// and are skipped (e.g. `lm_head.weight` of a tied model). Returns the names present but
    /// neither expected nor ignored, sorted, for the caller to warn about (a tensor a spec
    /// slices is expected).
    pub fn validate(&self, specs: &[WeightSpec], ignore: &[&str]) -> Result<Vec<String>, WeightError> {
        let mut missing = Vec::new();
        let mut first_problem = None;
        let mut seen = HashSet::with_capacity(specs.len());
        let mut expected = HashSet::with_capacity(specs.len());
        for spec in specs {
            if !seen.insert(spec.name.as_str()) {
                continue;
            }
            match self.part(&spec.name) {
                Err(_) => missing.push(spec.name.clone()),
                Ok(part) => {
                    expected.insert(part.base);
                    if first_problem.is_none() {
                        first_problem = self.check(&spec.name, &part, &spec.shape).err();
                    }
                }
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

    /// Reads one tensor as a host [`Tensor`] of `dtype`, kept in the narrowest storage that
    /// holds exactly the values `dtype` computes with (`convert::Kept`): a bf16 checkpoint
    /// stays bf16 for bf16 and for f32 (widened per tile as it is used, exactly); an f32 one
    /// loaded as bf16 rounds to nearest even. The bytes go through a bounded staging buffer.
    /// A slice's name loads the slice, reading only its bytes.
    pub fn load(&self, name: &str, dtype: DType) -> Result<Tensor, WeightError> {
        let part = self.part(name)?;
        let shape = part.shape().map_err(|slice| self.slice_error(name, part.entry, slice, None))?;
        let kept = self.read(name, dtype, Keep::Whole, |_| Ok::<(), WeightError>(()))?;
        Ok(kept.into_tensor(dtype, shape))
    }

    /// Gives tensor `name` to `sink` as little-endian `dtype` words (what a device buffer of
    /// that dtype holds), one staging buffer's worth at a time, so no more than that is ever
    /// on the host: the values [`load`](Self::load) gives, with the same refusals. A refused
    /// tensor stops reaching `sink` at the chunk where the problem shows; the caller discards
    /// what it received. A slice's name streams the slice, reading only its bytes.
    pub fn stream<E: From<WeightError>>(
        &self,
        name: &str,
        dtype: DType,
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut words = Vec::new();
        self.read(name, dtype, Keep::Chunk, |kept| {
            words.clear();
            kept.write_storage(dtype, &mut words);
            sink(&words)
        })?;
        Ok(())
    }

    /// Reads weight `name` (a stored tensor, or only the bytes of the slice it names) for
    /// `dtype` through the staging buffer, calling `each` with the values kept after every
    /// chunk (all so far, or that chunk's alone) while none was refused. A slice's runs (one
    /// per row of a column slice) fill the staging buffer one after another, so a narrow
    /// slice is still converted in full chunks. NaN or inf in a weight makes every logit NaN,
    /// and greedy decoding then prints token 0 forever: refused here, where the tensor and
    /// file can be named, as are finite values that round to infinity in a narrower dtype.
    fn read<E: From<WeightError>>(
        &self,
        name: &str,
        dtype: DType,
        keep: Keep,
        mut each: impl FnMut(&convert::Kept) -> Result<(), E>,
    ) -> Result<convert::Kept, E> {
        let part = self.part(name)?;
        let entry = part.entry;
        let path = self.path_of(entry);
        if !dtype.is_float() {
            return Err(
                WeightError::Target { name: name.to_string(), path: path.to_path_buf(), requested: dtype }.into()
            );
        }
        // Checks the stored dtype (and names the tensor) before any conversion work.
        self.dtype_of(name, entry)?;
        let element = entry.dtype.bitsize() / 8;
        let malformed = || {
            let bytes = entry.end - entry.start;
            let what = format!("{bytes} bytes of {} do not match shape {:?}", entry.dtype, entry.shape);
            WeightError::malformed(path, format!("tensor {}: {what}", part.base))
        };
        let file = self.files.get(entry.file).filter(|_| part.shape_covers_bytes(element));
        let Some(file) = file else { return Err(malformed().into()) };
        let runs = part.runs(element).map_err(|slice| self.slice_error(name, entry, slice, None))?;
        let staging_len = self.staging_bytes.min(runs.bytes());
        let values = if keep == Keep::Whole { runs.bytes() } else { staging_len } / element;
        let Some(mut kept) = convert::Kept::new(entry.dtype, dtype, values) else { return Err(malformed().into()) };

        let (mut stored_finite, mut count, mut first, mut done) = (true, 0, None, 0);
        let mut take_chunk = |chunk: &[u8]| -> Result<(), E> {
            let from = kept.len();
            stored_finite &= kept.append(entry.dtype, chunk);
            let (bad, at) = kept.non_finite_from(from);
            if bad > 0 {
                count += bad;
                first.get_or_insert(done + at - from);
            }
            if count == 0 {
                each(&kept)?;
            }
            done += kept.len() - from;
            if keep == Keep::Chunk {
                kept.clear();
            }
            Ok(())
        };
        let mut staging = vec![0u8; staging_len];
        let mut filled = 0;
        for run in runs.iter() {
            let mut offset = run.start;
            while offset < run.end {
                let take = (run.end - offset).min(staging_len - filled);
                file.read_at(offset, &mut staging[filled..filled + take]).map_err(|e| {
                    WeightError::malformed(
                        path,
                        format!("tensor {name}: cannot read its bytes at offset {offset}: {e}"),
                    )
                })?;
                (offset, filled) = (offset + take, filled + take);
                if filled == staging_len {
                    take_chunk(&staging)?;
                    filled = 0;
                }
            }
        }
        if filled > 0 {
            take_chunk(&staging[..filled])?;
        }
        let (path, first) = (path.to_path_buf(), first.unwrap_or(0));
        if !stored_finite {
            return Err(WeightError::NonFinite { name: name.to_string(), path, count, first }.into());
        }
        if count > 0 {
            // Finite stored values that rounded to infinity in a narrower dtype.
            return Err(WeightError::Range { name: name.to_string(), path, count, dtype }.into());
        }
        Ok(kept)
    }

    /// [`validate`](Self::validate), then [`load`](Self::load) every spec, in spec order.
    pub fn load_all(&self, specs: &[WeightSpec], ignore: &[&str], dtype: DType) -> Result<LoadedWeights, WeightError> {
        let unexpected = self.validate(specs, ignore)?;
        let bytes = |name: &str| self.bytes_read(name) as u64;
        let task = Task::begin("loading weights", specs.iter().map(|s| bytes(&s.name)).sum(), Unit::Bytes);
        let tensors = specs
            .iter()
            .map(|s| {
                let tensor = self.load(&s.name, dtype)?;
                task.advance(bytes(&s.name));
                Ok((s.name.clone(), tensor))
            })
            .collect::<Result<_, WeightError>>()?;
        tracing::debug!(tensors = specs.len(), ?dtype, unexpected = unexpected.len(), "weights loaded");
        Ok(LoadedWeights { tensors, unexpected })
    }

    fn entry(&self, name: &str) -> Result<&Entry, WeightError> {
        self.entries
            .get(name)
            .ok_or_else(|| WeightError::Missing { missing: vec![name.to_string()], searched: self.searched() })
    }

    /// Resolves a weight name to the stored tensor it reads: itself, or the one it slices
    /// (missing under the name asked for).
    fn part<'a>(&'a self, name: &str) -> Result<Part<'a>, WeightError> {
        let (base, slice) = WeightSlice::parse(name);
        let Some((base, entry)) = self.entries.get_key_value(base) else {
            return Err(WeightError::Missing { missing: vec![name.to_string()], searched: self.searched() });
        };
        Ok(Part { base, entry, slice })
    }

    /// The bytes loading weight `name` reads from its file (0 when it cannot be read).
    fn bytes_read(&self, name: &str) -> usize {
        let Ok(part) = self.part(name) else { return 0 };
        let element = part.entry.dtype.bitsize() / 8;
        if !part.shape_covers_bytes(element) {
            return 0;
        }
        part.runs(element).map_or(0, |runs| runs.bytes())
    }

    /// One present weight against its spec: float dtype first (an unsupported checkpoint),
    /// then the exact shape (a slice's, which must fit the stored shape).
    fn check(&self, name: &str, part: &Part, expected: &[usize]) -> Result<(), WeightError> {
        self.dtype_of(name, part.entry)?;
        match (part.slice, part.shape()) {
            (None, Ok(found)) if found != expected => Err(WeightError::Shape {
                name: name.to_string(),
                path: self.path_of(part.entry).to_path_buf(),
                expected: expected.to_vec(),
                found,
            }),
            (Some(slice), Ok(found)) if found != expected => {
                Err(self.slice_error(name, part.entry, slice, Some(expected)))
            }
            (_, Err(slice)) => Err(self.slice_error(name, part.entry, slice, Some(expected))),
            _ => Ok(()),
        }
    }

    fn slice_error(&self, name: &str, entry: &Entry, slice: WeightSlice, expected: Option<&[usize]>) -> WeightError {
        WeightError::Slice(Box::new(SliceMismatch {
            name: name.to_string(),
            path: self.path_of(entry).to_path_buf(),
            stored: entry.shape.clone(),
            slice,
            expected: expected.map(<[usize]>::to_vec),
        }))
    }

    fn path_of(&self, entry: &Entry) -> &Path {
        self.files.get(entry.file).map_or(Path::new("<unknown file>"), |f| f.path.as_path())
    }

    fn searched(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.path.clone()).collect()
    }
}
