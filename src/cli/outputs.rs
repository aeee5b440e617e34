//! Guarding what a command writes. Every output path is checked before any work: it may not
//! be a file the command reads (compared by canonical path and by device and inode, so a
//! symlink or a hard link is caught), and its folder must exist and be writable. The error
//! names both paths. A file is written whole or not at all (`write_atomically`), and a dump
//! folder is built beside its target and renamed into place ([`dump::Dump`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use smelt::runtime::files;
use smelt::runtime::weights::{INDEX_FILE, SINGLE_FILE};

mod dump;
pub use dump::Dump;

/// The files of a model directory smelt may read, besides the shards an index names.
const MODEL_FILES: [&str; 7] = [
    "config.json",
    "generation_config.json",
    SINGLE_FILE,
    INDEX_FILE,
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
];

/// The files a command reads, each with what it is (for the error).
#[derive(Default)]
pub struct Reads {
    files: Vec<(PathBuf, String)>,
}

impl Reads {
    pub fn new() -> Reads {
        Reads::default()
    }

    /// A file the command reads, named in errors as `what`.
    pub fn file(mut self, path: &Path, what: &str) -> Reads {
        self.files.push((path.to_path_buf(), what.to_string()));
        self
    }

    /// [`Reads::file`] for an optional path.
    pub fn maybe_file(self, path: Option<&Path>, what: &str) -> Reads {
        match path {
            Some(p) => self.file(p, what),
            None => self,
        }
    }

    /// Every file of model directory `dir` that smelt may read, the index's shards included
    /// (an index it cannot parse names none; loading reports it).
    pub fn model_dir(mut self, dir: &Path) -> Reads {
        for name in MODEL_FILES {
            self.files.push((dir.join(name), format!("a file of model directory {}", dir.display())));
        }
        let index = dir.join(INDEX_FILE);
        let shards = files::read_metadata(&index).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        if let Some(map) = shards.as_ref().and_then(|v| v["weight_map"].as_object()) {
            for shard in map.values().filter_map(|s| s.as_str()) {
                self.files.push((dir.join(shard), format!("a shard named by {}", index.display())));
            }
        }
        self
    }

    /// The read file `path` is, or would be once written, if any: same canonical path, or
    /// same device and inode. A model directory's files count even when absent (writing
    /// `tokenizer.json` there would make the next run read it).
    fn same_as(&self, path: &Path) -> Option<&(PathBuf, String)> {
        let target = resolved(path)?;
        let id = file_id(path);
        self.files
            .iter()
            .find(|(read, _)| resolved(read).is_some_and(|c| c == target) || (id.is_some() && file_id(read) == id))
    }

    /// A file this command reads that lies in folder `folder` (at any depth), if any.
    fn inside(&self, folder: &Path) -> Option<&(PathBuf, String)> {
        let folder = folder.canonicalize().ok()?;
        self.files.iter().find(|(read, _)| resolved(read).is_some_and(|r| r.starts_with(&folder)))
    }

    /// Checks output file `path` (given as `flag`) before any work: not a file this command
    /// reads, not a directory, in an existing writable folder.
    pub fn check_output(&self, flag: &str, path: &Path) -> Result<()> {
        if let Some((read, what)) = self.same_as(path) {
            bail!(
                "{flag} {}{}, which this command reads ({what}): refusing to overwrite it; choose another path",
                path.display(),
                same_file_as(path, read)
            );
        }
        if path.is_dir() || path.as_os_str().to_string_lossy().ends_with(std::path::MAIN_SEPARATOR) {
            bail!("{flag} {} is a directory, expected a file path", path.display());
        }
        if files::exists(path) && !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
            bail!("{flag} {} exists and is not a regular file: refusing to replace it", path.display());
        }
        check_writable_folder(flag, path, &parent_of(path))
    }
}

/// Where `path` is or would be: its canonical path, or, for a file not there yet, its
/// folder's canonical path joined with its name.
fn resolved(path: &Path) -> Option<PathBuf> {
    match path.canonicalize() {
        Ok(c) => Some(c),
        Err(_) => Some(parent_of(path).canonicalize().ok()?.join(path.file_name()?)),
    }
}

