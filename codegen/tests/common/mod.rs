//! Shared by the kernel tests: the NVRTC gate (without libnvrtc a test says so and passes,
//! except under `CI=true`, where .ci/run installs it and its absence is a failure) and the
//! check every generated kernel must pass.

#![allow(dead_code)]

pub mod emulated;
pub mod epilogues;
pub mod faults;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use smelt_codegen::kernels::Kernel;
use smelt_codegen::ptxas::{find_ptxas, resources};
use smelt_codegen::{Arch, Nvrtc};

pub use smelt_codegen::skip::in_ci;

/// NVRTC, and ptxas when it is on PATH (required under CI).
/// The running test's name (libtest names each test's thread after it).
pub fn current_test() -> String {
    std::thread::current().name().unwrap_or("a test").to_string()
}

pub struct Toolchain {
    pub nvrtc: Nvrtc,
    pub ptxas: Option<PathBuf>,
}

pub fn toolchain() -> Option<Toolchain> {
    let nvrtc = match Nvrtc::load() {
        Ok(n) => n,
        Err(e) => {
            smelt_codegen::skip::missing_tool(&current_test(), &e.to_string());
            return None;
        }
    };
    let ptxas = find_ptxas();
    if ptxas.is_none() {
        assert!(!in_ci(), "CI=true but ptxas is not on PATH (nor $SMELT_PTXAS)");
        eprintln!("ptxas not found: compiling to PTX only, no spill check");
    }
    Some(Toolchain { nvrtc, ptxas })
}

impl Toolchain {
    /// `k` compiles with NVRTC for every architecture, its PTX has the entry point, and
    /// ptxas (when present) reports no local-memory spills.
    pub fn check(&self, k: &Kernel) {
        for arch in Arch::ALL {
            let ptx = self.nvrtc.compile(&k.name, &k.source, arch).unwrap_or_else(|e| panic!("{e}"));
            assert!(ptx.contains(&format!(".entry {}", k.name)), "{}: no entry point in the PTX", k.name);
            let Some(ptxas) = &self.ptxas else { continue };
            let r = resources(ptxas, &ptx, arch).unwrap_or_else(|e| panic!("{}: {e}", k.name));
            let r = r.iter().find(|r| r.kernel == k.name).unwrap_or_else(|| panic!("{}: not in ptxas report", k.name));
            assert_eq!((r.spill_store_bytes, r.spill_load_bytes), (0, 0), "{} spills on {}", k.name, arch.name());
            eprintln!(
                "{} {}: {} registers, {} bytes static + {} dynamic smem, block {}, no spills",
                k.name,
                arch.name(),
                r.registers,
                r.shared_bytes,
                k.launch.shared_bytes,
                k.launch.block
            );
        }
    }

    /// Checks every kernel, as many at once as there are CPUs (NVRTC and ptxas each use one),
    /// and says how many compiled. A kernel that another test of this binary has checked (the
    /// same name and source) is not checked again: its test fails if it fails.
    pub fn check_all(&self, kernels: &[Kernel]) {
        static CHECKED: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());
        let fresh: Vec<&Kernel> = {
            let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
            kernels.iter().filter(|k| checked.insert((k.name.clone(), k.source.clone()))).collect()
        };
        let next = AtomicUsize::new(0);
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(fresh.len());
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    while let Some(k) = fresh.get(next.fetch_add(1, Ordering::Relaxed)) {
                        self.check(k);
                    }
                });
            }
        });
        eprintln!(
            "NVRTC {:?}: {} kernels compiled for {} archs ({} checked before)",
            self.nvrtc.version(),
            fresh.len(),
            Arch::ALL.len(),
            kernels.len() - fresh.len()
        );
    }
}
