//! Errors from opening, validating and loading a checkpoint.
//!
//! Users see these through `anyhow` when a model directory is wrong, so every message names the
//! file and/or tensor at fault: "which file, which tensor, what was expected" is what makes a bad
//! download or the wrong model size fixable without a debugger.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use smelt_ir::{DType, WeightSlice};

/// Why weights could not be opened, validated or loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    /// The directory holds neither a single-file checkpoint nor a sharded index.
    #[error(
        "no weights in {}: expected model.safetensors or model.safetensors.index.json",
        .dir.display()
    )]
    NoWeights { dir: PathBuf },

    /// A file exists (or should) but could not be opened, read or mapped.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The file is not a well-formed safetensors file: truncated, garbage, bad header, or tensor
    /// offsets outside the file. `reason` includes safetensors' own error text where it has one.
    #[error("{} is not a valid safetensors file: {reason}", .path.display())]
    Malformed { path: PathBuf, reason: String },

    /// `model.safetensors.index.json` is not valid JSON or lacks a usable `weight_map`.
    #[error("bad safetensors index {}: {reason}", .path.display())]
    BadIndex { path: PathBuf, reason: String },

    /// The index names a shard file that does not exist.
    #[error("index {} names shard {}, which does not exist", .index.display(), .shard.display())]
    ShardMissing { index: PathBuf, shard: PathBuf },

    /// The index maps a tensor to a shard that does not contain it.
    #[error(
        "index {} maps tensor {name} to {}, but that shard does not contain it",
        .index.display(), .shard.display()
    )]
    NotInShard { name: String, index: PathBuf, shard: PathBuf },

    /// Expected tensors are absent. All of them are listed at once, so a wrong model (or wrong
    /// size of the right model) shows up as one error instead of one per run.
    #[error(
        "{} expected tensor(s) missing: {} (searched {})",
        .missing.len(), list_names(.missing), list_paths(.searched)
    )]
    Missing { missing: Vec<String>, searched: Vec<PathBuf> },

    /// A tensor exists but with a different shape than the model config implies.
    #[error(
        "tensor {name} in {} has shape {found:?}, expected {expected:?}",
        .path.display()
    )]
    Shape { name: String, path: PathBuf, expected: Vec<usize>, found: Vec<usize> },

    /// A weight names a slice of a stored tensor that does not fit the stored shape, or gives
    /// another shape than the model expects (`expected`, when there is a spec to compare with).
    #[error("{0}")]
    Slice(Box<SliceMismatch>),

    /// A tensor is stored in a dtype we do not convert (only BF16, F16 and F32 are weights).
    #[error(
        "tensor {name} in {} is stored as {found}; only BF16, F16 and F32 weights are supported",
        .path.display()
    )]
    DType { name: String, path: PathBuf, found: String },

    /// `load` was asked for a non-float host dtype; weights are always floats.
    #[error("cannot load tensor {name} from {} as {requested}: weights load as f32, f16 or bf16", .path.display())]
    Target { name: String, path: PathBuf, requested: DType },

    /// NaN or infinite values stored in the checkpoint.
    #[error(
        "tensor {name} in {}: {count} values are NaN or infinite (the first at flat index {first}); the checkpoint is damaged",
        .path.display()
    )]
    NonFinite { name: String, path: PathBuf, count: usize, first: usize },

    /// Values that the 16-bit execution dtype cannot hold (beyond ±65504 for f16).
    #[error(
        "tensor {name} in {}: {count} values do not fit {dtype} (they round to infinity); load in {}",
        .path.display(),
        if *.dtype == DType::F16 { "bf16 or f32" } else { "f32" }
    )]
    Range { name: String, path: PathBuf, count: usize, dtype: DType },
}

impl WeightError {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: &Path, source: io::Error) -> WeightError {
        WeightError::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn malformed(path: &Path, reason: impl Into<String>) -> WeightError {
        WeightError::Malformed { path: path.to_path_buf(), reason: reason.into() }
    }
}

/// How many missing names the message spells out; the full list stays in the field.
const SHOWN: usize = 16;

fn list_names(names: &[String]) -> String {
    let mut s = names.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        let _ = write!(s, ", ... and {} more", names.len() - SHOWN);
    }
    s
}

/// [`WeightError::Slice`]'s facts (boxed: every error type that carries a `WeightError` stays
/// small).
#[derive(Debug, thiserror::Error)]
#[error(
    "tensor {name} in {}: slice {slice} of a tensor stored with shape {stored:?} {}",
    .path.display(), slice_problem(.stored, .slice, .expected.as_deref())
)]
pub struct SliceMismatch {
    pub name: String,
    pub path: PathBuf,
    pub stored: Vec<usize>,
    pub slice: WeightSlice,
    pub expected: Option<Vec<usize>>,
}

/// What is wrong with taking `slice` of a tensor of shape `stored`, for [`WeightError::Slice`].
fn slice_problem(stored: &[usize], slice: &WeightSlice, expected: Option<&[usize]>) -> String {
    match (slice.shape_in(stored), expected) {
        (None, _) => "lies outside it".to_string(),
        (Some(found), Some(expected)) => format!("has shape {found:?}, expected {expected:?}"),
        (Some(found), None) => format!("has shape {found:?}"),
    }
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}
