//! The emulator on small hand-written kernels: each checker finds the bug it is for (a
//! missing barrier, a shuffle taken for one, a write past a buffer, a read before the
//! grid-dependency wait, a stage read before its copies land) and passes the corrected kernel;
//! a barrier that cannot open stops the run.

use smelt_codegen::PRELUDE;
use smelt_emulate::{Arg, BlockOrder, Buffer, Checker, EmuError, Emulator, KernelSource, Landing, Launch, Schedule};

fn kernel(name: &str, body: &str) -> KernelSource {
    KernelSource { name: name.to_string(), source: format!("{PRELUDE}{body}") }
}

/// Builds `kernels`, or None (and a line saying why) without a compiler for `checker`.
fn build(kernels: &[KernelSource], checker: Checker) -> Option<Emulator> {
    match Emulator::build(kernels, PRELUDE, checker) {
        Ok(e) => Some(e),
        Err(EmuError::NoCompiler { .. }) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: no C++20 compiler for {checker:?}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Each block sums its 128 values: warp sums through shuffles, then warp 0 adds the four
/// through shared memory. `barrier` is the __syncthreads between the two.
fn block_sum(barrier: bool) -> KernelSource {
    let sync = if barrier { "__syncthreads();" } else { "" };
    let name = if barrier { "block_sum" } else { "block_sum_racy" };
    let body = format!(
        r#"extern "C" __global__ void __launch_bounds__(128) {name}(const float* x, float* y) {{
  SMELT_GRID_WAIT();
  __shared__ float part[4];
  const unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  const float s = smelt_warp_sum(x[blockIdx.x * 128u + threadIdx.x]);
  if (lane == 0u) part[warp] = s;
  {sync}
  if (threadIdx.x == 0u) y[blockIdx.x] = part[0] + part[1] + part[2] + part[3];
}}
"#
    );
    kernel(name, &body)
}

fn sum_launch(kernel: usize, blocks: u32) -> Launch {
    Launch {
        kernel,
        grid: blocks,
        block: 128,
        shared_bytes: 0,
        args: vec![Arg::buffer(0), Arg::buffer(1)],
        hidden: vec![],
    }
}

fn sum_inputs(blocks: usize) -> (Vec<Buffer>, Vec<f32>) {
    let x: Vec<f32> = (0..blocks * 128).map(|i| (i % 7) as f32 - 3.0 + (i / 128) as f32).collect();
    let want = x.chunks(128).map(|c| c.iter().sum()).collect();
    (vec![Buffer::Bytes(bytes(&x)), Buffer::Unwritten(4 * blocks)], want)
}

#[test]
fn a_correct_kernel_runs_clean_under_every_checker_and_any_block_order() {
    let (buffers, want) = sum_inputs(5);
    for checker in [Checker::Plain, Checker::Bounds, Checker::Races] {
        let Some(emu) = build(&[block_sum(true)], checker) else { continue };
        for order in [BlockOrder::InOrder, BlockOrder::Reversed, BlockOrder::Seeded(7)] {
            let schedule = Schedule { block_order: order, ..Schedule::default() };
            let out = emu.run(&buffers, &[], &[sum_launch(0, 5)], schedule).unwrap();
            assert_eq!(floats(&out[1]), want, "{checker:?}, block order {order:?}");
        }
    }
}

#[test]
fn a_missing_barrier_is_a_race_naming_the_kernel_and_line() {
    let (buffers, _) = sum_inputs(2);
    let Some(emu) = build(&[block_sum(false)], Checker::Races) else { return };
    let err = emu.run(&buffers, &[], &[sum_launch(0, 2)], Schedule::default()).unwrap_err().to_string();
    assert!(err.contains("ThreadSanitizer: data race"), "{err}");
    // Line 6 writes part[warp], line 8 reads it.
    assert!(err.contains("block_sum_racy.cu:6") && err.contains("block_sum_racy.cu:8"), "{err}");
    // The threads are named by block and thread.
    assert!(err.contains("'b0.t") || err.contains("'b1.t"), "{err}");
}

