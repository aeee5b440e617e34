//! Opening the files a user points smelt at. Only regular files are read: opening a FIFO
//! blocks until a writer appears, and a device such as `/dev/zero` never ends, so either would
//! hang a command that expected `config.json`. Whole-file reads are bounded before anything is
//! allocated. Errors are `io::Error`s that the callers wrap with the path.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::path::Path;

/// The largest JSON or text metadata file read whole (config, index, tokenizer, template).
/// Qwen3's tokenizer.json, the largest, is 11 MB.
pub const MAX_METADATA_BYTES: u64 = 256 << 20;

/// What a non-regular file is, for the error.
fn kind_of(meta: &Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

fn not_regular(meta: &Metadata) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("is {}, expected a regular file", kind_of(meta)))
}

/// Opens `path` for reading if it is a regular file (symlinks followed); anything else is an
/// `InvalidInput` error saying what it is, returned before any blocking `open`.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let file = File::open(path)?;
    // The path may have been replaced between the two calls: check what was opened.
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    Ok(file)
}

/// Whether `path` exists as anything (a dangling symlink counts): a file smelt may read must
/// then be a readable regular file, not silently skipped.
pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Reads a regular file of at most `limit` bytes as UTF-8.
pub fn read_text(path: &Path, limit: u64) -> io::Result<String> {
    let mut file = open_regular(path)?;
    let len = file.metadata()?.len();
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("is {len} bytes, more than the {limit} bytes smelt reads from such a file"),
        ));
    }
    let mut text = String::with_capacity(len as usize);
    // `take` bounds a file that grows while it is read.
    file.by_ref().take(limit + 1).read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("grew past {limit} bytes while being read")));
    }
    Ok(text)
}

/// This machine's memory in bytes (`MemTotal` of `/proc/meminfo`), where the OS says.
pub fn host_memory_bytes() -> Option<u64> {
    let text = read_text(Path::new("/proc/meminfo"), 1 << 20).ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.trim_start_matches("MemTotal:").trim().trim_end_matches("kB").trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// [`read_text`] bounded by [`MAX_METADATA_BYTES`].
pub fn read_metadata(path: &Path) -> io::Result<String> {
    read_text(path, MAX_METADATA_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_and_others_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(&file, "{}").unwrap();
        assert_eq!(read_metadata(&file).unwrap(), "{}");
        let e = read_metadata(dir.path()).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        let e = read_metadata(Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("a device"), "{e}");
        let e = read_text(&file, 1).unwrap_err();
        assert!(e.to_string().contains("more than the 1 bytes"), "{e}");
        assert_eq!(read_metadata(&dir.path().join("absent")).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn host_memory_is_read_from_proc_meminfo() {
        let bytes = host_memory_bytes().expect("Linux has /proc/meminfo");
        assert!(bytes > 64 << 20 && bytes < 1 << 50, "{bytes} bytes");
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("model.safetensors");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("running mkfifo (coreutils)");
        assert!(made.success(), "mkfifo {}", fifo.display());
        let e = open_regular(&fifo).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
    }
}
