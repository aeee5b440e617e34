//! The emulator's fixed part (the shim and the standard headers it includes) precompiled once
//! per compiler and checker, so that a build parses only its kernels. Parsing the shim's C++
//! standard headers is about half of a small program's compile (1.5 of 2.9 s for a 10-kernel
//! decode program); the header is the same in every build.
//!
//! Only GCC, whose precompiled header is found beside the header a file includes first
//! (`smelt_emu_pre.h.gch`); with another compiler, or when anything here fails, the shim is
//! written into the program as before: a missing cache costs time, never a failure. The
//! header and its `.gch` live in the cache folder (`$SMELT_CACHE_DIR`, else the platform's
//! cache folder + `smelt`), under `emulate/<key>`, the key a hash of the compiler's version,
//! the flags and the header's text; a folder appears whole (built beside, then renamed) or not
//! at all, so processes that build at once never read half a file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};

/// The header's file name; its `.gch` is beside it.
const HEADER: &str = "smelt_emu_pre.h";

/// The folder holding the precompiled `header` for `cxx` with `flags`, found or built on a
/// process's first ask and remembered after (so the compiler is asked its version once); `None`
/// where it cannot be had (not GCC, no cache folder, the build failed). Threads of one process
/// wait for one build.
pub(crate) fn precompiled(cxx: &str, flags: &[&str], header: &str) -> Option<PathBuf> {
    static BUILT: OnceLock<Mutex<HashMap<String, Option<PathBuf>>>> = OnceLock::new();
    if std::env::var_os("SMELT_EMU_NO_PCH").is_some() {
        return None;
    }
    let flags_text = flags.join(" ");
    let asked = key(&[cxx, &flags_text, header]);
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    let found = || {
        let version = gcc_version(cxx)?;
        build(cxx, flags, header, &key(&[cxx, &version, &flags_text, header]))
    };
    built.entry(asked).or_insert_with(found).clone()
}

/// `c++ --version`'s first line when the compiler is GCC.
fn gcc_version(cxx: &str) -> Option<String> {
    let out = Command::new(cxx).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let is_gcc = text.contains("Free Software Foundation") && !text.contains("clang");
    is_gcc.then(|| text.lines().next().unwrap_or_default().to_string())
}

fn key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize()[..12].iter().map(|b| format!("{b:02x}")).collect()
}

fn cache_root() -> Option<PathBuf> {
    let root = match std::env::var_os("SMELT_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        None => dirs::cache_dir()?.join("smelt"),
    };
    Some(root.join("emulate"))
}

/// The folder `root/key` with the header and its `.gch`: found, or built beside it and renamed
/// into place.
fn build(cxx: &str, flags: &[&str], header: &str, key: &str) -> Option<PathBuf> {
    let root = cache_root()?;
    let dir = root.join(key);
    if dir.join(format!("{HEADER}.gch")).is_file() {
        return Some(dir);
    }
    std::fs::create_dir_all(&root).ok()?;
    let staging = tempfile::Builder::new().prefix(&format!(".{key}-")).tempdir_in(&root).ok()?;
    std::fs::write(staging.path().join(HEADER), header).ok()?;
    if !compile_header(cxx, flags, staging.path()) {
        return None;
    }
    let staged = staging.keep();
    // Another process may have put the same folder in place first: theirs is as good.
    if std::fs::rename(&staged, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&staged);
    }
    dir.join(format!("{HEADER}.gch")).is_file().then_some(dir)
}

fn compile_header(cxx: &str, flags: &[&str], dir: &Path) -> bool {
    let mut cmd = Command::new(cxx);
    cmd.args(flags).args(["-x", "c++-header", "-o"]).arg(dir.join(format!("{HEADER}.gch"))).arg(dir.join(HEADER));
    cmd.output().is_ok_and(|out| out.status.success())
}

/// The line a program starts with to use the precompiled header in `dir`.
pub(crate) fn include_line(dir: &Path) -> Option<String> {
    let path = dir.join(HEADER);
    let path = path.to_str()?;
    // A path the directive cannot quote is not used.
    (!path.contains(['"', '\\', '\n'])).then(|| format!("#include \"{path}\"\n"))
}
