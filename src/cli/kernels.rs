//! The kernel side of `smelt compile`: the decode program's kernel table (bytes moved per
//! call and the time a memory-bound kernel needs at an H100's bandwidth), and the dumps of
//! every kernel's CUDA C, its PTX and ptxas's report when NVRTC and ptxas are present.

use anyhow::{Context, Result};
use smelt::codegen::ptxas::{find_ptxas, resources};
use smelt::codegen::{Arch, ModuleCache, Nvrtc, Program, PRELUDE};
use std::fmt::Write as _;

use super::outputs::Dump;

/// Achievable HBM bandwidth of an H100 SXM (≈90% of its 3.35 TB/s peak), the decode floor.
pub const H100_BYTES_PER_S: f64 = 3.0e12;

/// Context length at which the table prices KV-cache reads.
pub const TABLE_CONTEXT: u64 = 1024;

/// The table: one row per kernel of layer 0 and outside the layers; the other layers repeat
/// layer 0's kernels, so they are summed in one line.
pub fn table(program: &Program) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "decode kernels (bytes per call at context {TABLE_CONTEXT}; floor at {:.1} TB/s):",
        H100_BYTES_PER_S / 1e12
    );
    let _ = writeln!(s, "  {:<44} {:<22} {:>14} {:>12} {:>10}", "node", "kernel", "bytes", "of weights", "floor µs");
    let (mut total, mut weights, mut others, mut other_bytes) = (0u64, 0u64, 0usize, 0u64);
    for k in &program.launches {
        let bytes = k.cost.bytes_at(TABLE_CONTEXT);
        total += bytes;
        weights += k.cost.weight_bytes;
        match k.layer {
            Some(l) if l > 0 => {
                others += 1;
                other_bytes += bytes;
            }
            _ => {
                let floor = bytes as f64 / H100_BYTES_PER_S * 1e6;
                let kernel = &program.kernels[k.kernel];
                let _ = writeln!(
                    s,
                    "  {:<44} {:<22} {:>14} {:>12} {:>10.2}",
                    k.node, kernel.name, bytes, k.cost.weight_bytes, floor
                );
            }
        }
    }
    if others > 0 {
        let floor = other_bytes as f64 / H100_BYTES_PER_S * 1e6;
        let _ = writeln!(
            s,
            "  {:<44} {:<22} {:>14} {:>12} {:>10.2}",
            format!("(layers 1.. : {others} more launches)"),
            "",
            other_bytes,
            "",
            floor
        );
    }
    let floor_ms = total as f64 / H100_BYTES_PER_S * 1e3;
    let _ = writeln!(
        s,
        "  total: {} launches of {} kernels, {total} bytes ({weights} of weights), floor {floor_ms:.3} ms/token on an H100",
        program.launches.len(),
        program.kernels.len()
    );
    s
}

/// The prelude every kernel carries, dumped once beside the kernels (`kernels/`) and included
/// by each dumped `.cu` in its place.
pub const PRELUDE_FILE: &str = "smelt_prelude.h";

/// Writes `kernels/<name>.cu` for every kernel, `.ptx` when NVRTC is present, and
/// `kernels.json` with ptxas's registers, shared memory and spills when ptxas is present. With
/// a `phase` (`prefill`), into `kernels/<phase>/` and `kernels.<phase>.json`. The prelude is
/// written once, as `kernels/smelt_prelude.h`: each `.cu` includes it where NVRTC sees it
/// inline (prelude + the file's text after the `#include` line is the source compiled).
pub fn dump(out: &mut Dump, program: &Program, arch: Arch, phase: Option<&str>) -> Result<String> {
    let (kdir, include) = match phase {
        Some(p) => (format!("kernels/{p}"), format!("#include \"../{PRELUDE_FILE}\"\n")),
        None => ("kernels".to_string(), format!("#include \"{PRELUDE_FILE}\"\n")),
    };
    out.write(&format!("kernels/{PRELUDE_FILE}"), PRELUDE.as_bytes())?;
    let nvrtc = Nvrtc::load().ok();
    let ptxas = find_ptxas();
    let cache = ModuleCache::default_dir().map(ModuleCache::at);
    let mut hits = 0;
    let mut json = program.to_json();
    let mut note = String::new();
    for (i, k) in program.kernels.iter().enumerate() {
        let dumped = match k.source.strip_prefix(PRELUDE) {
            Some(own) => format!("{include}{own}"),
            None => k.source.clone(),
        };
        out.write(&format!("{kdir}/{}.cu", k.name), dumped.as_bytes())?;
        let Some(nvrtc) = &nvrtc else { continue };
        let ptx = match &cache {
            Some(cache) => {
                let (ptx, hit) = cache.compile(nvrtc, &k.name, &k.source, arch)?;
                hits += usize::from(hit);
                ptx
            }
            None => nvrtc.compile(&k.name, &k.source, arch)?,
        };
        out.write(&format!("{kdir}/{}.ptx", k.name), ptx.as_bytes())?;
        if let Some(ptxas) = &ptxas {
            let report = resources(ptxas, &ptx, arch).map_err(anyhow::Error::msg)?;
            if let Some(r) = report.iter().find(|r| r.kernel == k.name) {
                json["kernels"][i]["ptxas"] = serde_json::json!({
                    "arch": arch.name(),
                    "registers": r.registers,
                    "shared_bytes": r.shared_bytes,
                    "spill_store_bytes": r.spill_store_bytes,
                    "spill_load_bytes": r.spill_load_bytes,
                });
            }
        }
    }
    match (&nvrtc, &ptxas) {
        (None, _) => note.push_str("NVRTC not found: wrote CUDA C only (see scripts/install-nvrtc)"),
        (Some(_), None) => {
            note.push_str(&format!("compiled PTX for {}; ptxas not found: no register report", arch.name()))
        }
        (Some(n), Some(_)) => note.push_str(&format!(
            "compiled PTX for {} with NVRTC {:?} ({hits} of {} from the module cache); ptxas report in kernels.json",
            arch.name(),
            n.version(),
            program.kernels.len()
        )),
    }
    let text = serde_json::to_string_pretty(&json).context("serializing kernels.json")?;
    let json_name = phase.map_or("kernels.json".to_string(), |p| format!("kernels.{p}.json"));
    out.write(&json_name, text.as_bytes())?;
    Ok(note)
}
