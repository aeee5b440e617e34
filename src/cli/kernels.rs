//! The kernel side of `smelt compile`: the decode program's kernel table (bytes moved per
//! call and the time a memory-bound kernel needs at an H200's bandwidth), and the dumps of
//! every kernel's CUDA C, its PTX and ptxas's report when NVRTC and ptxas are present.

use anyhow::{Context, Result};
use smelt::codegen::ptxas::{find_ptxas, resources};
use smelt::codegen::{Arch, ModuleCache, Nvrtc, Params, Program, PRELUDE};
use std::collections::HashMap;
use std::fmt::Write as _;

use smelt::ir::NodeId;

use super::outputs::Dump;

/// The GPU the table's floors are priced on: the H200 (SXM) smelt's decode was measured on
/// (bench/results/2026-11-28-h200-*)...
pub const FLOOR_GPU: &str = "H200";

/// ...at the device-to-device copy rate `smelt bench` measured there (4,236-4,259 GB/s, of a
/// 4.8 TB/s peak): the bandwidth a memory-bound kernel can reach.
pub const FLOOR_BYTES_PER_S: f64 = 4.25e12;

/// Context length at which the table prices KV-cache reads.
pub const TABLE_CONTEXT: u64 = 1024;

/// The table: one row per kernel of layer 0 and outside the layers; the other layers repeat
/// layer 0's kernels, so they are summed in one line. Bytes per call include the flash-decoding
/// scratch the attention split kernel writes and the combine kernel (or the merged kernel's
/// last blocks) read back (the op's own cost, its output included, is the split kernel's), and
/// the lm_head's per-block argmax candidates, which its last block reads back. Columns are as
/// wide as their widest cell.
pub fn table(program: &Program) -> String {
    let scratch = scratch_bytes(program, TABLE_CONTEXT);
    let floor_us = |bytes: u64| format!("{:.2}", bytes as f64 / FLOOR_BYTES_PER_S * 1e6);
    let mut rows: Vec<[String; 5]> = vec![["node", "kernel", "bytes", "of weights", "floor µs"].map(String::from)];
    let (mut total, mut weights, mut scratch_total) = (0u64, 0u64, 0u64);
    let (mut others, mut other_bytes, mut last_layer) = (0usize, 0u64, 0u32);
    for (k, &scratch) in program.launches.iter().zip(&scratch) {
        let bytes = k.cost.bytes_at(TABLE_CONTEXT) + scratch;
        total += bytes;
        weights += k.cost.weight_bytes;
        scratch_total += scratch;
        match k.layer {
            Some(l) if l > 0 => {
                others += 1;
                other_bytes += bytes;
                last_layer = last_layer.max(l);
            }
            _ => {
                let kernel = program.kernels[k.kernel].name.clone();
                rows.push([
                    k.node_names(),
                    kernel,
                    bytes.to_string(),
                    k.cost.weight_bytes.to_string(),
                    floor_us(bytes),
                ]);
            }
        }
    }
    if others > 0 {
        let layers = if last_layer == 1 { "layer 1".to_string() } else { format!("layers 1-{last_layer}") };
        let what = format!("({layers}: {others} more launches)");
        rows.push([what, String::new(), other_bytes.to_string(), String::new(), floor_us(other_bytes)]);
    }
    let mut s = format!(
        "decode kernels (bytes per call at context {TABLE_CONTEXT}; floor at {:.2} TB/s, an {FLOOR_GPU}'s copy rate):\n",
        FLOOR_BYTES_PER_S / 1e12
    );
    s.push_str(&columns(&rows, [false, false, true, true, true]));
    let _ = writeln!(
        s,
        "  total: {} launches of {} kernels, {total} bytes ({weights} of weights, {scratch_total} of \
         scratch), floor {}/token on an {FLOOR_GPU}",
        program.launches.len(),
        program.kernels.len(),
        step_time(total as f64 / FLOOR_BYTES_PER_S),
    );
    s
}

/// `0.312 ms`, or below a tenth of a millisecond `42.50 µs` (a tiny model's step).
fn step_time(seconds: f64) -> String {
    if seconds >= 1e-4 {
        format!("{:.3} ms", seconds * 1e3)
    } else {
        format!("{:.2} µs", seconds * 1e6)
    }
}