/// " is the file <read>" when the two spellings differ, "" when they are the same.
fn same_file_as(path: &Path, read: &Path) -> String {
    if path == read {
        String::new()
    } else {
        format!(" is the file {}", read.display())
    }
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(unix)]
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(_: &Path) -> Option<(u64, u64)> {
    None
}

/// Creates a temporary file or folder (`make`) beside `path`, under a name no other file has:
/// `.<name>.<tag>-` and random letters. With the permissions a plain create would give (`mode`
/// less the umask), since what is staged becomes the user's file or folder.
fn beside<T>(
    path: &Path,
    tag: &str,
    mode: u32,
    make: impl FnOnce(&tempfile::Builder, &Path) -> std::io::Result<T>,
) -> Result<T> {
    let name = path.file_name().with_context(|| format!("{} is not a file path", path.display()))?;
    let prefix = format!(".{}.{tag}-", name.to_string_lossy());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(mode));
    #[cfg(not(unix))]
    let _ = mode;
    let parent = parent_of(path);
    make(&builder, &parent).with_context(|| format!("cannot write in folder {}", parent.display()))
}

/// A new folder beside `path` (see [`beside`]), kept: the caller removes it.
fn folder_beside(path: &Path, tag: &str) -> Result<PathBuf> {
    beside(path, tag, 0o777, |b, parent| b.tempdir_in(parent).map(tempfile::TempDir::keep))
}

/// `folder` exists, is a directory, and a file can be created in it (tried, then removed).
fn check_writable_folder(flag: &str, path: &Path, folder: &Path) -> Result<()> {
    if !folder.is_dir() {
        bail!("{flag} {}: folder {} does not exist", path.display(), folder.display());
    }
    // Created new and removed when dropped.
    match tempfile::Builder::new().prefix(".smelt-write-test-").tempfile_in(folder) {
        Ok(_) => Ok(()),
        Err(e) => bail!("{flag} {}: cannot write in folder {}: {e}", path.display(), folder.display()),
    }
}

/// Writes `bytes` to `path` whole or not at all: to a new temporary file beside it (never one
/// that exists), then renamed over it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if path.is_dir() || path.as_os_str().to_string_lossy().ends_with(std::path::MAIN_SEPARATOR) {
        bail!("{} is a directory, expected a file path", path.display());
    }
    // Removed when dropped unless persisted: never left behind.
    let mut tmp = beside(path, "partial", 0o666, |b, parent| b.tempfile_in(parent))
        .with_context(|| format!("writing {}", path.display()))?;
    let shown = tmp.path().display().to_string();
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {} (as {shown})", path.display()))?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("renaming {shown} to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_that_is_a_read_file_is_refused_by_any_name() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        let reads = Reads::new().model_dir(&model);
        let e = reads.check_output("--out", &model.join("config.json")).unwrap_err().to_string();
        assert!(e.contains("--out") && e.contains("config.json") && e.contains("reads"), "{e}");
        let dotted = model.join("..").join("m").join("config.json");
        assert!(reads.check_output("--out", &dotted).is_err());
        #[cfg(unix)]
        {
            let link = dir.path().join("link.json");
            std::os::unix::fs::symlink(model.join("config.json"), &link).unwrap();
            assert!(reads.check_output("--out", &link).is_err(), "a symlink to a read file");
            let hard = dir.path().join("hard.json");
            std::fs::hard_link(model.join("config.json"), &hard).unwrap();
            assert!(reads.check_output("--out", &hard).is_err(), "a hard link to a read file");
        }
        // Files smelt would read there next time count even before they exist.
        for absent in ["tokenizer.json", "model.safetensors", "generation_config.json"] {
            let e = reads.check_output("--ids-out", &model.join(absent)).unwrap_err().to_string();
            assert!(e.contains(absent) && e.contains("reads"), "{e}");
        }
        reads.check_output("--out", &model.join("logits.safetensors")).unwrap();
        let e = reads.check_output("--out", &dir.path().join("no/such/x")).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 3, "the write test leaves nothing: {left:?}");
    }

    #[test]
    fn write_atomically_never_touches_an_existing_partial_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.json");
        let theirs = dir.path().join(".ids.json.partial");
        std::fs::write(&theirs, "the user's").unwrap();
        write_atomically(&path, b"[1]").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[1]");
        assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "the user's");
    }
}
