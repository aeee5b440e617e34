//! NCCL through `cudarc`, loaded at run time like the driver, so smelt builds and runs where
//! libnccl is absent and says so when a command needs it. A [`NcclGroup`] is the communicators
//! of a tensor-parallel group of GPUs driven from this process, one rank per device, in rank
//! order; its collectives are enqueued on each rank's stream (and so may be captured in a CUDA
//! graph with the kernels around them).

use cudarc::nccl::{result, sys};
use smelt_ir::DType;

use super::{CudaError, DeviceBuffer, Gpu};

/// One communicator per rank; rank `r` drives `gpus[r]`.
pub struct NcclGroup<'g> {
    gpus: Vec<&'g Gpu>,
    comms: Vec<sys::ncclComm_t>,
}

fn nccl_error(what: &str, e: result::NcclError) -> CudaError {
    CudaError::Driver { what: format!("{what} (NCCL)"), message: format!("{e:?}") }
}

impl<'g> NcclGroup<'g> {
    /// The group of `gpus` (each a different device), rank `r` on `gpus[r]`.
    pub fn new(gpus: Vec<&'g Gpu>) -> Result<NcclGroup<'g>, CudaError> {
        // SAFETY: only tries to dlopen libnccl by its usual names (cudarc's dynamic loading
        // panics on first use when it is missing).
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::Unsupported(
                "NCCL (libnccl.so.2) was not found: tensor parallelism on GPUs needs it (pip install nvidia-nccl-cu13, or the CUDA toolkit's NCCL)".into(),
            ));
        }
        let ordinals: Vec<i32> = gpus.iter().map(|g| g.ctx.ordinal() as i32).collect();
        let mut comms = vec![std::ptr::null_mut(); gpus.len()];
        // SAFETY: `comms` has room for one communicator per listed device.
        unsafe { result::comm_init_all(comms.as_mut_ptr(), ordinals.len() as i32, ordinals.as_ptr()) }
            .map_err(|e| nccl_error("creating the communicators", e))?;
        Ok(NcclGroup { gpus, comms })
    }

    pub fn world(&self) -> usize {
        self.comms.len()
    }

    /// Sums `elements` values of `dtype` in place across the ranks: `buffers[r]` is rank `r`'s,
    /// on its device. Enqueued on each rank's stream, as one NCCL group.
    pub fn all_reduce_sum(&self, buffers: &[&DeviceBuffer], elements: usize, dtype: DType) -> Result<(), CudaError> {
        let datatype = match dtype {
            DType::F32 => sys::ncclDataType_t::ncclFloat32,
            DType::BF16 => sys::ncclDataType_t::ncclBfloat16,
            DType::F16 => sys::ncclDataType_t::ncclFloat16,
            DType::I32 => return Err(CudaError::Unsupported("an all-reduce of i32".into())),
        };
        if buffers.len() != self.world() {
            return Err(CudaError::Unsupported(format!("{} buffers for {} ranks", buffers.len(), self.world())));
        }
        if let Some(b) = buffers.iter().find(|b| b.bytes() < elements * dtype.size_bytes()) {
            return Err(CudaError::Unsupported(format!(
                "an all-reduce of {elements} values over a buffer of {} bytes",
                b.bytes()
            )));
        }
        result::group_start().map_err(|e| nccl_error("starting a group", e))?;
        for ((buffer, &comm), gpu) in buffers.iter().zip(&self.comms).zip(&self.gpus) {
            let ptr = buffer.ptr() as *mut std::ffi::c_void;
            // SAFETY: the buffer holds `elements` values of `dtype` on this rank's device (checked
            // above); the stream is the rank's own.
            unsafe {
                result::all_reduce(
                    ptr,
                    ptr,
                    elements,
                    datatype,
                    sys::ncclRedOp_t::ncclSum,
                    comm,
                    gpu.stream.cu_stream() as _,
                )
            }
            .map_err(|e| nccl_error("enqueueing an all-reduce", e))?;
        }
        result::group_end().map_err(|e| nccl_error("ending a group", e))?;
        Ok(())
    }
}

impl Drop for NcclGroup<'_> {
    fn drop(&mut self) {
        for &comm in &self.comms {
            // SAFETY: each communicator was created by `new` and is destroyed once.
            let _ = unsafe { result::comm_destroy(comm) };
        }
    }
}
