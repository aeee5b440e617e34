//! `--dump` folders: built beside the target and moved into place whole; an existing target is
//! replaced only when it is empty or an earlier smelt dump holding nothing smelt did not write.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use smelt::runtime::files;

use super::{folder_beside, parent_of, same_file_as, Reads};

/// The file that marks a folder as a smelt dump and lists what smelt wrote in it.
pub const DUMP_MARKER: &str = ".smelt-dump.json";

/// A dump folder under construction: files go into a fresh folder beside the target, which
/// [`Dump::finish`] renames into place. Dropped unfinished, it removes what it made.
pub struct Dump {
    /// The flag that named the target, for errors.
    flag: String,
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
    /// or an earlier smelt dump holding nothing smelt did not write, and neither one of `reads`
    /// nor a folder holding one (replacing it would remove a file this command reads).
    pub fn begin(flag: &str, target: &Path, reads: &Reads) -> Result<Dump> {
        if let Some((read, what)) = reads.same_as(target) {
            bail!("{flag} {}{}, which this command reads ({what})", target.display(), same_file_as(target, read));
        }
        if let Some((read, what)) = reads.inside(target) {
            bail!(
                "{flag} {} holds {}, which this command reads ({what}): refusing to replace it; \
                 choose another folder",
                target.display(),
                read.display()
            );
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
        let staging = match folder_beside(target, "smelt-partial") {
            Ok(s) => s,
            Err(e) => {
                undo_created(&created);
                bail!("{flag} {}: {e:#}", target.display());
            }
        };
        Ok(Dump {
            flag: flag.to_string(),
            target: target.to_path_buf(),
            staging,
            written: Vec::new(),
            created,
            finished: false,
        })
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

    /// Writes `relative` by streaming into it with `fill` (for a file too large to hold in
    /// memory), making its folders; the file is synced to disk before this returns.
    pub fn write_with(&mut self, relative: &str, fill: impl FnOnce(&mut std::fs::File) -> Result<()>) -> Result<()> {
        let path = self.staging.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let shown = format!("writing {} (for {})", path.display(), self.target.join(relative).display());
        let mut file = std::fs::File::create(&path).with_context(|| shown.clone())?;
        fill(&mut file).and_then(|()| file.sync_all().map_err(anyhow::Error::from)).with_context(|| shown)?;
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
            replaceable(&self.flag, &target)?;
            let old = folder_beside(&target, "smelt-old")?;
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
}
