//! The device: a CUDA context and stream through `cudarc`'s driver API, loaded dynamically so
//! that smelt builds and runs on machines without CUDA, and plain device allocations that free
//! themselves. Every driver call's result is checked and named.

use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext, CudaStream};
use smelt_codegen::Arch;

use super::CudaError;

/// The context and the one stream everything runs on.
pub struct Gpu {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    name: String,
    arch: Arch,
}

/// Wraps a driver result with what was being done.
pub(crate) fn check<T>(what: &str, r: Result<T, result::DriverError>) -> Result<T, CudaError> {
    r.map_err(|e| CudaError::Driver { what: what.to_string(), message: describe(e) })
}

fn describe(e: result::DriverError) -> String {
    match e.error_string() {
        Ok(s) => format!("{:?}: {}", e.0, s.to_string_lossy()),
        Err(_) => format!("{:?}", e.0),
    }
}

/// What [`probe`] found.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub name: String,
    pub total_bytes: usize,
    pub free_bytes: usize,
}

/// Checks that a driver and device `ordinal` exist and reads its name and memory: what a
/// command that needs a GPU asks before it loads weights. Allocates nothing on the device.
pub fn probe(ordinal: usize) -> Result<DeviceInfo, CudaError> {
    let gpu = Gpu::open(ordinal)?;
    let (free_bytes, total_bytes) = gpu.memory()?;
    Ok(DeviceInfo { name: gpu.name().to_string(), total_bytes, free_bytes })
}

impl Gpu {
    /// Opens device `ordinal`. Probes for libcuda first: cudarc's dynamic loading panics on
    /// first use when the library is missing.
    pub fn open(ordinal: usize) -> Result<Gpu, CudaError> {
        // SAFETY: only tries to dlopen the driver library by its usual names.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::NoDriver);
        }
        let count = check("counting devices", CudaContext::device_count())?;
        if count <= 0 || ordinal >= count as usize {
            return Err(CudaError::NoDevice { ordinal, count: count.max(0) as usize });
        }
        let ctx = check("creating the context", CudaContext::new(ordinal))?;
        // Our buffers are raw allocations used on one stream: cudarc's per-slice events are
        // not needed, and would add work inside captured graphs.
        // SAFETY: nothing has been allocated through the safe API yet.
        unsafe { ctx.disable_event_tracking() };
        let stream = check("creating a stream", ctx.new_stream())?;
        let name = check("reading the device name", ctx.name())?;
        let (major, minor) = check("reading the compute capability", ctx.compute_capability())?;
        let arch = match (major, minor) {
            (9, _) => Arch::Sm90,
            (8, _) => Arch::Sm80,
            _ => {
                return Err(CudaError::Unsupported(format!(
                    "{name} has compute capability {major}.{minor}; smelt's kernels target sm_80 and sm_90"
                )))
            }
        };
        Ok(Gpu { ctx, stream, name, arch })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The architecture kernels are compiled for (from the device's compute capability).
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// Free and total device memory, in bytes.
    pub fn memory(&self) -> Result<(usize, usize), CudaError> {
        check("reading free memory", self.ctx.mem_get_info())
    }

    pub(crate) fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// A device buffer of `bytes` bytes, uninitialized; `what` names it in an out-of-memory error.
    pub fn alloc(&self, bytes: usize, what: &str) -> Result<DeviceBuffer, CudaError> {
        check("binding the context", self.ctx.bind_to_thread())?;
        // SAFETY: a plain allocation; freed once in Drop.
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }.map_err(|e| {
            let free = self.memory().map(|(f, _)| f).unwrap_or(0);
            CudaError::OutOfMemory { what: what.to_string(), bytes, free, message: describe(e) }
        })?;
        Ok(DeviceBuffer { ptr, bytes, ctx: self.ctx.clone() })
    }

    /// Copies `src` to device address `dst` (stream-ordered).
    pub fn upload<T: Copy>(&self, dst: u64, src: &[T], what: &str) -> Result<(), CudaError> {
        // SAFETY: callers pass addresses inside a live DeviceBuffer with room for `src`. A
        // pageable source is staged by the driver before the call returns.
        check(what, unsafe { result::memcpy_htod_async(dst, src, self.cu_stream()) })
    }

    /// Copies device memory at `src` into `dst` and waits for it.
    pub fn download<T: Copy>(&self, dst: &mut [T], src: u64, what: &str) -> Result<(), CudaError> {
        // SAFETY: as for upload; the stream is synchronized before `dst` is read.
        check(what, unsafe { result::memcpy_dtoh_async(dst, src, self.cu_stream()) })?;
        self.synchronize(what)
    }

    /// Sets `bytes` bytes at `dst` to `value` (stream-ordered).
    pub fn fill(&self, dst: u64, value: u8, bytes: usize, what: &str) -> Result<(), CudaError> {
        // SAFETY: as for upload.
        check(what, unsafe { result::memset_d8_async(dst, value, bytes, self.cu_stream()) })
    }

    /// Device-to-device copy bandwidth in bytes per second, counting bytes read plus bytes
    /// written: the memory-bound ceiling, measured over `reps` copies of `bytes`.
    pub fn copy_bandwidth(&self, bytes: usize, reps: usize) -> Result<f64, CudaError> {
        let (src, dst) = (self.alloc(bytes, "the bandwidth test")?, self.alloc(bytes, "the bandwidth test")?);
        self.fill(src.ptr(), 0x3c, bytes, "filling the bandwidth test")?;
        let copy = || {
            // SAFETY: both buffers are live and `bytes` long.
            check("copying on the device", unsafe {
                result::memcpy_dtod_async(dst.ptr(), src.ptr(), bytes, self.cu_stream())
            })
        };
        copy()?;
        self.synchronize("warming up the copy")?;
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            copy()?;
        }
        self.synchronize("timing the copy")?;
        Ok((2 * bytes * reps) as f64 / t0.elapsed().as_secs_f64())
    }

    pub fn synchronize(&self, what: &str) -> Result<(), CudaError> {
        check(what, self.stream.synchronize())
    }
}

/// A device allocation, freed on drop.
pub struct DeviceBuffer {
    ptr: sys::CUdeviceptr,
    bytes: usize,
    ctx: Arc<CudaContext>,
}

impl DeviceBuffer {
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: allocated by malloc_sync and freed once; free_sync waits for work using it.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}
