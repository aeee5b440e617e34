//! A run: the script the runner (`shim/smelt_emu_main.h`) reads, the runner started on it,
//! the dumps read back; with the unwritten-memory check, a second run compared with the first.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use crate::{write_file, BlockOrder, Buffer, EmuError, Emulator, Landing, Launch, Pointer, Schedule, Step};

/// What memory nothing wrote holds in the second run (the first: 0xff, NaN in every float
/// type): a finite value in bf16, f16 and f32 alike (0x3c3c is about 1.06 in f16 and 0.0115
/// in bf16), so that an output computed from it differs from the NaN of the first run.
const OTHER_FILL: u8 = 0x3c;

/// One dump: its file and what it shows (the buffer and the launch before it).
struct Dump {
    path: PathBuf,
    what: String,
}

pub(crate) fn run_steps(
    emu: &Emulator,
    buffers: &[Buffer],
    pointers: &[Pointer],
    steps: &[Step],
    schedule: Schedule,
) -> Result<Vec<Vec<u8>>, EmuError> {
    let dumps = execute(emu, buffers, pointers, steps, schedule, None)?;
    let first = read(&dumps)?;
    if !emu.unwritten {
        return Ok(first);
    }
    let other = execute(emu, buffers, pointers, steps, schedule, Some(OTHER_FILL))?;
    let mut report = String::new();
    for ((a, b), dump) in first.iter().zip(read(&other)?).zip(&other) {
        if let Some(bytes) = differing(a, &b) {
            let _ = writeln!(report, "{}: {bytes}", dump.what);
        }
    }
    if report.is_empty() {
        return Ok(first);
    }
    let what = format!(
        "reads of memory nothing wrote in the emulated launches of {}: with it all 0x{OTHER_FILL:02x} \
         instead of all 0xff (buffers never written, filled ones, dynamic shared memory), these dumps differ",
        kernel_names(emu, steps)
    );
    Err(EmuError::Run { what, report })
}

/// The byte ranges where `a` (the first run's dump) and `b` differ (the first 8) and their
/// count; None if equal. Compared 2 bytes at a time (the narrowest element a kernel stores): a
/// pair that holds each run's fill is one nothing wrote (a cache's rows past its context,
/// dumped as an operand), not a read (or a copy of one, which this misses).
fn differing(a: &[u8], b: &[u8]) -> Option<String> {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let n = a.len().max(b.len());
    for i in (0..n).step_by(2) {
        let (x, y) = (a.get(i..(i + 2).min(a.len())), b.get(i..(i + 2).min(b.len())));
        if x == y || (x == Some(&[0xff, 0xff][..]) && y == Some(&[OTHER_FILL, OTHER_FILL][..])) {
            continue;
        }
        let end = (i + 2).min(n);
        match ranges.last_mut() {
            Some((_, e)) if *e == i => *e = end,
            _ => ranges.push((i, end)),
        }
    }
    if ranges.is_empty() {
        return None;
    }
    let count: usize = ranges.iter().map(|(s, e)| e - s).sum();
    let shown: Vec<String> = ranges.iter().take(8).map(|(s, e)| format!("{s}..{e}")).collect();
    let more = if ranges.len() > 8 { format!(" and {} more ranges", ranges.len() - 8) } else { String::new() };
    Some(format!("{count} bytes differ, at bytes {}{more}", shown.join(", ")))
}

fn read(dumps: &[Dump]) -> Result<Vec<Vec<u8>>, EmuError> {
    dumps
        .iter()
        .map(|d| std::fs::read(&d.path).map_err(|e| EmuError::Io(format!("reading {}: {e}", d.path.display()))))
        .collect()
}

/// The kernels `steps` launch, each once, in order.
fn kernel_names(emu: &Emulator, steps: &[Step]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for s in steps {
        if let Step::Launch(l) = s {
            if !names.contains(&emu.kernels[l.kernel].as_str()) {
                names.push(&emu.kernels[l.kernel]);
            }
        }
    }
    names.join(", ")
}

