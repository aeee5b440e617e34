//! Kernels run on the host through `smelt-emulate`: building (or saying why not) and the
//! `smelt_step` parameter block as a buffer.

use smelt_codegen::PRELUDE;
use smelt_emulate::{BlockOrder, Buffer, Checker, EmuError, Emulator, KernelSource, Pointer, Schedule};

/// `kernels` built for the host with `checker`, or None with a "skipped" line when this
/// machine has no C++20 compiler for it (a failure under `CI=true`).
pub fn build(kernels: &[KernelSource], checker: Checker) -> Option<Emulator> {
    match Emulator::build(kernels, PRELUDE, checker) {
        Ok(e) => Some(e),
        Err(e @ EmuError::NoCompiler { .. }) => {
            smelt_codegen::skip::missing_tool(&super::current_test(), &e.to_string());
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// `make` for AddressSanitizer and, at the same time, for ThreadSanitizer (each is one
/// compiler or emulator process at a time, so together they keep two cores busy): (bounds,
/// races), or None when either could not be built.
pub fn with_both_checkers<T: Send>(make: impl Fn(Checker) -> Option<T> + Sync) -> Option<(T, T)> {
    let (bounds, races) = std::thread::scope(|s| {
        let races = s.spawn(|| make(Checker::Races));
        (make(Checker::Bounds), races.join().expect("the ThreadSanitizer side panicked"))
    });
    Some((bounds?, races?))
}

/// `kernels` built under both checkers at once (see [`with_both_checkers`]).
pub fn build_both(kernels: &[KernelSource]) -> Option<(Emulator, Emulator)> {
    with_both_checkers(|checker| build(kernels, checker))
}

/// `run` under AddressSanitizer with the blocks in order and under ThreadSanitizer with the
/// blocks in a seeded order, at once; both must give the same outputs.
pub fn bounds_and_races<T: PartialEq + Send>(run: impl Fn(Checker, Schedule) -> Option<T> + Sync) -> Option<T> {
    let seeded = Schedule { block_order: BlockOrder::Seeded(0x5eed), ..Schedule::default() };
    let (bounds, races) = with_both_checkers(|checker| match checker {
        Checker::Races => run(checker, seeded),
        _ => run(checker, Schedule::default()),
    })?;
    assert!(bounds == races, "the outputs depend on the block order or the build");
    Some(bounds)
}

pub fn source(k: &smelt_codegen::Kernel) -> KernelSource {
    KernelSource { name: k.name.clone(), source: k.source.clone() }
}

/// Little-endian u32 words, one spare (a table is read one entry past its last block by
/// nothing, but an empty one must still be a buffer).
pub fn words(v: &[u32]) -> Vec<u8> {
    v.iter().chain(&[0]).flat_map(|b| b.to_le_bytes()).collect()
}

/// A step's per-row arrays for a batched step: positions, tables and the table stride.
pub struct Rows {
    pub positions: usize,
    pub tables: usize,
    pub stride: u32,
}

/// `smelt_step` as a buffer (`{batch, new_tokens, cached_tokens, block_tokens, block_table,
/// row_positions, row_tables, table_stride, reserved}`, 48 bytes on a 64-bit host) for buffer
/// id `id`, and the pointers into it: the block table (buffer `table`) and, for a batched
/// step, the row arrays.
pub fn step(
    id: usize,
    t: usize,
    p: usize,
    block_tokens: usize,
    table: usize,
    rows: Option<Rows>,
) -> (Buffer, Vec<Pointer>) {
    let mut b = Vec::with_capacity(48);
    for v in [1u32, t as u32, p as u32, block_tokens as u32] {
        b.extend(v.to_le_bytes());
    }
    b.extend([0u8; 24]);
    b.extend(rows.as_ref().map_or(0, |r| r.stride).to_le_bytes());
    b.extend(0u32.to_le_bytes());
    let at = |offset, target| Pointer { buffer: id, offset, target, target_offset: 0 };
    let mut pointers = vec![at(16, table)];
    if let Some(r) = rows {
        pointers.extend([at(24, r.positions), at(32, r.tables)]);
    }
    (Buffer::Bytes(b), pointers)
}