/// The bytes one step of `program` moves at `context` tokens: every launch's operands and
/// result, scratch included (the table's total).
pub fn step_bytes(program: &Program, context: u64) -> u64 {
    let scratch = scratch_bytes(program, context);
    program.launches.iter().zip(scratch).map(|(k, s)| k.cost.bytes_at(context) + s).sum()
}

/// Per launch, the bytes of scratch it writes (attention split) or reads back (the combine
/// that follows it), or both (a merged split: its last blocks read back what all wrote) at
/// `context` tokens; 0 for the others.
fn scratch_bytes(program: &Program, context: u64) -> Vec<u64> {
    let mut written = 0u64;
    program
        .launches
        .iter()
        .map(|k| match &k.params {
            Params::WritesScratch(scratch) => {
                written = scratch.bytes(context as usize, 1) as u64;
                written
            }
            Params::ReadsScratch => written,
            // The table shows decode programs, whose matmuls are GEMVs: the kernels with
            // counters are the merged attention and the lm_head with the argmax; each writes
            // its scratch and its last blocks read it back.
            Params::SplitK { scratch, .. } => 2 * scratch.bytes(context as usize, 1) as u64,
            Params::Standard => 0,
        })
        .collect()
}

/// Rows of cells as aligned columns, two spaces in and two apart (`right`: numbers,
/// aligned right); each column as wide as its widest cell.
fn columns<const N: usize>(rows: &[[String; N]], right: [bool; N]) -> String {
    let width = |c: usize| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..N).map(width).collect();
    let mut s = String::new();
    for row in rows {
        let cells: Vec<String> = (0..N)
            .map(|c| {
                if right[c] {
                    format!("{:>w$}", row[c], w = widths[c])
                } else {
                    format!("{:<w$}", row[c], w = widths[c])
                }
            })
            .collect();
        let _ = writeln!(s, "  {}", cells.join("  ").trim_end());
    }
    s
}

/// The folder of the dump that [`dump`] writes a program's kernels to: `kernels`, or with a
/// phase `kernels/<phase>`; under `root` (`rank1/`, or empty).
fn kernel_dir(root: &str, phase: Option<&str>) -> String {
    phase.map_or(format!("{root}kernels"), |p| format!("{root}kernels/{p}"))
}

/// For each node that launches kernels, `=> ` and the files [`dump`] writes them to, in launch
/// order (`=> kernels/attention_split.cu, kernels/attention_combine.cu`): the note each line of
/// the dumped decode.txt and prefill.txt carries. A GEMM with a GEMV for steps of few tokens
/// names both, each with the steps it runs at (`qkv_gemm.cu (T > 4), qkv_gemv_rows.cu (T <= 4)`).
pub fn node_files(program: &Program, phase: Option<&str>) -> HashMap<NodeId, String> {
    // The graph text sits beside `kernels/`, so its notes name the files from there.
    let kdir = kernel_dir("", phase);
    let mut files: HashMap<NodeId, Vec<String>> = HashMap::new();
    for launch in &program.launches {
        let file = |kernel: usize| format!("{kdir}/{}.cu", program.kernels[kernel].name);
        // A GEMM with a GEMV for steps of few tokens: which runs when.
        let launch_files = match &launch.few_rows {
            Some(f) => vec![
                format!("{} (T > {})", file(launch.kernel), f.rows),
                format!("{} (T <= {})", file(f.kernel), f.rows),
            ],
            None => vec![file(launch.kernel)],
        };
        for id in launch.node_ids() {
            let of_node = files.entry(id).or_default();
            for file in &launch_files {
                if !of_node.contains(file) {
                    of_node.push(file.clone());
                }
            }
        }
    }
    files.into_iter().map(|(node, files)| (node, format!("=> {}", files.join(", ")))).collect()
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
    dump_under(out, "", program, arch, phase)
}

/// [`dump`] under the folder `root` of the dump (`rank1/`: one rank's program).
pub fn dump_under(out: &mut Dump, root: &str, program: &Program, arch: Arch, phase: Option<&str>) -> Result<String> {
    let kdir = kernel_dir(root, phase);
    let include = match phase {
        Some(_) => format!("#include \"../{PRELUDE_FILE}\"\n"),
        None => format!("#include \"{PRELUDE_FILE}\"\n"),
    };
    out.write(&format!("{root}kernels/{PRELUDE_FILE}"), PRELUDE.as_bytes())?;
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
    let json_name = phase.map_or(format!("{root}kernels.json"), |p| format!("{root}kernels.{p}.json"));
    out.write(&json_name, text.as_bytes())?;
    Ok(note)
}