/// Writes the script and runs it, memory nothing wrote holding `fill` (None: all ones).
fn execute(
    emu: &Emulator,
    buffers: &[Buffer],
    pointers: &[Pointer],
    steps: &[Step],
    schedule: Schedule,
    fill: Option<u8>,
) -> Result<Vec<Dump>, EmuError> {
    let dir = emu.dir.path();
    let tag = fill.map_or(String::new(), |f| format!("-{f}"));
    let mut script = String::new();
    for (i, b) in buffers.iter().enumerate() {
        match b {
            Buffer::Bytes(bytes) => {
                let path = dir.join(format!("in{i}"));
                if fill.is_none() {
                    write_file(&path, bytes)?;
                }
                let _ = writeln!(script, "buffer {i} {} {}", bytes.len(), path.display());
            }
            Buffer::Unwritten(n) => {
                let _ = writeln!(script, "buffer {i} {n} -");
            }
        }
    }
    for p in pointers {
        check_buffer(p.buffer, buffers)?;
        check_buffer(p.target, buffers)?;
        let _ = writeln!(script, "pointer {} {} {} {}", p.buffer, p.offset, p.target, p.target_offset);
    }
    let mut dumps = Vec::new();
    let mut last = "no launch".to_string();
    for step in steps {
        let path = dir.join(format!("dump{}{tag}", dumps.len()));
        match step {
            Step::Launch(l) => {
                launch_line(emu, &mut script, l, buffers, schedule)?;
                last = format!("launch of {}", emu.kernels[l.kernel]);
            }
            Step::Dump(b) => {
                check_buffer(*b, buffers)?;
                let _ = writeln!(script, "dump {b} {}", path.display());
                dumps.push(Dump { path, what: format!("buffer {b} after the {last}") });
            }
            Step::Fill(b) => {
                check_buffer(*b, buffers)?;
                let _ = writeln!(script, "fill {b}");
            }
            Step::Atomics => {
                let _ = writeln!(script, "atomics {}", path.display());
                dumps.push(Dump { path, what: format!("the atomics count of the {last}") });
            }
        }
    }
    let script_path = dir.join(format!("script{tag}"));
    write_file(&script_path, script.as_bytes())?;
    let mut cmd = Command::new(&emu.exe);
    cmd.arg(&script_path);
    if let Some(f) = fill {
        cmd.arg(f.to_string());
    }
    let ran = cmd
        .env("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=0")
        // atexit_sleep_ms: ThreadSanitizer's default waits a second at every exit for threads
        // still running (each fiber is one), to catch races with them: none run after main.
        .env("TSAN_OPTIONS", "halt_on_error=1:exitcode=66:report_signal_unsafe=0:atexit_sleep_ms=0")
        .output()
        .map_err(|e| EmuError::Io(format!("running {}: {e}", emu.exe.display())))?;
    if !ran.status.success() {
        let names = kernel_names(emu, steps);
        let what = match fill {
            None => format!("the emulated launches of {names} failed ({})", ran.status),
            // Only what memory nothing wrote holds changed: a kernel read it (an index, say).
            Some(f) => format!(
                "the emulated launches of {names} failed ({}) with memory nothing wrote all 0x{f:02x}, \
                 not all 0xff: a read of memory nothing wrote",
                ran.status
            ),
        };
        return Err(EmuError::Run { what, report: String::from_utf8_lossy(&ran.stderr).into_owned() });
    }
    Ok(dumps)
}

fn launch_line(
    emu: &Emulator,
    script: &mut String,
    l: &Launch,
    buffers: &[Buffer],
    schedule: Schedule,
) -> Result<(), EmuError> {
    let (landing, seed) = match schedule.landing {
        Landing::Latest => (0, 0),
        Landing::Earliest => (1, 0),
        Landing::Random(seed) => (2, seed),
    };
    if l.kernel >= emu.kernels.len() {
        return Err(EmuError::Usage(format!("launch of kernel {} of {}", l.kernel, emu.kernels.len())));
    }
    let order = match schedule.block_order {
        BlockOrder::InOrder => "0".to_string(),
        BlockOrder::Reversed => "r".to_string(),
        BlockOrder::Seeded(seed) => seed.max(1).to_string(),
    };
    let _ = write!(
        script,
        "launch {} {} {} {} {landing} {seed} {order} {}",
        l.kernel,
        l.grid,
        l.block,
        l.shared_bytes,
        l.args.len()
    );
    for a in &l.args {
        check_buffer(a.buffer, buffers)?;
        let _ = write!(script, " {} {}", a.buffer, a.offset);
    }
    let _ = write!(script, " {}", l.hidden.len());
    for &h in &l.hidden {
        check_buffer(h, buffers)?;
        let _ = write!(script, " {h}");
    }
    script.push('\n');
    Ok(())
}

fn check_buffer(id: usize, buffers: &[Buffer]) -> Result<(), EmuError> {
    match id < buffers.len() {
        true => Ok(()),
        false => Err(EmuError::Usage(format!("buffer {id} of {}", buffers.len()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_bytes_are_named_but_bytes_nothing_wrote_are_not() {
        assert_eq!(differing(&[1, 2, 3], &[1, 2, 3]), None);
        let a = [0u8, 1, 2, 3, 0xff, 0xff, 0xff, 0xff, 5, 6, 0xff, 0xff, 9];
        let b = [0u8, 7, 7, 3, OTHER_FILL, OTHER_FILL, 0xff, 0, 5, 6, OTHER_FILL, 0, 8];
        // Pairs 0-1 differ; 4-5 hold each run's fill (unwritten); 6-7 and 10-11 were computed
        // (one byte each as a fill would be); the odd last byte differs.
        assert_eq!(differing(&a, &b).unwrap(), "9 bytes differ, at bytes 0..4, 6..8, 10..13");
    }
}
