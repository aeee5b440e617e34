//! The on-disk cache of compiled modules, keyed by (source, arch, NVRTC version): a second
//! compile of the same kernel is a file read. Entries are written whole (temporary file, then
//! rename), so a crash never leaves a half-written module that a later run would load.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::nvrtc::{Arch, Nvrtc, NvrtcError};

#[derive(Clone, Debug)]
pub struct ModuleCache {
    dir: PathBuf,
}

/// SHA-256 of the parts, each length-prefixed so that ("ab", "c") and ("a", "bc") differ: stable
/// across Rust versions and machines (std's hasher is not), and collision-free in practice.
fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// Lowercase hex, two digits a byte.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ModuleCache {
    pub fn at(dir: impl Into<PathBuf>) -> ModuleCache {
        ModuleCache { dir: dir.into() }
    }

    /// `$SMELT_CACHE_DIR`, else the platform's cache folder + `smelt` (`$XDG_CACHE_HOME/smelt`
    /// or `~/.cache/smelt` on Linux).
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("SMELT_CACHE_DIR") {
            return Some(PathBuf::from(d));
        }
        Some(dirs::cache_dir()?.join("smelt"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cache key of `source` compiled for `arch` by NVRTC `version`.
    pub fn key(source: &str, arch: Arch, version: (i32, i32)) -> String {
        let version = format!("{}.{}", version.0, version.1);
        let d = digest(&[source.as_bytes(), arch.name().as_bytes(), version.as_bytes()]);
        // 128 of the 256 bits: a short file name, and still no collision in practice.
        hex(&d[..16])
    }

    /// PTX for `source`, from the cache or compiled (and then stored); `true` on a hit. A cache
    /// that cannot be read or written costs a compile, never a failure.
    pub fn compile(&self, nvrtc: &Nvrtc, kernel: &str, source: &str, arch: Arch) -> Result<(String, bool), NvrtcError> {
        let path = self.dir.join(format!("{}-{}.ptx", ModuleCache::key(source, arch, nvrtc.version()), arch.name()));
        if let Ok(ptx) = std::fs::read_to_string(&path) {
            if ptx.contains(&format!(".entry {kernel}")) {
                tracing::debug!(kernel, path = %path.display(), "module cache hit");
                return Ok((ptx, true));
            }
        }
        let ptx = nvrtc.compile(kernel, source, arch)?;
        if let Err(e) = self.store(&path, &ptx) {
            tracing::debug!(kernel, path = %path.display(), "module cache not written: {e}");
        }
        Ok((ptx, false))
    }

    /// Writes `ptx` as `path` whole: a temporary file in the cache folder (removed if anything
    /// fails), then renamed over `path`.
    fn store(&self, path: &Path, ptx: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut tmp = tempfile::Builder::new().prefix(".partial-").tempfile_in(&self.dir)?;
        tmp.write_all(ptx.as_bytes())?;
        tmp.persist(path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_separate_every_part() {
        let k = ModuleCache::key("extern \"C\" __global__ void f() {}", Arch::Sm90, (13, 0));
        assert_eq!(k.len(), 32);
        assert_eq!(k, ModuleCache::key("extern \"C\" __global__ void f() {}", Arch::Sm90, (13, 0)));
        assert_ne!(k, ModuleCache::key("extern \"C\" __global__ void f() {}", Arch::Sm80, (13, 0)));
        assert_ne!(k, ModuleCache::key("extern \"C\" __global__ void f() {}", Arch::Sm90, (13, 1)));
        assert_ne!(k, ModuleCache::key("extern \"C\" __global__ void g() {}", Arch::Sm90, (13, 0)));
        // SHA-256 of nothing is fixed forever (FIPS 180-2 test vector): the key is stable.
        assert_eq!(hex(&digest(&[])), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        // And a key, as Python's hashlib computes it: sha256 over (le u64 length, bytes) of
        // each part, first 16 bytes in hex.
        assert_eq!(k, "db617b14bd7f888a91eab16ea2fe2ca5");
    }
}
