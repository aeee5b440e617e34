//! Faults injected into the GEMM's generated source, each of which the emulation must catch:
//! its barriers dropped (a race report), a wait_group off by one, mma B registers swapped,
//! the ragged tile's rows past M stored, split-K's counter left set, split-K's barrier before
//! the arrival dropped (a race between blocks: under ThreadSanitizer blocks run several at a
//! time), the residual read from the output nothing wrote yet. Not caught, and why: the last
//! block summing the splits in its own order (the f32 sums round to bf16 before any output,
//! which hides a reordering's last-bit differences); the fences around the arrival dropped
//! (the emulator's atomics are sequentially consistent, so they order what the fences would).

use smelt_emulate::{BlockOrder, EmuError, Landing, Schedule};
use smelt_ir::DType;

use super::{case_steps, emulated, from_storage, out_dtype, prepare, residual, Case, Run};
use crate::common::faults::{Caught, Fault};

/// A fault, and whether it goes into the split-K case (else the plain one).
const FAULTS: [(Fault, bool); 8] = [
    (
        Fault { name: "the K loop's barrier dropped", from: "__syncthreads();", nth: 0, to: "", caught: Caught::Race },
        false,
    ),
    (
        Fault {
            name: "the end-of-tile barrier dropped",
            from: "__syncthreads();",
            nth: 1,
            to: "",
            caught: Caught::Race,
        },
        false,
    ),
    (
        Fault {
            name: "wait_group off by one",
            from: "SMELT_CP_ASYNC_WAIT(STAGES - 2u);",
            nth: 0,
            to: "SMELT_CP_ASYNC_WAIT(STAGES - 1u);",
            caught: Caught::Copies,
        },
        false,
    ),
    (
        Fault {
            name: "mma B registers swapped",
            from: "sum[mi][j], a[mi], b[j][0], b[j][1]",
            nth: 0,
            to: "sum[mi][j], a[mi], b[j][1], b[j][0]",
            caught: Caught::Wrong,
        },
        false,
    ),
    (
        Fault {
            name: "rows past M of the ragged tile stored",
            from: "if (r >= M || col >= N_OUT) continue;",
            nth: 0,
            to: "if (col >= N_OUT) continue;",
            caught: Caught::Bounds("heap-buffer-overflow"),
        },
        false,
    ),
    (
        Fault {
            name: "split-K's counter not reset by the last block",
            from: "if (tid == 0u) counters[tile] = 0u;",
            nth: 0,
            to: "",
            caught: Caught::CounterLeft,
        },
        true,
    ),
    (
        Fault {
            name: "split-K's barrier before the arrival dropped",
            from: "__syncthreads();\n      if (!__syncthreads_or(",
            nth: 0,
            to: "if (!__syncthreads_or(",
            caught: Caught::Race,
        },
        true,
    ),
    (
        Fault {
            name: "the residual read from the output (nothing wrote it)",
            from: "smelt_load_bf16(extra0[r * 128u + col])",
            nth: 0,
            to: "smelt_load_bf16(y[r * N_OUT + col])",
            caught: Caught::Unwritten,
        },
        false,
    ),
];

/// Whether `got` is right: finite, and within 1% of `want` over the whole tensor (the
/// correct kernel's error is a few storage ulps; these faults give order-one errors).
fn compare_within(got: &[f32], want: &[f32]) -> bool {
    let d2: f64 = got.iter().zip(want).map(|(g, w)| ((g - w) as f64).powi(2)).sum();
    let w2: f64 = want.iter().map(|w| (*w as f64).powi(2)).sum();
    got.iter().all(|v| v.is_finite()) && (d2 / w2.max(f64::MIN_POSITIVE)).sqrt() < 1e-2
}

#[test]
fn injected_faults_are_caught() {
    // T = 386: four row tiles, the last of 2 rows, all on one block (the ring reused across
    // tiles, 3 times: the end-of-tile barrier matters, and ThreadSanitizer, which keeps a few
    // accesses per word, gets 3 chances); the split case (T = 130) splits K in 3.
    // K = 128: 4 steps, so the last reads stage 0, which the next tile's prologue refills.
    let plain = Case::new("fault_plain", DType::BF16, 128, 128, Some(residual(DType::BF16)));
    let split = Case::new("fault_split", DType::BF16, 384, 64, Some(residual(DType::BF16)));
    let (plain_run, split_run) = (prepare(&plain, 386, Some(1), 0xfa), prepare(&split, 130, None, 0xfb));
    let pick = |split_case: bool| -> (&Case, &Run) {
        if split_case {
            (&split, &split_run)
        } else {
            (&plain, &plain_run)
        }
    };
    let kernels: Vec<_> = FAULTS.iter().map(|(f, s)| emulated::source(&f.inject(pick(*s).0.kernel()))).collect();
    let Some((bounds, races)) = emulated::build_both(&kernels) else { return };
    let seeded = Schedule { landing: Landing::Random(3), block_order: BlockOrder::Reversed };
    for (i, (f, split_case)) in FAULTS.iter().enumerate() {
        let (case, run) = pick(*split_case);
        // The output after the first launch, and whether a counter was left nonzero.
        let go = |emu: &smelt_emulate::Emulator, schedule| -> Result<(Vec<f32>, bool), EmuError> {
            let (buffers, pointers, steps) = case_steps(i, case, run);
            let dumps = emu.run_steps(&buffers, &pointers, &steps, schedule)?;
            let left = *split_case && dumps[2].iter().any(|&b| b != 0);
            Ok((from_storage(out_dtype(case), &dumps[1]), left))
        };
        let (plain_out, raced) = (go(&bounds, Schedule::default()), go(&races, seeded));
        f.assert_caught(&plain_out, &raced, |(y, _)| !compare_within(y, &run.want), |(_, left)| *left);
    }
}
