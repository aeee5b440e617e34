//! Guarding what a command writes. Every output path is checked before any work: it may not
//! be a file the command reads (compared by canonical path and by device and inode, so a
//! symlink or a hard link is caught), and its folder must exist and be writable. The error
//! names both paths. A file is written whole or not at all (`write_atomically`), and a dump
//! folder is built beside its target and renamed into place (`Dump`).

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};
use smelt::runtime::files;
use smelt::runtime::weights::{INDEX_FILE, SINGLE_FILE};

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

/// A name beside `path` no other process of smelt uses: `.<name>.<tag>-<pid>-<n>`.
fn sibling(path: &Path, tag: &str) -> Result<PathBuf> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = path.file_name().with_context(|| format!("{} is not a file path", path.display()))?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(path.with_file_name(format!(".{}.{tag}-{}-{n}", name.to_string_lossy(), std::process::id())))
}

/// `folder` exists, is a directory, and a file can be created in it (tried, then removed).
fn check_writable_folder(flag: &str, path: &Path, folder: &Path) -> Result<()> {
    if !folder.is_dir() {
        bail!("{flag} {}: folder {} does not exist", path.display(), folder.display());
    }
    let probe = sibling(&folder.join("probe"), "smelt-write-test")?;
    match OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => bail!("{flag} {}: cannot write in folder {}: {e}", path.display(), folder.display()),
    }
}

