//! Finding, mapping and parsing the safetensors files of a model directory.
//!
//! Headers are parsed once at open time, through a map of the file, into plain owned metadata
//! (name → dtype, shape, absolute byte range, which file); the map is dropped then. Tensor
//! data is read later with `pread` at ranges checked against the file's length.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use super::error::WeightError;

/// The single-file checkpoint name Hugging Face uses.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One safetensors file: its header was parsed through a map at open time; tensor data is
/// read with `pread`, not through a map. Bytes read through a map stay counted in this
/// process's resident memory for as long as the map lives (a whole checkpoint next to the
/// weights converted from it), while `pread` leaves them in the page cache alone.
pub struct TensorFile {
    pub path: PathBuf,
    file: File,
}

impl TensorFile {
    /// Fills `buf` from byte `offset` on; an error if the file ends first (truncated since
    /// it was opened).
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        #[cfg(test)]
        BYTES_READ.with(|n| n.set(n.get() + buf.len()));
        #[cfg(unix)]
        return std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset as u64);
        #[cfg(not(unix))]
        {
            // One reader at a time: a checkpoint is loaded tensor after tensor.
            use std::io::{Read, Seek, SeekFrom};
            let mut file = &self.file;
            file.seek(SeekFrom::Start(offset as u64))?;
            file.read_exact(buf)
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Bytes this thread asked [`TensorFile::read_at`] for: a test reads its own (tests run
    /// on threads of their own).
    static BYTES_READ: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Bytes read from checkpoint data so far on this thread.
#[cfg(test)]
pub fn bytes_read() -> usize {
    BYTES_READ.with(std::cell::Cell::get)
}

/// Where one tensor lives: `file` indexes `Opened::files`, `start..end` is absolute in that file.
#[derive(Clone, Debug)]
pub struct Entry {
    pub file: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

/// Everything `Checkpoint::open` produces.
pub struct Opened {
    pub files: Vec<TensorFile>,
    pub entries: BTreeMap<String, Entry>,
}

/// Opens `dir/model.safetensors`, else `dir/model.safetensors.index.json` and its shards.
/// The single file wins when both exist, as in `transformers`.
pub fn open_dir(dir: &Path) -> Result<Opened, WeightError> {
    let single = dir.join(SINGLE_FILE);
    match map(&single) {
        Ok((file, mmap)) => {
            let parsed = parse(&single, &mmap)?;
            let entries = parsed.into_iter().map(|(n, e)| (n, e.in_file(0))).collect();
            let files = vec![TensorFile { path: single, file }];
            Ok(Opened { files, entries })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => open_index(dir),
        Err(e) => Err(WeightError::io(&single, e)),
    }
}

/// The part of the index we use; `metadata` (total size) and other keys are ignored.
#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

fn open_index(dir: &Path) -> Result<Opened, WeightError> {
    let index_path = dir.join(INDEX_FILE);
    let text = match crate::files::read_metadata(&index_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(WeightError::NoWeights { dir: dir.to_path_buf() }),
        Err(e) => return Err(WeightError::io(&index_path, e)),
    };
    let bad = |reason: String| WeightError::BadIndex { path: index_path.clone(), reason };
    let index: Index = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if index.weight_map.is_empty() {
        return Err(bad("its `weight_map` is empty: it names no tensor".to_string()));
    }

    // Map each distinct shard once, in sorted order so `files` is deterministic.
    let mut shard_ids: BTreeMap<String, usize> = BTreeMap::new();
    for (name, shard) in &index.weight_map {
        if !is_relative_file(shard) {
            return Err(bad(format!("shard {shard:?} of tensor {name} is not a file name inside the model directory")));
        }
        shard_ids.insert(shard.clone(), 0);
    }
    let mut files = Vec::with_capacity(shard_ids.len());
    let mut shard_tensors: Vec<HashMap<String, Entry>> = Vec::with_capacity(shard_ids.len());
    for (shard, id) in shard_ids.iter_mut() {
        let path = dir.join(shard);
        let (file, mmap) = match map(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(WeightError::ShardMissing { index: index_path, shard: path })
            }
            Err(e) => return Err(WeightError::io(&path, e)),
        };
        *id = files.len();
        shard_tensors.push(parse(&path, &mmap)?.into_iter().collect());
        files.push(TensorFile { path, file });
    }

    // The index is authoritative: tensors a shard holds but the index omits are not visible,
    // matching how `transformers` resolves names.
    let mut entries = BTreeMap::new();
    for (name, shard) in index.weight_map {
        let id = shard_ids.get(shard.as_str()).copied();
        let found = id.and_then(|id| Some(shard_tensors.get(id)?.get(&name)?.clone().in_file(id)));
        let Some(entry) = found else {
            return Err(WeightError::NotInShard { name, index: index_path, shard: dir.join(shard) });
        };
        entries.insert(name, entry);
    }
    Ok(Opened { files, entries })
}

impl Entry {
    fn in_file(mut self, file: usize) -> Entry {
        self.file = file;
        self
    }
}

/// Only plain relative paths (no `..`, no root; `./` is harmless) may name shards, so an index
/// cannot point the loader outside the model directory.
fn is_relative_file(name: &str) -> bool {
    let path = Path::new(name);
    path.components().any(|c| matches!(c, Component::Normal(_)))
        && path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

fn map(path: &Path) -> io::Result<(File, Mmap)> {
    let file = crate::files::open_regular(path)?;
    // SAFETY: the map is read-only and private to this process. Like every mmap-based loader
    // (safetensors' own docs included) we rely on the checkpoint not being modified or
    // truncated by another process while it is open; all reads are bounds-checked against the
    // length seen here, so malformed *contents* can never cause out-of-bounds access.
    let mmap = unsafe { Mmap::map(&file) }?;
    Ok((file, mmap))
}

/// Parses one file's header; every tensor's byte range is checked against the file length.
/// The header's JSON text and the length of the data after it, when the length prefix fits.
fn header_of(bytes: &[u8]) -> Option<(&[u8], u64)> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = usize::try_from(n).ok()?.checked_add(8)?;
    Some((bytes.get(8..end)?, (bytes.len() - end) as u64))
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<(String, Entry)>, WeightError> {
    // `read_metadata` rejects short files, oversized header lengths, non-JSON headers, and
    // headers whose offsets do not exactly cover the rest of the file (truncation).
    let (header_len, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| {
        let reason = header_of(bytes).and_then(|(h, data_len)| super::diagnose::diagnose(h, data_len));
        WeightError::malformed(path, reason.unwrap_or_else(|| e.to_string()))
    })?;
    let base = header_len.checked_add(8).ok_or_else(|| WeightError::malformed(path, "header length overflows"))?;
    let mut out = Vec::new();
    for (name, info) in metadata.tensors() {
        let (s, e) = info.data_offsets;
        let range = base.checked_add(s).zip(base.checked_add(e));
        let Some((start, end)) = range.filter(|&(a, b)| a <= b && b <= bytes.len()) else {
            return Err(WeightError::malformed(
                path,
                format!("tensor {name}: data offsets {s}..{e} lie outside the file"),
            ));
        };
        let entry = Entry { file: 0, dtype: info.dtype, shape: info.shape.clone(), start, end };
        out.push((name, entry));
    }
    Ok(out)
}
