//! The on-disk cache of compiled modules, keyed by (source, arch, NVRTC version): a second
//! compile of the same kernel is a file read. Entries are written whole (temporary file, then
//! rename), so a crash never leaves a half-written module that a later run would load.

use std::path::{Path, PathBuf};

use crate::nvrtc::{Arch, Nvrtc, NvrtcError};

#[derive(Clone, Debug)]
pub struct ModuleCache {
    dir: PathBuf,
}

/// FNV-1a over 128 bits: stable across Rust versions and machines (std's hasher is not), and
/// wide enough that distinct kernels do not collide in practice.
fn fnv1a_128(parts: &[&[u8]]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    let mut h = OFFSET;
    for part in parts {
        for &b in *part {
            h ^= b as u128;
            h = h.wrapping_mul(PRIME);
        }
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(PRIME);
    }
    h
}

impl ModuleCache {
    pub fn at(dir: impl Into<PathBuf>) -> ModuleCache {
        ModuleCache { dir: dir.into() }
    }

    /// `$SMELT_CACHE_DIR`, else `$XDG_CACHE_HOME/smelt`, else `~/.cache/smelt`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("SMELT_CACHE_DIR") {
            return Some(PathBuf::from(d));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
        Some(base.join("smelt"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cache key of `source` compiled for `arch` by NVRTC `version`.
    pub fn key(source: &str, arch: Arch, version: (i32, i32)) -> String {
        let version = format!("{}.{}", version.0, version.1);
        format!("{:032x}", fnv1a_128(&[source.as_bytes(), arch.name().as_bytes(), version.as_bytes()]))
    }

    /// PTX for `source`, from the cache or compiled (and then stored); `true` on a hit. A cache
    /// that cannot be read or written costs a compile, never a failure.
    pub fn compile(&self, nvrtc: &Nvrtc, kernel: &str, source: &str, arch: Arch) -> Result<(String, bool), NvrtcError> {
        let path = self.dir.join(format!("{}-{}.ptx", ModuleCache::key(source, arch, nvrtc.version()), arch.name()));
        if let Ok(ptx) = std::fs::read_to_string(&path) {
            if ptx.contains(&format!(".entry {kernel}")) {
                return Ok((ptx, true));
            }
        }
        let ptx = nvrtc.compile(kernel, source, arch)?;
        let tmp = path.with_extension(format!("ptx.{}.partial", std::process::id()));
        let stored = std::fs::create_dir_all(&self.dir).is_ok()
            && std::fs::write(&tmp, &ptx).is_ok()
            && std::fs::rename(&tmp, &path).is_ok();
        if !stored {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok((ptx, false))
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
        // FNV-1a 128 of nothing but the separators is fixed forever: the key is stable.
        assert_eq!(format!("{:032x}", fnv1a_128(&[])), "6c62272e07bb014262b821756295c58d");
    }
}