/// Writes `bytes` to `path` whole or not at all: to a new temporary file beside it (never one
/// that exists), then renamed over it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if path.is_dir() || path.as_os_str().to_string_lossy().ends_with(std::path::MAIN_SEPARATOR) {
        bail!("{} is a directory, expected a file path", path.display());
    }
    let tmp = sibling(path, "partial")?;
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()));
    let result = written.with_context(|| format!("writing {} (as {})", path.display(), tmp.display())).and_then(|()| {
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    });
    if result.is_err() {
        // Ours alone (created new above): never leave it behind.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The file that marks a folder as a smelt dump and lists what smelt wrote in it.
pub const DUMP_MARKER: &str = ".smelt-dump.json";

/// A dump folder under construction: files go into a fresh folder beside the target, which
/// [`Dump::finish`] renames into place. Dropped unfinished, it removes what it made.
pub struct Dump {
    target: PathBuf,
    staging: PathBuf,
    /// Paths written, relative to the folder.
    written: Vec<String>,
    /// Ancestors of the target this dump created, deepest last.
    created: Vec<PathBuf>,
    finished: bool,
}

impl Dump {
    /// Starts a dump into `target` (given as `flag`). `target` must be absent, an empty folder,
    /// or an earlier smelt dump holding nothing smelt did not write, and none of `reads`.
    pub fn begin(flag: &str, target: &Path, reads: &Reads) -> Result<Dump> {
        if let Some((read, what)) = reads.same_as(target) {
            bail!("{flag} {}{}, which this command reads ({what})", target.display(), same_file_as(target, read));
        }
        // An existing folder by its full name, so `--dump .` has a name to stage beside.
        let target = match files::exists(target) {
            true => {
                replaceable(flag, target)?;
                target.canonicalize().with_context(|| format!("{flag} {}", target.display()))?
            }
            false => target.to_path_buf(),
        };
        let target = target.as_path();
        let parent = parent_of(target);
        let mut created = Vec::new();
        let mut missing: Vec<PathBuf> =
            parent.ancestors().take_while(|p| !files::exists(p)).map(Path::to_path_buf).collect();
        missing.reverse();
        for dir in missing.into_iter().filter(|d| !d.as_os_str().is_empty()) {
            if let Err(e) = std::fs::create_dir(&dir) {
                undo_created(&created);
                bail!("{flag} {}: creating folder {}: {e}", target.display(), dir.display());
            }
            created.push(dir);
        }
        let staging = match sibling(target, "smelt-partial") {
            Ok(s) => s,
            Err(e) => {
                undo_created(&created);
                return Err(e);
            }
        };
        if let Err(e) = std::fs::create_dir(&staging) {
            undo_created(&created);
            bail!("{flag} {}: cannot create a folder in {}: {e}", target.display(), parent.display());
        }
        Ok(Dump { target: target.to_path_buf(), staging, written: Vec::new(), created, finished: false })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Writes `bytes` as `relative` (`kernels/x.cu`), making its folders.
    pub fn write(&mut self, relative: &str, bytes: &[u8]) -> Result<()> {
        let path = self.staging.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, bytes)
            .with_context(|| format!("writing {} (for {})", path.display(), self.target.join(relative).display()))?;
        self.written.push(relative.to_string());
        Ok(())
    }

    /// Writes the marker and moves the dump into place: the staged folder is renamed to the
    /// target, or, where the target folder exists (empty, or an earlier dump), what it holds
    /// is moved aside and the staged entries are moved in, so the folder itself stays (it may
    /// be a shell's working directory).
    pub fn finish(mut self) -> Result<()> {
        let manifest = serde_json::json!({
            "written_by": format!("smelt {}", env!("CARGO_PKG_VERSION")),
            "files": self.written,
        });
        let text = serde_json::to_string_pretty(&manifest).context("serializing the dump marker")?;
        std::fs::write(self.staging.join(DUMP_MARKER), text)
            .with_context(|| format!("writing {}", self.staging.join(DUMP_MARKER).display()))?;
        let target = self.target.clone();
        if files::exists(&target) {
            // Checked again: something may have been added since `begin`.
            replaceable("--dump", &target)?;
            let old = sibling(&target, "smelt-old")?;
            std::fs::create_dir(&old).with_context(|| format!("creating {}", old.display()))?;
            let result = move_entries(&target, &old).and_then(|()| {
                move_entries(&self.staging, &target).inspect_err(|_| {
                    // Back as it was: ours out, the earlier dump in.
                    let _ = move_entries(&target, &self.staging);
                    let _ = move_entries(&old, &target);
                })
            });
            if let Err(e) = result {
                let _ = std::fs::remove_dir(&old);
                return Err(e.context(format!("moving the dump into {}", target.display())));
            }
            // Only smelt's files (checked above), moved aside; and the now empty staging folder.
            std::fs::remove_dir_all(&old).with_context(|| format!("removing the earlier dump {}", old.display()))?;
            std::fs::remove_dir(&self.staging).with_context(|| format!("removing {}", self.staging.display()))?;
        } else {
            std::fs::rename(&self.staging, &target)
                .with_context(|| format!("moving the dump into {}", target.display()))?;
        }
        self.finished = true;
        Ok(())
    }
}

impl Drop for Dump {
    fn drop(&mut self) {
        if !self.finished {
            // Made by `begin`, holding only what this dump wrote.
            let _ = std::fs::remove_dir_all(&self.staging);
            undo_created(&self.created);
        }
    }
}

/// Renames every entry of folder `from` into folder `to`; on a failure, moves back those moved.
fn move_entries(from: &Path, to: &Path) -> Result<()> {
    let entries: Vec<_> = std::fs::read_dir(from)
        .with_context(|| format!("reading {}", from.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", from.display()))?;
    for (i, name) in entries.iter().enumerate() {
        if let Err(e) = std::fs::rename(from.join(name), to.join(name)) {
            for done in &entries[..i] {
                let _ = std::fs::rename(to.join(done), from.join(done));
            }
            bail!("moving {} into {}: {e}", from.join(name).display(), to.display());
        }
    }
    Ok(())
}

/// Removes folders this run created, deepest first, if they are still empty.
fn undo_created(created: &[PathBuf]) {
    for dir in created.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// An existing `--dump` target may be replaced only if it is an empty folder or an earlier
/// smelt dump that holds nothing but the files its marker lists.
fn replaceable(flag: &str, target: &Path) -> Result<()> {
    let shown = target.display();
    let meta = std::fs::symlink_metadata(target).with_context(|| format!("{flag} {shown}"))?;
    if !meta.is_dir() {
        bail!("{flag} {shown} exists and is not a folder");
    }
    let mut entries = std::fs::read_dir(target).with_context(|| format!("{flag} {shown}: reading the folder"))?;
    if entries.next().is_none() {
        return Ok(());
    }
    let marker = target.join(DUMP_MARKER);
    let listed: Vec<String> = match files::read_metadata(&marker) {
        Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => v["files"].as_array().into_iter().flatten().filter_map(|f| f.as_str().map(String::from)).collect(),
            Err(e) => bail!("{flag} {shown}: {} is not a smelt dump marker: {e}", marker.display()),
        },
        Err(_) => bail!(
            "{flag} {shown} is not empty and is not an earlier smelt dump (it has no {DUMP_MARKER}): \
             refusing to replace it; choose a new or empty folder"
        ),
    };
    let mut stack = vec![(target.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{flag} {shown}: reading {}", dir.display()))? {
            let entry = entry.with_context(|| format!("{flag} {shown}: reading {}", dir.display()))?;
            let relative = format!("{prefix}{}", entry.file_name().to_string_lossy());
            let kind = entry.file_type().with_context(|| format!("{flag} {shown}: {relative}"))?;
            if kind.is_dir() && listed.iter().any(|f| f.starts_with(&format!("{relative}/"))) {
                stack.push((entry.path(), format!("{relative}/")));
            } else if !(kind.is_file() && (relative == DUMP_MARKER || listed.contains(&relative))) {
                bail!(
                    "{flag} {shown} holds {}, which smelt did not write there: refusing to replace the folder; \
                     move it or choose another folder",
                    entry.path().display()
                );
            }
        }
    }
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
    fn a_dump_lands_whole_replaces_only_a_smelt_dump_and_leaves_nothing_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/b/dump");
        let names = |p: &Path| -> Vec<String> {
            let mut v: Vec<String> =
                std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            v.sort();
            v
        };
        // Dropped unfinished: not even the folders it made are left.
        let mut dump = Dump::begin("--dump", &target, &Reads::new()).unwrap();
        dump.write("kernels/k.cu", b"x").unwrap();
        drop(dump);
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
        // Finished: in place with its marker.
        let mut dump = Dump::begin("--dump", &target, &Reads::new()).unwrap();
        dump.write("plan.json", b"{}").unwrap();
        dump.write("kernels/k.cu", b"x").unwrap();
        dump.finish().unwrap();
        assert_eq!(names(&target), [DUMP_MARKER, "kernels", "plan.json"]);
        // An earlier dump is replaced in the same folder; nothing is left beside it.
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let folder = inode(&target);
        let mut dump = Dump::begin("--dump", &target, &Reads::new()).unwrap();
        dump.write("decode.txt", b"g").unwrap();
        dump.finish().unwrap();
        assert_eq!(names(&target), [DUMP_MARKER, "decode.txt"]);
        assert_eq!(names(target.parent().unwrap()), ["dump"]);
        assert_eq!(inode(&target), folder, "the folder itself stays");
        // A file smelt did not write makes the folder off limits.
        std::fs::write(target.join("notes.md"), "mine").unwrap();
        let e = Dump::begin("--dump", &target, &Reads::new()).err().unwrap().to_string();
        assert!(e.contains("notes.md") && e.contains("did not write"), "{e}");
        // So does a folder with no marker.
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("Cargo.toml"), "").unwrap();
        let e = Dump::begin("--dump", &other, &Reads::new()).err().unwrap().to_string();
        assert!(e.contains("not an earlier smelt dump"), "{e}");
        assert_eq!(names(&other), ["Cargo.toml"]);
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