#[test]
fn a_write_past_a_buffer_is_reported_with_its_line() {
    // One block writes y[blockIdx.x + 1]: the last block writes past y.
    let body = r#"extern "C" __global__ void shifted(const float* x, float* y) {
  if (threadIdx.x == 0u) y[blockIdx.x + 1u] = x[blockIdx.x];
}
"#;
    let Some(emu) = build(&[kernel("shifted", body)], Checker::Bounds) else { return };
    let buffers = [Buffer::Bytes(bytes(&[1.0, 2.0, 3.0])), Buffer::Unwritten(12)];
    let launch = Launch { block: 32, ..sum_launch(0, 3) };
    let err = emu.run(&buffers, &[], &[launch], Schedule::default()).unwrap_err().to_string();
    assert!(err.contains("heap-buffer-overflow") && err.contains("shifted.cu:2"), "{err}");
    // Thread 0 of the last block (blocks run in order) made the access.
    assert!(err.contains("CUDA thread b2.t0"), "{err}");
}

/// `y = 2 x` where x is the previous kernel's output: read after the grid-dependency wait, or
/// (the bug) before it.
fn doubler(early_read: bool) -> KernelSource {
    let (before, after) =
        if early_read { ("const float v = x[threadIdx.x];", "") } else { ("", "const float v = x[threadIdx.x];") };
    let body = format!(
        "extern \"C\" __global__ void doubler(const float* x, float* y) {{\n  {before}\n  SMELT_GRID_WAIT();\n  {after}\n  y[threadIdx.x] = 2.0f * v;\n  SMELT_GRID_LAUNCH();\n}}\n"
    );
    kernel("doubler", &body)
}

#[test]
fn touching_dynamic_shared_memory_past_the_launchs_bytes_is_reported() {
    let body = "extern \"C\" __global__ void spill(float* y) {\n  extern __shared__ float smem[];\n  smem[threadIdx.x] = 1.0f;\n  __syncthreads();\n  y[threadIdx.x] = smem[threadIdx.x];\n}\n";
    let Some(emu) = build(&[kernel("spill", body)], Checker::Bounds) else { return };
    // 32 threads, 64 bytes of dynamic shared memory: threads 16-31 write past it.
    let launch = Launch { kernel: 0, grid: 1, block: 32, shared_bytes: 64, args: vec![Arg::buffer(0)], hidden: vec![] };
    let err = emu.run(&[Buffer::Unwritten(128)], &[], std::slice::from_ref(&launch), Schedule::default()).unwrap_err();
    let err = err.to_string();
    assert!(err.contains("use-after-poison") && err.contains("spill.cu:3"), "{err}");
    let fits = Launch { shared_bytes: 128, ..launch };
    assert!(emu.run(&[Buffer::Unwritten(128)], &[], &[fits], Schedule::default()).is_ok());
}

#[test]
fn reading_the_previous_kernels_output_before_the_grid_wait_is_caught() {
    let buffers = [Buffer::Bytes(bytes(&[1.5; 32])), Buffer::Unwritten(128)];
    let launch = Launch { block: 32, hidden: vec![0], ..sum_launch(0, 1) };
    for checker in [Checker::Plain, Checker::Bounds] {
        let Some(good) = build(&[doubler(false)], checker) else { continue };
        let out = good.run(&buffers, &[], std::slice::from_ref(&launch), Schedule::default()).unwrap();
        assert_eq!(floats(&out[1]), [3.0; 32], "{checker:?}");
        // The input is unchanged after the launch (hidden, then restored).
        assert_eq!(floats(&out[0]), [1.5; 32], "{checker:?}");
        let Some(bad) = build(&[doubler(true)], checker) else { continue };
        match (checker, bad.run(&buffers, &[], std::slice::from_ref(&launch), Schedule::default())) {
            // Without a sanitizer the early read sees the hidden value: all ones, NaN.
            (Checker::Plain, Ok(out)) => assert!(floats(&out[1]).iter().all(|v| v.is_nan()), "{:?}", floats(&out[1])),
            (Checker::Bounds, Err(e)) => {
                let e = e.to_string();
                assert!(e.contains("use-after-poison") && e.contains("doubler.cu:2"), "{e}");
            }
            (c, other) => panic!("{c:?}: {other:?}"),
        }
    }
}

