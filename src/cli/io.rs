//! Output files are written whole or not at all: to a temporary name beside the target,
//! then renamed, so an error never leaves a half-written file.

use std::path::Path;

use anyhow::{bail, Context, Result};

pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    // `Path::file_name` ignores a trailing `/`, so `out/` would otherwise be written beside
    // its parent as `.out.partial` and then fail to rename.
    if path.is_dir() || path.as_os_str().to_string_lossy().ends_with(std::path::MAIN_SEPARATOR) {
        bail!("{} is a directory, expected a file path", path.display());
    }
    let name = path.file_name().with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    let result = std::fs::write(&tmp, bytes)
        .with_context(|| format!("writing {} (as {})", path.display(), tmp.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
        });
    if result.is_err() {
        // Never leave the partial file behind (a failed write may have created it).
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
