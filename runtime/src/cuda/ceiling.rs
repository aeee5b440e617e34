//! The compute ceiling a benchmark sets its compute-bound figures against: the rate of smelt's
//! own tensor-core GEMM on a large square problem. (With no cuBLAS in the project, this is
//! the best rate smelt's kernels reach, not the device's peak; the bench labels it so.)

use smelt_codegen::kernels::gemm::{gemm_unsupported, linear_gemm, GemmSpec};
use smelt_codegen::kernels::View;
use smelt_codegen::{Kernel, Nvrtc};
use smelt_ir::{Bindings, DType};

use super::decoder::{launch_raw, load_function};
use super::device::Gpu;
use super::CudaError;

/// FLOP/s of `y[m, n] = x[m, k] @ w[n, k]^T` in bf16 with f32 accumulation at m = n = k =
/// `size` (a multiple of 128), the median of `reps` timed runs after one warm-up.
pub fn gemm_rate(gpu: &Gpu, size: usize, reps: usize) -> Result<f64, CudaError> {
    let kernel = gemm_ceiling_kernel(size)?;
    let nvrtc = Nvrtc::load().map_err(|e| CudaError::Nvrtc(e.to_string()))?;
    let ptx = nvrtc.compile(&kernel.name, &kernel.source, gpu.arch()).map_err(|e| CudaError::Nvrtc(e.to_string()))?;
    let (_module, function) = load_function(gpu, &kernel, ptx)?;
    let bytes = 2 * size * size;
    let (x, w, y) = (
        gpu.alloc(bytes, "the GEMM ceiling")?,
        gpu.alloc(bytes, "the GEMM ceiling")?,
        gpu.alloc(bytes, "the GEMM ceiling")?,
    );
    // 0x3c3c in bf16 is about 0.0115: finite products whatever the sum order.
    gpu.fill(x.ptr(), 0x3c, bytes, "filling the GEMM ceiling")?;
    gpu.fill(w.ptr(), 0x3c, bytes, "filling the GEMM ceiling")?;
    // smelt_step: batch 1, T = size rows, no cache.
    let step = gpu.alloc(48, "the GEMM ceiling's step")?;
    let words: [u32; 12] = [1, size as u32, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0];
    gpu.upload(step.ptr(), &words, "writing the GEMM ceiling's step")?;
    let grid = kernel.launch.grid.blocks(&Bindings { batch: 1, new_tokens: size, cached_tokens: 0 });
    let params = [x.ptr(), w.ptr(), y.ptr(), step.ptr()];
    let run = || {
        // SAFETY: the parameters are the kernel's (x, w, y, step), each a live buffer of the
        // size an m = n = k = `size` GEMM reads or writes.
        unsafe { launch_raw(gpu, &function, &kernel, grid, &params, false, &|| "running the GEMM ceiling".into()) }
    };
    run()?;
    gpu.synchronize("warming up the GEMM ceiling")?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t0 = std::time::Instant::now();
        run()?;
        gpu.synchronize("timing the GEMM ceiling")?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(2.0 * (size as f64).powi(3) / times[times.len() / 2])
}

/// The kernel [`gemm_rate`] times: a plain bf16 GEMM with `n = k = size`.
pub fn gemm_ceiling_kernel(size: usize) -> Result<Kernel, CudaError> {
    if size == 0 || size % 128 != 0 {
        return Err(CudaError::Unsupported(format!("a GEMM ceiling of size {size} (a multiple of 128 is needed)")));
    }
    let spec = GemmSpec {
        k: size,
        n: size,
        dtype: DType::BF16,
        x_view: View::contiguous(size),
        epilogue: None,
        extras: &[],
        out_dtype: DType::BF16,
        // A large square has tiles enough for every SM, and the launch passes (x, w, y, step).
        split_k: false,
    };
    if let Some(why) = gemm_unsupported(&spec) {
        return Err(CudaError::Unsupported(why));
    }
    Ok(linear_gemm("smelt_gemm_ceiling", &spec))
}
