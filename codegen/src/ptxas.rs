//! `ptxas -v`: assembles PTX for a real architecture and reports each kernel's registers,
//! shared memory and local-memory spills. Found on PATH, or at `$SMELT_PTXAS`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;

use crate::nvrtc::Arch;

/// What ptxas says one kernel needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub kernel: String,
    pub registers: u32,
    pub shared_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
}

/// The ptxas executable, if there is one.
pub fn find_ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SMELT_PTXAS") {
        return Some(PathBuf::from(p));
    }
    which::which("ptxas").ok()
}

/// Assembles `ptx` for `arch` and parses ptxas's resource report.
pub fn resources(ptxas: &std::path::Path, ptx: &str, arch: Arch) -> Result<Vec<Resources>, String> {
    // ptxas reads a file, not a pipe. A file of its own per call (threads may assemble the same
    // kernel at once), removed when `file` drops.
    let mut file = tempfile::Builder::new()
        .prefix("smelt-ptxas-")
        .suffix(".ptx")
        .tempfile()
        .map_err(|e| format!("creating a temporary file for ptxas: {e}"))?;
    file.write_all(ptx.as_bytes()).map_err(|e| format!("writing {}: {e}", file.path().display()))?;
    let out = Command::new(ptxas)
        .args(["-v", "--gpu-name", arch.name(), "-o", "/dev/null"])
        .arg(file.path())
        .output()
        .map_err(|e| format!("running {}: {e}", ptxas.display()))?;
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!("ptxas failed for {}:\n{text}", arch.name()));
    }
    Ok(parse(&text))
}

/// Parses `ptxas -v` output: a "Compiling entry function 'name'" line, then lines with
/// "N bytes spill stores, N bytes spill loads" and "Used N registers, … N bytes smem".
fn parse(text: &str) -> Vec<Resources> {
    let number_before = |line: &str, word: &str| -> u32 {
        let at = match line.find(word) {
            Some(at) => at,
            None => return 0,
        };
        line[..at].split_whitespace().last().and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    let mut out: Vec<Resources> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            out.push(Resources {
                kernel: rest.split('\'').next().unwrap_or_default().to_string(),
                ..Default::default()
            });
        } else if let Some(r) = out.last_mut() {
            if line.contains("spill stores") {
                r.spill_store_bytes = number_before(line, "bytes spill stores");
                r.spill_load_bytes = number_before(line, "bytes spill loads");
            }
            if line.contains("Used") {
                r.registers = number_before(line, "registers");
                r.shared_bytes = number_before(line, "bytes smem");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_ptxas_v() {
        let text = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'l00_qkv' for 'sm_90'\n\
            ptxas info    : Function properties for l00_qkv\n\
            \x20   8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n\
            ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes smem, 400 bytes cmem[0]\n";
        let r = super::parse(text);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].kernel.as_str(), r[0].registers, r[0].shared_bytes), ("l00_qkv", 40, 2048));
        assert_eq!((r[0].spill_store_bytes, r[0].spill_load_bytes), (4, 4));
    }
}
