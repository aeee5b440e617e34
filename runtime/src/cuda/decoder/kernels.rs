//! Kernels on the device: compiled with NVRTC (through the module cache), loaded a module
//! each, and launched with their parameters by value.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{sys, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;
use smelt_codegen::{Kernel, ModuleCache, Nvrtc};

use super::JitReport;
use crate::cuda::device::{check, Gpu};
use crate::cuda::CudaError;
use crate::progress::{Task, Unit};

/// Launches `function` (compiled from `kernel`) on `grid` blocks with `params` (device
/// addresses, by value), optionally as a programmatic dependent launch: every kernel waits on
/// its predecessor (SMELT_GRID_WAIT) before touching what it wrote, which makes that safe.
/// `what` names the launch in an error (built only then: a step launches hundreds).
///
/// # Safety
/// `params` must match the kernel's parameter list in order and number, each a device address
/// inside a live buffer of the size the kernel reads or writes there.
pub(crate) unsafe fn launch_raw(
    gpu: &Gpu,
    function: &CudaFunction,
    kernel: &Kernel,
    grid: u32,
    params: &[u64],
    pdl: bool,
    what: &dyn Fn() -> String,
) -> Result<(), CudaError> {
    let mut values = params.to_vec();
    let mut args: Vec<*mut std::ffi::c_void> = values.iter_mut().map(|v| v as *mut u64 as *mut _).collect();
    // SAFETY: a plain C struct; zero is a valid bit pattern for every field.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let config = sys::CUlaunchConfig {
        gridDimX: grid,
        gridDimY: 1,
        gridDimZ: 1,
        blockDimX: kernel.launch.block,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: kernel.launch.shared_bytes,
        hStream: gpu.cu_stream(),
        attrs: &mut attr,
        numAttrs: u32::from(pdl),
    };
    // SAFETY: the caller vouches for the parameters; the config, attribute and argument array
    // outlive the call.
    let r = unsafe {
        sys::cuLaunchKernelEx(&config, function.cu_function(), args.as_mut_ptr(), std::ptr::null_mut()).result()
    };
    r.or_else(|e| check(&what(), Err(e)))
}

/// Loads `kernel`'s compiled `ptx` as a module of its own, allowing the dynamic shared memory
/// it asks for.
pub(crate) fn load_function(gpu: &Gpu, k: &Kernel, ptx: String) -> Result<(Arc<CudaModule>, CudaFunction), CudaError> {
    let module = check(&format!("loading the module of kernel {}", k.name), gpu.ctx.load_module(Ptx::from_src(ptx)))?;
    let f = check(&format!("finding kernel {}", k.name), module.load_function(&k.name))?;
    if k.launch.shared_bytes > 48 * 1024 {
        let attr = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        check(
            &format!("raising the shared memory of {}", k.name),
            f.set_attribute(attr, k.launch.shared_bytes as i32),
        )?;
    }
    Ok((module, f))
}

/// Per kernel list its functions in order; the modules that hold them; how long it took.
pub(crate) type LoadedKernels = (Vec<Vec<CudaFunction>>, Vec<Arc<CudaModule>>, JitReport);

/// Compiles and loads every distinct kernel of `lists` (each a program's kernels, say); returns
/// per list the functions in its order.
pub(crate) fn load_kernels(
    gpu: &Gpu,
    lists: &[&[Kernel]],
    cache: Option<&ModuleCache>,
) -> Result<LoadedKernels, CudaError> {
    let t0 = Instant::now();
    let nvrtc = Nvrtc::load().map_err(|e| CudaError::Nvrtc(e.to_string()))?;
    let mut jit = JitReport::default();
    let mut modules = Vec::new();
    let mut loaded: HashMap<&str, CudaFunction> = HashMap::new();
    let mut per_program = Vec::new();
    let distinct: std::collections::HashSet<&str> =
        lists.iter().flat_map(|l| l.iter()).map(|k| k.source.as_str()).collect();
    let task = Task::begin("compiling kernels", distinct.len() as u64, Unit::Items);
    for list in lists {
        let mut functions = Vec::new();
        for k in list.iter() {
            if let Some(f) = loaded.get(k.source.as_str()) {
                functions.push(f.clone());
                continue;
            }
            task.advance(1);
            let ptx = match cache {
                Some(cache) => {
                    let (ptx, hit) = cache
                        .compile(&nvrtc, &k.name, &k.source, gpu.arch())
                        .map_err(|e| CudaError::Nvrtc(e.to_string()))?;
                    jit.cached += usize::from(hit);
                    ptx
                }
                None => nvrtc.compile(&k.name, &k.source, gpu.arch()).map_err(|e| CudaError::Nvrtc(e.to_string()))?,
            };
            let (module, f) = load_function(gpu, k, ptx)?;
            jit.kernels += 1;
            modules.push(module);
            loaded.insert(k.source.as_str(), f.clone());
            functions.push(f);
        }
        per_program.push(functions);
    }
    gpu.synchronize("loading modules")?;
    jit.seconds = t0.elapsed().as_secs_f64();
    Ok((per_program, modules, jit))
}
