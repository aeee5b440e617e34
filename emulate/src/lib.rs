//! smelt's CUDA emulator: the exact CUDA C source NVRTC compiles, built as host C++ against a
//! device shim (`shim/smelt_emu.h`: a fiber per CUDA thread (`shim/smelt_emu_fiber.h`), real
//! barriers, warp collectives per lane, the PTX smelt uses emulated from the ISA's tables in
//! `shim/smelt_emu_ptx.h`) and run launch by launch on host buffers.
//!
//! Checks, by build ([`Checker`]): array bounds under AddressSanitizer (every buffer a heap
//! block of exactly its size); shared- and global-memory races between CUDA threads under
//! ThreadSanitizer (two accesses to one address with no barrier between them, one a write; a
//! warp collective orders no memory, as on the GPU);
//! in every build, `cp.async` landing at its wait, at issue, or by a seeded coin ([`Landing`]),
//! blocks in a seeded order (under ThreadSanitizer several at once, so that an ordering between
//! blocks the kernel does not make is a race), and programmatic dependent launch: buffers a launch names as the
//! previous kernel's outputs are hidden from each block until it passes its grid-dependency
//! wait ([`Launch::hidden`]). A finding fails the run with the checker's report, which names
//! the kernel (its source file), the line and the CUDA thread.
//!
//! The source is changed only where host C++ must differ: `extern "C"` goes (each kernel
//! lives in a namespace of its own), an `extern __shared__` array becomes a pointer to the
//! emulator's dynamic shared memory, and the PTX wrappers and PDL macros the prelude defines
//! for NVRTC alone are defined after it.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod pch;
mod run;
mod source;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use source::emulated_source;

const SHIM: &str = include_str!("../shim/smelt_emu.h");
const FIBER: &str = include_str!("../shim/smelt_emu_fiber.h");
const LAUNCH: &str = include_str!("../shim/smelt_emu_launch.h");
const PTX: &str = include_str!("../shim/smelt_emu_ptx.h");
const MAIN: &str = include_str!("../shim/smelt_emu_main.h");

#[derive(Debug, thiserror::Error)]
pub enum EmuError {
    /// No C++20 compiler (or none with the checker's sanitizer): the caller may skip.
    #[error("no C++20 compiler{sanitizer} ({cxx}): {why}")]
    NoCompiler { cxx: String, sanitizer: &'static str, why: String },
    #[error("kernel {kernel}: {why}")]
    Source { kernel: String, why: String },
    #[error("the emulated kernels do not compile ({cxx}, {path}):\n{log}")]
    Compile { cxx: String, path: PathBuf, log: String },
    /// A checker's report, or a kernel that crashed.
    #[error("{what}:\n{report}")]
    Run { what: String, report: String },
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Usage(String),
}

/// What the build checks besides the emulator's own assertions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checker {
    /// None: fastest.
    Plain,
    /// AddressSanitizer: reads and writes outside a buffer or a shared array, and any access
    /// to a buffer hidden until the grid-dependency wait; and (each run made twice, see
    /// [`Emulator::check_unwritten`]) reads of memory nothing wrote.
    Bounds,
    /// ThreadSanitizer: two accesses to one word by different CUDA threads with no barrier
    /// ordering them, at least one a write. Blocks run four at a time (each group of blocks
    /// in its own threads, in the schedule's order), so this includes threads of different
    /// blocks with nothing but the kernel's own atomics between them.
    Races,
}

impl Checker {
    fn flags(self) -> &'static [&'static str] {
        match self {
            Checker::Plain => &[],
            Checker::Bounds => &["-fsanitize=address", "-fno-omit-frame-pointer"],
            // Blocks run in groups at once: no barrier orders two groups' blocks.
            Checker::Races => &["-fsanitize=thread", "-DSMELT_EMU_GROUPS=4"],
        }
    }

    /// Every flag of a build: no FMA contraction (eval rounds every product before a sum, and
    /// so do the kernels: `__fmul_rn`), `-g1` (line tables) for the reports' source lines, then
    /// the checker's.
    fn compile_flags(self) -> Vec<&'static str> {
        let mut flags = vec!["-std=c++20", "-O1", "-g1", "-ffp-contract=off", "-w"];
        flags.extend(self.flags());
        flags
    }

    fn describe(self) -> &'static str {
        match self {
            Checker::Plain => "",
            Checker::Bounds => " with AddressSanitizer",
            Checker::Races => " with ThreadSanitizer",
        }
    }
}