#[test]
fn triggering_dependents_before_the_wait_is_reported() {
    let body = "extern \"C\" __global__ void eager(float* y) {\n  SMELT_GRID_LAUNCH();\n  SMELT_GRID_WAIT();\n  y[threadIdx.x] = 1.0f;\n}\n";
    let Some(emu) = build(&[kernel("eager", body)], Checker::Plain) else { return };
    let launch = Launch { kernel: 0, grid: 1, block: 32, shared_bytes: 0, args: vec![Arg::buffer(0)], hidden: vec![] };
    let err = emu.run(&[Buffer::Unwritten(128)], &[], &[launch], Schedule::default()).unwrap_err().to_string();
    assert!(err.contains("SMELT_GRID_LAUNCH before SMELT_GRID_WAIT"), "{err}");
}

/// Threads 0-15 copy 64 floats into dynamic shared memory with cp.async (16 bytes each), then
/// every thread reads one. Correct: wait_group and a barrier, then thread t reads 63 - t.
/// The bug: no wait, no barrier, and thread t reads the first word of chunk t % 16 (its own
/// copy for t < 16, another thread's for the rest).
fn staged(wait_and_sync: bool) -> KernelSource {
    let (sync, read) =
        if wait_and_sync { ("SMELT_CP_ASYNC_WAIT(0);\n  __syncthreads();", "63u - t") } else { ("", "4u * (t % 16u)") };
    let name = if wait_and_sync { "staged" } else { "staged_early_read" };
    let body = format!(
        r#"extern "C" __global__ void {name}(const float* x, float* y) {{
  extern __shared__ uint4 stage[];
  const unsigned int t = threadIdx.x;
  if (t < 16u) smelt_cp_async16(smelt_smem_addr(stage + t), x + 4u * t, 16u);
  smelt_cp_async_commit();
  {sync}
  const float* s = (const float*)stage;
  y[t] = s[{read}];
  SMELT_CP_ASYNC_WAIT(0);
}}
"#
    );
    kernel(name, &body)
}

#[test]
fn a_stage_read_before_its_copies_land_differs_by_landing_and_races() {
    let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let buffers = [Buffer::Bytes(bytes(&x)), Buffer::Unwritten(256)];
    let launch = Launch {
        kernel: 0,
        grid: 1,
        block: 64,
        shared_bytes: 256,
        args: vec![Arg::buffer(0), Arg::buffer(1)],
        hidden: vec![],
    };
    let want: Vec<f32> = (0..64).map(|t| (63 - t) as f32).collect();
    let run = |emu: &Emulator, landing| {
        emu.run(&buffers, &[], std::slice::from_ref(&launch), Schedule { landing, block_order: BlockOrder::InOrder })
    };
    let Some(good) = build(&[staged(true)], Checker::Plain) else { return };
    for landing in [Landing::Latest, Landing::Earliest, Landing::Random(3)] {
        assert_eq!(floats(&run(&good, landing).unwrap()[1]), want, "{landing:?}");
    }
    // Landing at the wait, a thread reading its own copy before it sees the poisoned stage.
    let Some(bad) = build(&[staged(false)], Checker::Plain) else { return };
    let early = floats(&run(&bad, Landing::Latest).unwrap()[1]);
    assert!(early[..16].iter().all(|v| v.is_nan()), "{early:?}");
    // Landing at issue, threads 16-63 read other threads' copies with no barrier: a race.
    if let Some(bad) = build(&[staged(false)], Checker::Races) {
        let err = run(&bad, Landing::Earliest).unwrap_err().to_string();
        assert!(err.contains("data race") && err.contains("staged_early_read.cu"), "{err}");
    }
}

