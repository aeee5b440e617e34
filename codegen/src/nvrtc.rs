//! The NVRTC front: CUDA C to PTX at run time through `cudarc`, loading libnvrtc dynamically so
//! smelt builds and runs on machines without CUDA. Errors carry the kernel's name and NVRTC's
//! log. No include paths are ever passed: kernels are self-contained.

use std::ffi::c_int;

/// A GPU architecture to compile for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// Ampere (A100).
    Sm80,
    /// Hopper (H100, H200).
    Sm90,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Sm80, Arch::Sm90];

    pub fn name(self) -> &'static str {
        match self {
            Arch::Sm80 => "sm_80",
            Arch::Sm90 => "sm_90",
        }
    }

    pub fn parse(s: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NvrtcError {
    #[error("NVRTC (libnvrtc.so) was not found: install the CUDA toolkit or NVIDIA's nvidia-cuda-nvrtc wheel and put its lib folder on LD_LIBRARY_PATH")]
    Missing,
    #[error("NVRTC failed to compile kernel {kernel} for {arch}:\n{log}")]
    Compile { kernel: String, arch: &'static str, log: String },
    #[error("NVRTC failed on kernel {kernel}: {message}")]
    Other { kernel: String, message: String },
}

/// A handle proving libnvrtc is loadable.
#[derive(Clone, Copy, Debug)]
pub struct Nvrtc {
    version: (i32, i32),
}

impl Nvrtc {
    /// Finds libnvrtc. Probing first matters: cudarc's dynamic loading panics on first use
    /// when the library is missing.
    pub fn load() -> Result<Nvrtc, NvrtcError> {
        // SAFETY: only tries to dlopen the library by its usual names.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(NvrtcError::Missing);
        }
        let (mut major, mut minor): (c_int, c_int) = (0, 0);
        // SAFETY: the library is present; nvrtcVersion writes two ints.
        unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
        Ok(Nvrtc { version: (major, minor) })
    }

    /// NVRTC's (major, minor) version: part of the compiled-module cache key.
    pub fn version(&self) -> (i32, i32) {
        self.version
    }

    /// Compiles `source` (one kernel, `kernel` is its entry point) to PTX for `arch`.
    pub fn compile(&self, kernel: &str, source: &str, arch: Arch) -> Result<String, NvrtcError> {
        if source.contains('\0') {
            return Err(NvrtcError::Other { kernel: kernel.to_string(), message: "source contains a NUL byte".into() });
        }
        let opts = cudarc::nvrtc::CompileOptions {
            arch: Some(arch.name()),
            name: Some(format!("{kernel}.cu")),
            options: vec!["--std=c++17".to_string()],
            ..Default::default()
        };
        let t0 = std::time::Instant::now();
        match cudarc::nvrtc::compile_ptx_with_opts(source, opts) {
            Ok(ptx) => {
                tracing::debug!(kernel, arch = arch.name(), ms = t0.elapsed().as_secs_f64() * 1e3, "NVRTC compiled");
                Ok(ptx.to_src())
            }
            Err(cudarc::nvrtc::CompileError::CompileError { log, .. }) => Err(NvrtcError::Compile {
                kernel: kernel.to_string(),
                arch: arch.name(),
                log: log.to_string_lossy().into_owned(),
            }),
            Err(e) => Err(NvrtcError::Other { kernel: kernel.to_string(), message: format!("{e:?}") }),
        }
    }
}