/// When a `cp.async` copy lands in shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Landing {
    /// At the `wait_group` that requires it: the latest moment the PTX allows.
    Latest,
    /// At issue: the earliest.
    Earliest,
    /// Either, by a coin seeded from this value, the block and the thread.
    Random(u64),
}

/// One kernel, as NVRTC receives it.
#[derive(Clone, Debug)]
pub struct KernelSource {
    pub name: String,
    pub source: String,
}

/// A kernel parameter: a pointer `offset` bytes into buffer `buffer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arg {
    pub buffer: usize,
    pub offset: usize,
}

impl Arg {
    pub fn buffer(buffer: usize) -> Arg {
        Arg { buffer, offset: 0 }
    }
}

/// A pointer stored in a buffer (e.g. `smelt_step`'s block table): at `buffer + offset`,
/// the address of `target + target_offset`.
#[derive(Clone, Copy, Debug)]
pub struct Pointer {
    pub buffer: usize,
    pub offset: usize,
    pub target: usize,
    pub target_offset: usize,
}

/// One kernel launch (1-D grid and block, as smelt's kernels use).
#[derive(Clone, Debug)]
pub struct Launch {
    /// Index into the kernels the emulator was built with.
    pub kernel: usize,
    pub grid: u32,
    pub block: u32,
    pub shared_bytes: u32,
    pub args: Vec<Arg>,
    /// Buffers the previous kernel wrote: each block sees them only after its grid-dependency
    /// wait (all ones before it, or under [`Checker::Bounds`] poisoned, so that any access is
    /// reported).
    pub hidden: Vec<usize>,
}

/// One thing a run does, in order.
#[derive(Clone, Debug)]
pub enum Step {
    Launch(Launch),
    /// The bytes of a buffer at this point (an operand before an in-place kernel, an output).
    Dump(usize),
    /// Sets a buffer back to unwritten (all ones) between launches.
    Fill(usize),
    /// The number of atomic operations the last launch made, as a dump of 8 bytes
    /// (little-endian).
    Atomics,
}

/// The order a launch's blocks start in (one at a time, or under [`Checker::Races`] four at a
/// time: block i of the order after block i - 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockOrder {
    InOrder,
    Reversed,
    /// A permutation drawn from this seed.
    Seeded(u64),
}

/// How a run schedules what the hardware leaves open.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub landing: Landing,
    pub block_order: BlockOrder,
}

impl Default for Schedule {
    fn default() -> Schedule {
        Schedule { landing: Landing::Latest, block_order: BlockOrder::InOrder }
    }
}

/// A buffer's bytes: given, or left for the kernels to write (all ones: NaN in every float
/// type, so a read of a value nothing wrote shows; other bytes in the second run of
/// [`Emulator::check_unwritten`]).
#[derive(Clone, Debug)]
pub enum Buffer {
    Bytes(Vec<u8>),
    Unwritten(usize),
}