/// Each block stores its 32 values to `part`, thread 0 arrives on a counter, and the last
/// block to arrive adds every block's values up: split-K's arrival. With the barrier before
/// the arrival every store precedes it; without, thread 0 may arrive while its block still
/// stores, and the last block reads those stores with nothing ordering them.
fn last_block_sums(barrier: bool) -> KernelSource {
    let sync = if barrier { "__syncthreads();" } else { "" };
    let name = if barrier { "last_block_sums" } else { "last_block_sums_early" };
    let body = format!(
        r#"extern "C" __global__ void {name}(const float* x, float* part, unsigned int* counter, float* y) {{
  const unsigned int t = threadIdx.x;
  part[blockIdx.x * 32u + t] = 2.0f * x[blockIdx.x * 32u + t];
  {sync}
  if (!__syncthreads_or(t == 0u && smelt_arrive(counter) == gridDim.x - 1u)) return;
  float s = 0.0f;
  for (unsigned int b = 0; b < gridDim.x; b++) s += part[b * 32u + t];
  y[t] = s;
}}
"#
    );
    kernel(name, &body)
}

#[test]
fn an_ordering_between_blocks_the_kernel_does_not_make_is_a_race() {
    let blocks = 8usize;
    let x: Vec<f32> = (0..blocks * 32).map(|i| (i % 5) as f32).collect();
    let want: Vec<f32> = (0..32).map(|t| (0..blocks).map(|b| 2.0 * x[b * 32 + t]).sum()).collect();
    let buffers = [
        Buffer::Bytes(bytes(&x)),
        Buffer::Unwritten(4 * blocks * 32),
        Buffer::Bytes(vec![0; 4]),
        Buffer::Unwritten(4 * 32),
    ];
    let launch = Launch {
        kernel: 0,
        grid: blocks as u32,
        block: 32,
        shared_bytes: 0,
        args: (0..4).map(Arg::buffer).collect(),
        hidden: vec![],
    };
    let seeded = Schedule { block_order: BlockOrder::Seeded(5), ..Schedule::default() };
    let Some(good) = build(&[last_block_sums(true)], Checker::Races) else { return };
    let out = good.run(&buffers, &[], std::slice::from_ref(&launch), seeded).unwrap();
    assert_eq!(floats(&out[3]), want);
    // One block at a time, the early arrival goes unseen: the block is done by the time the
    // next one starts. Under ThreadSanitizer blocks run four at a time.
    let Some(plain) = build(&[last_block_sums(false)], Checker::Plain) else { return };
    assert_eq!(floats(&plain.run(&buffers, &[], std::slice::from_ref(&launch), seeded).unwrap()[3]), want);
    let Some(bad) = build(&[last_block_sums(false)], Checker::Races) else { return };
    let err = bad.run(&buffers, &[], &[launch], seeded).unwrap_err().to_string();
    assert!(err.contains("ThreadSanitizer: data race") && err.contains("last_block_sums_early.cu"), "{err}");
}

