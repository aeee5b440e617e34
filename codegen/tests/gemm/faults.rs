//! Faults injected into the GEMM's generated source, each of which the emulation must catch:
//! its barriers dropped (a race report), a wait_group off by one, mma B registers swapped,
//! the ragged tile's rows past M stored, split-K's counter left set. Not caught, and why:
//! split-K's barrier before the arrival dropped (the emulator runs one block at a time, so
//! another block's partials are always complete when it reads them); the last block summing
//! the splits in its own order (the f32 sums round to bf16 before any output, which hides a
//! reordering's last-bit differences).

use smelt_codegen::kernels::Kernel;
use smelt_codegen::PRELUDE;
use smelt_emulate::{BlockOrder, Checker, EmuError, Landing, Schedule};
use smelt_ir::DType;

use super::{case_steps, emulated, from_storage, out_dtype, prepare, residual, Case, Run};

/// What an injected fault must produce.
#[derive(Clone, Copy, Debug)]
enum Caught {
    /// ThreadSanitizer reports a data race.
    Race,
    /// A race report, copies never waited for, or a wrong result.
    Copies,
    /// AddressSanitizer's report of this kind.
    Bounds(&'static str),
    /// The output differs from `ir::eval` beyond the tolerance.
    Wrong,
    /// A split-K counter is not zero after the launch.
    CounterLeft,
}

/// The `nth` occurrence of `from` in the kernel body replaced by `to`; `split` says whether the
/// fault is injected into the split-K case (else the plain one).
struct Fault {
    name: &'static str,
    from: &'static str,
    nth: usize,
    to: &'static str,
    split: bool,
    caught: Caught,
}

const FAULTS: [Fault; 6] = [
    Fault {
        name: "the K loop's barrier dropped",
        from: "__syncthreads();",
        nth: 0,
        to: "",
        split: false,
        caught: Caught::Race,
    },
    Fault {
        name: "the end-of-tile barrier dropped",
        from: "__syncthreads();",
        nth: 1,
        to: "",
        split: false,
        caught: Caught::Race,
    },
    Fault {
        name: "wait_group off by one",
        from: "SMELT_CP_ASYNC_WAIT(STAGES - 2u);",
        nth: 0,
        to: "SMELT_CP_ASYNC_WAIT(STAGES - 1u);",
        split: false,
        caught: Caught::Copies,
    },
    Fault {
        name: "mma B registers swapped",
        from: "sum[mi][j], a[mi], b[j][0], b[j][1]",
        nth: 0,
        to: "sum[mi][j], a[mi], b[j][1], b[j][0]",
        split: false,
        caught: Caught::Wrong,
    },
    Fault {
        name: "rows past M of the ragged tile stored",
        from: "if (r >= M || col >= N_OUT) continue;",
        nth: 0,
        to: "if (col >= N_OUT) continue;",
        split: false,
        caught: Caught::Bounds("heap-buffer-overflow"),
    },
    Fault {
        name: "split-K's counter not reset by the last block",
        from: "if (tid == 0u) counters[tile] = 0u;",
        nth: 0,
        to: "",
        split: true,
        caught: Caught::CounterLeft,
    },
];

/// Whether `got` is right: finite, and within 1% of `want` over the whole tensor (the
/// correct kernel's error is a few storage ulps; these faults give order-one errors).
fn compare_within(got: &[f32], want: &[f32]) -> bool {
    let d2: f64 = got.iter().zip(want).map(|(g, w)| ((g - w) as f64).powi(2)).sum();
    let w2: f64 = want.iter().map(|w| (*w as f64).powi(2)).sum();
    got.iter().all(|v| v.is_finite()) && (d2 / w2.max(f64::MIN_POSITIVE)).sqrt() < 1e-2
}

fn inject(kernel: Kernel, f: &Fault) -> Kernel {
    let body = kernel.source.strip_prefix(PRELUDE).expect("a kernel source starts with the prelude");
    let at =
        body.match_indices(f.from).nth(f.nth).unwrap_or_else(|| panic!("{}: no {:?} #{}", f.name, f.from, f.nth)).0;
    let source = format!("{PRELUDE}{}{}{}", &body[..at], f.to, &body[at + f.from.len()..]);
    Kernel { source, ..kernel }
}

#[test]
fn injected_faults_are_caught() {
    // T = 130: two row tiles, the second of 2 rows, both on one block (the ring reused
    // across tiles: the end-of-tile barrier matters); the split case splits K in 3.
    // K = 128: 4 steps, so the last reads stage 0, which the next tile's prologue refills.
    let plain = Case::new("fault_plain", DType::BF16, 128, 128, Some(residual(DType::BF16)));
    let split = Case::new("fault_split", DType::BF16, 384, 64, Some(residual(DType::BF16)));
    let (plain_run, split_run) = (prepare(&plain, 130, Some(1), 0xfa), prepare(&split, 130, None, 0xfb));
    let pick = |f: &Fault| -> (&Case, &Run) {
        if f.split {
            (&split, &split_run)
        } else {
            (&plain, &plain_run)
        }
    };
    let kernels: Vec<_> = FAULTS.iter().map(|f| emulated::source(&inject(pick(f).0.kernel(), f))).collect();
    let Some(bounds) = emulated::build(&kernels, Checker::Bounds) else { return };
    let Some(races) = emulated::build(&kernels, Checker::Races) else { return };
    let seeded = Schedule { landing: Landing::Random(3), block_order: BlockOrder::Reversed };
    for (i, f) in FAULTS.iter().enumerate() {
        let (case, run) = pick(f);
        // The output after the first launch, and whether a counter was left nonzero.
        let go = |emu: &smelt_emulate::Emulator, schedule| -> Result<(Vec<f32>, bool), EmuError> {
            let (buffers, pointers, steps) = case_steps(i, case, run);
            let dumps = emu.run_steps(&buffers, &pointers, &steps, schedule)?;
            let left = f.split && dumps[2].iter().any(|&b| b != 0);
            Ok((from_storage(out_dtype(case), &dumps[1]), left))
        };
        let (plain_out, raced) = (go(&bounds, Schedule::default()), go(&races, seeded));
        type Outcome = Result<(Vec<f32>, bool), EmuError>;
        let wrong = |r: &Outcome| matches!(r, Ok((y, _)) if !compare_within(y, &run.want));
        let says = |r: &Outcome, what: &str| matches!(r, Err(e) if e.to_string().contains(what));
        let caught = match f.caught {
            Caught::Race => says(&raced, "ThreadSanitizer: data race"),
            Caught::Copies => {
                let unwaited = "cp.async copies still in flight";
                says(&raced, "data race") || says(&plain_out, unwaited) || says(&raced, unwaited) || wrong(&plain_out)
            }
            Caught::Bounds(kind) => says(&plain_out, kind),
            Caught::Wrong => wrong(&plain_out),
            Caught::CounterLeft => matches!(&plain_out, Ok((_, true))),
        };
        let outcome = |r: &Outcome| match r {
            Ok(_) if wrong(r) => "ran, wrong output".to_string(),
            Ok(_) => "ran, right output".to_string(),
            Err(e) => e.to_string().lines().take(3).collect::<Vec<_>>().join(" | "),
        };
        eprintln!("{}: bounds build: {}; races build: {}", f.name, outcome(&plain_out), outcome(&raced));
        assert!(caught, "{} was not caught as {:?}", f.name, f.caught);
    }
}
