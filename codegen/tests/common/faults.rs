//! Faults injected into a kernel's generated source, and what each must produce when the
//! kernel runs on the emulator: the proof that its checkers catch what matters.

use smelt_codegen::{Kernel, PRELUDE};
use smelt_emulate::EmuError;

/// What an injected fault must produce.
#[derive(Clone, Copy, Debug)]
pub enum Caught {
    /// ThreadSanitizer reports a data race.
    Race,
    /// A stage misused: a race report, the emulator's report of copies never waited for, or
    /// (copies landing at their wait) a read of the stage before they land: of memory nothing
    /// wrote, or a wrong result.
    Copies,
    /// AddressSanitizer's report of this kind.
    Bounds(&'static str),
    /// The output differs from `ir::eval` beyond the tolerance.
    Wrong,
    /// A split-K counter is not zero after the launch.
    CounterLeft,
    /// The emulator's report of a read of memory nothing wrote (the AddressSanitizer build
    /// runs twice, such memory holding other bytes the second time).
    Unwritten,
}

/// A fault: the `nth` occurrence of `from` in the kernel's body replaced by `to`.
pub struct Fault {
    pub name: &'static str,
    pub from: &'static str,
    pub nth: usize,
    pub to: &'static str,
    pub caught: Caught,
}

impl Fault {
    /// `kernel` with the fault in its body (after the prelude).
    pub fn inject(&self, kernel: Kernel) -> Kernel {
        let body = kernel.source.strip_prefix(PRELUDE).expect("a kernel source starts with the prelude");
        let found = body.match_indices(self.from).nth(self.nth);
        let at = found.unwrap_or_else(|| panic!("{}: no {:?} #{}", self.name, self.from, self.nth)).0;
        let source = format!("{PRELUDE}{}{}{}", &body[..at], self.to, &body[at + self.from.len()..]);
        Kernel { source, ..kernel }
    }

    /// Asserts the fault was caught as it must be, from the run under AddressSanitizer
    /// (`bounds`: copies landing at their wait, blocks in order) and under ThreadSanitizer
    /// (`races`); `wrong` judges an output, `counter_left` whether a split-K counter stayed set.
    pub fn assert_caught<T>(
        &self,
        bounds: &Result<T, EmuError>,
        races: &Result<T, EmuError>,
        wrong: impl Fn(&T) -> bool,
        counter_left: impl Fn(&T) -> bool,
    ) {
        let says = |r: &Result<T, EmuError>, what: &str| matches!(r, Err(e) if e.to_string().contains(what));
        let is_wrong = |r: &Result<T, EmuError>| matches!(r, Ok(out) if wrong(out));
        let race = says(races, "ThreadSanitizer: data race");
        let unwritten = says(bounds, "reads of memory nothing wrote");
        let caught = match self.caught {
            Caught::Race => race,
            Caught::Copies => {
                let unwaited = "cp.async copies still in flight";
                race || says(bounds, unwaited) || says(races, unwaited) || unwritten || is_wrong(bounds)
            }
            Caught::Bounds(kind) => says(bounds, kind),
            Caught::Wrong => is_wrong(bounds),
            Caught::CounterLeft => matches!(bounds, Ok(out) if counter_left(out)),
            Caught::Unwritten => unwritten,
        };
        let outcome = |r: &Result<T, EmuError>| match r {
            Ok(out) => format!("ran, {} output", if wrong(out) { "wrong" } else { "right" }),
            Err(e) => e.to_string().lines().take(3).collect::<Vec<_>>().join(" | "),
        };
        eprintln!("{}: bounds build: {}; races build: {}", self.name, outcome(bounds), outcome(races));
        assert!(caught, "{} was not caught as {:?}", self.name, self.caught);
    }
}
