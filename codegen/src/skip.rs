//! What a test does when something it needs is not on this machine. A tool the tests need
//! (NVRTC, ptxas, a C or C++ compiler) is required under `CI=true`: its absence fails the test,
//! so CI cannot pass while checking nothing. Only a missing GPU may skip a test there; each such
//! skip is also appended to the file `$SMELT_SKIP_LOG` names, which `.ci/run` reports in its
//! closing line. The "skipped" line goes straight to the process's stderr, past the test
//! harness's capture (which hides a passing test's `eprintln!`), so a plain `cargo test` shows
//! it too.

use std::io::Write as _;

/// Whether the tests run under CI (`CI=true`, as `.ci/run` sets it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A tool `test` needs is missing (`why` says which): a failure under CI, else a "skipped" line.
pub fn missing_tool(test: &str, why: &str) {
    assert!(!in_ci(), "CI=true but {test} cannot run: {why}");
    report(test, why);
}

/// `test` needs a GPU and this machine has none (`why`): reported, never a failure.
pub fn missing_gpu(test: &str, why: &str) {
    report(test, why);
    if let Some(path) = std::env::var_os("SMELT_SKIP_LOG") {
        let line = format!("{test}: {why}\n");
        let logged = std::fs::OpenOptions::new().create(true).append(true).open(&path);
        // The log is a report; a test does not fail over it.
        let _ = logged.and_then(|mut f| f.write_all(line.as_bytes()));
    }
}

/// Writes "skipped TEST: WHY" to stderr itself: `eprintln!` inside a test is captured and shown
/// only when the test fails, and a skip passes.
fn report(test: &str, why: &str) {
    let _ = std::io::stderr().write_all(format!("skipped {test}: {why}\n").as_bytes());
}