impl Buffer {
    pub fn len(&self) -> usize {
        match self {
            Buffer::Bytes(b) => b.len(),
            Buffer::Unwritten(n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Kernels built for the host, ready to run.
pub struct Emulator {
    dir: tempfile::TempDir,
    exe: PathBuf,
    kernels: Vec<String>,
    checker: Checker,
    unwritten: bool,
}

impl Emulator {
    /// Builds `kernels` (each `prelude` followed by its body, as NVRTC receives it) into one
    /// host program with `checker`. `CXX` names the compiler (default `c++`).
    pub fn build(kernels: &[KernelSource], prelude: &str, checker: Checker) -> Result<Emulator, EmuError> {
        let dir = tempfile::Builder::new()
            .prefix("smelt-emulate-")
            .tempdir()
            .map_err(|e| EmuError::Io(format!("creating a build folder: {e}")))?;
        // The fixed part first: precompiled where the compiler allows (`pch.rs`).
        let cxx = compiler();
        let flags = checker.compile_flags();
        let head = format!("{SHIM}\n{FIBER}\n{LAUNCH}\n{MAIN}");
        let pre = pch::precompiled(&cxx, &flags, &head).and_then(|dir| pch::include_line(&dir));
        let mut program = pre.unwrap_or(head);
        for (i, k) in kernels.iter().enumerate() {
            let body = emulated_source(&k.name, &k.source, prelude)?;
            // Reports name the kernel's own file and line; the rest is kernels.cc's.
            let _ = write!(program, "\nnamespace smelt_k{i} {{\n{prelude}\n{PTX}\n#line 1 \"{}.cu\"\n{body}\n", k.name);
            let _ = writeln!(program, "#line {} \"kernels.cc\"\n}}", program.lines().count() + 2);
        }
        for (i, k) in kernels.iter().enumerate() {
            let _ = writeln!(
                program,
                "static void smelt_emu_call{i}(void** a) {{ smelt_emu_invoke(&smelt_k{i}::{}, a); }}",
                k.name
            );
        }
        let calls: Vec<String> = (0..kernels.len()).map(|i| format!("smelt_emu_call{i}")).collect();
        let _ = writeln!(program, "const smelt_emu_kernel smelt_emu_kernels[] = {{{}}};", calls.join(", "));
        let _ = writeln!(program, "const unsigned int smelt_emu_kernel_count = {};", kernels.len());
        let (src, exe) = (dir.path().join("kernels.cc"), dir.path().join("kernels"));
        write_file(&src, program.as_bytes())?;
        compile(&cxx, &flags, &src, &exe, checker)?;
        let names = kernels.iter().map(|k| k.name.clone()).collect();
        Ok(Emulator { dir, exe, kernels: names, checker, unwritten: checker == Checker::Bounds })
    }

    pub fn checker(&self) -> Checker {
        self.checker
    }

    /// Runs `launches` in order on `buffers` (with `pointers` stored first) and returns every
    /// buffer's bytes afterwards.
    pub fn run(
        &self,
        buffers: &[Buffer],
        pointers: &[Pointer],
        launches: &[Launch],
        schedule: Schedule,
    ) -> Result<Vec<Vec<u8>>, EmuError> {
        let mut steps: Vec<Step> = launches.iter().cloned().map(Step::Launch).collect();
        steps.extend((0..buffers.len()).map(Step::Dump));
        self.run_steps(buffers, pointers, &steps, schedule)
    }

    /// Runs `steps` in order on `buffers` (with `pointers` stored first); returns the bytes of
    /// each [`Step::Dump`] and [`Step::Atomics`], in order. With [`Emulator::check_unwritten`],
    /// runs them again with memory nothing wrote filled otherwise, and reports a dump that
    /// differs (`run.rs`).
    pub fn run_steps(
        &self,
        buffers: &[Buffer],
        pointers: &[Pointer],
        steps: &[Step],
        schedule: Schedule,
    ) -> Result<Vec<Vec<u8>>, EmuError> {
        run::run_steps(self, buffers, pointers, steps, schedule)
    }

    /// Whether each run is made twice, the second with memory nothing wrote (buffers given no
    /// bytes, [`Step::Fill`], dynamic shared memory) holding another value, so that a read of
    /// it that reaches a dump is reported, naming the dump's buffer, the kernel before it and
    /// the bytes that differ. Twice the run time; on by default under [`Checker::Bounds`].
    pub fn check_unwritten(&mut self, on: bool) {
        self.unwritten = on;
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), EmuError> {
    std::fs::write(path, bytes).map_err(|e| EmuError::Io(format!("writing {}: {e}", path.display())))
}

/// `$CXX`, else `c++`.
fn compiler() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

fn compile(cxx: &str, flags: &[&str], src: &Path, exe: &Path, checker: Checker) -> Result<(), EmuError> {
    let mut cmd = Command::new(cxx);
    cmd.args(flags).arg("-o").arg(exe).arg(src);
    let no_compiler = |why: String| EmuError::NoCompiler { cxx: cxx.to_string(), sanitizer: checker.describe(), why };
    let out = cmd.output().map_err(|e| no_compiler(e.to_string()))?;
    if out.status.success() {
        return Ok(());
    }
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    // A compiler without the sanitizer's runtime is a missing tool, not a kernel error.
    if log.contains("cannot find -lasan") || log.contains("cannot find -ltsan") || log.contains("unrecognized") {
        return Err(no_compiler(log.lines().take(3).collect::<Vec<_>>().join(" ")));
    }
    Err(EmuError::Compile { cxx: cxx.to_string(), path: src.to_path_buf(), log })
}