#[test]
fn a_read_of_memory_nothing_wrote_is_reported_with_the_bytes_it_reached() {
    // Threads 0-15 store their scratch word before reading it back; threads 16-31 read theirs
    // with nothing written: y[16..32] come from memory nothing wrote.
    let body = "extern \"C\" __global__ void stale(const float* x, float* scratch, float* y) {\n  \
                const unsigned int t = threadIdx.x;\n  if (t < 16u) scratch[t] = 1.0f;\n  \
                y[t] = x[t] + scratch[t];\n}\n";
    let buffers = [Buffer::Bytes(bytes(&[2.0; 32])), Buffer::Unwritten(128), Buffer::Unwritten(128)];
    let launch = Launch {
        kernel: 0,
        grid: 1,
        block: 32,
        shared_bytes: 0,
        args: (0..3).map(Arg::buffer).collect(),
        hidden: vec![],
    };
    let Some(bounds) = build(&[kernel("stale", body)], Checker::Bounds) else { return };
    let err = bounds.run(&buffers, &[], std::slice::from_ref(&launch), Schedule::default()).unwrap_err().to_string();
    assert!(err.contains("reads of memory nothing wrote in the emulated launches of stale"), "{err}");
    // y's floats 16-31; the scratch (dumped too) differs only where nothing wrote it: not a read.
    assert!(err.contains("buffer 2 after the launch of stale: 64 bytes differ, at bytes 64..128"), "{err}");
    assert!(!err.contains("buffer 1"), "{err}");
    // Off (the default without AddressSanitizer), the read shows only as NaN.
    let Some(mut plain) = build(&[kernel("stale", body)], Checker::Plain) else { return };
    let out = plain.run(&buffers, &[], std::slice::from_ref(&launch), Schedule::default()).unwrap();
    let y = floats(&out[2]);
    assert!(y[..16].iter().all(|&v| v == 3.0) && y[16..].iter().all(|v| v.is_nan()), "{y:?}");
    plain.check_unwritten(true);
    assert!(plain.run(&buffers, &[], &[launch], Schedule::default()).is_err());
}

/// Lane 0 of the one warp writes a shared word; lane 1 reads it after a shuffle (`sync`:
/// after `__syncwarp` too).
fn handed_over(sync: bool) -> KernelSource {
    let (name, fence) = if sync { ("handed_over", "__syncwarp();") } else { ("handed_over_racy", "") };
    let body = format!(
        r#"extern "C" __global__ void {name}(const float* x, float* y) {{
  __shared__ float word;
  if (threadIdx.x == 0u) word = x[0];
  const float from_lane_0 = __shfl_sync(0xffffffffu, x[threadIdx.x], 0);
  {fence}
  if (threadIdx.x == 1u) y[0] = word + from_lane_0;
}}
"#
    );
    kernel(name, &body)
}

#[test]
fn a_shuffle_orders_no_memory_access_but_syncwarp_does() {
    let buffers = [Buffer::Bytes(bytes(&[2.0; 32])), Buffer::Unwritten(4)];
    let launch = Launch { block: 32, ..sum_launch(0, 1) };
    let Some(racy) = build(&[handed_over(false)], Checker::Races) else { return };
    let err = racy.run(&buffers, &[], std::slice::from_ref(&launch), Schedule::default()).unwrap_err().to_string();
    // Line 3 writes the word, line 6 reads it: the shuffle between them orders neither.
    assert!(err.contains("data race") && err.contains("handed_over_racy.cu:3"), "{err}");
    assert!(err.contains("handed_over_racy.cu:6"), "{err}");
    let Some(fenced) = build(&[handed_over(true)], Checker::Races) else { return };
    let out = fenced.run(&buffers, &[], &[launch], Schedule::default()).unwrap();
    assert_eq!(floats(&out[1]), [4.0]);
}

#[test]
fn a_barrier_that_cannot_open_is_reported_not_waited_for() {
    // Half the warp shuffles (a collective of all 32 lanes), the other half waits at
    // __syncthreads: each waits for the other. A GPU hangs (or worse); the emulator stops.
    let body = r#"extern "C" __global__ void split_warp(float* x) {
  if (threadIdx.x < 16u) x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, x[threadIdx.x], 1);
  __syncthreads();
}
"#;
    let Some(emu) = build(&[kernel("split_warp", body)], Checker::Plain) else { return };
    let launch = Launch { kernel: 0, grid: 1, block: 32, shared_bytes: 0, args: vec![Arg::buffer(0)], hidden: vec![] };
    let err =
        emu.run(&[Buffer::Bytes(bytes(&[1.0; 32]))], &[], &[launch], Schedule::default()).unwrap_err().to_string();
    assert!(err.contains("deadlock") && err.contains("b0.t0 ") && err.contains("(32 threads)"), "{err}");
}
