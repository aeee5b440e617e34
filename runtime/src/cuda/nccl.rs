//! NCCL through `cudarc`, loaded at run time like the driver, so smelt builds and runs where
//! libnccl is absent and says so when a command needs it. A [`NcclGroup`] is the communicators
//! of a tensor-parallel group of GPUs driven from this process, one rank per device, in rank
//! order; its collectives are enqueued on each rank's stream (and so may be captured in a CUDA
//! graph with the kernels around them).

use std::sync::Arc;

use cudarc::driver::CudaStream;
use cudarc::nccl::{result, sys};
use smelt_ir::DType;

use super::{CudaError, DeviceBuffer, Gpu};

/// One communicator per rank; rank `r` enqueues on `streams[r]`.
pub struct NcclGroup {
    streams: Vec<Arc<CudaStream>>,
    comms: Vec<sys::ncclComm_t>,
}

/// One rank's side of a collective: the device address it sends from and the one it receives
/// into (the same for an all-reduce in place).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Transfer {
    pub send: u64,
    pub receive: u64,
}

fn nccl_error(what: &str, e: result::NcclError) -> CudaError {
    CudaError::Driver { what: format!("{what} (NCCL)"), message: format!("{e:?}") }
}

fn nccl_type(dtype: DType, what: &str) -> Result<sys::ncclDataType_t, CudaError> {
    match dtype {
        DType::F32 => Ok(sys::ncclDataType_t::ncclFloat32),
        DType::BF16 => Ok(sys::ncclDataType_t::ncclBfloat16),
        DType::F16 => Ok(sys::ncclDataType_t::ncclFloat16),
        DType::I32 => Err(CudaError::Unsupported(format!("{what} of i32"))),
    }
}

impl NcclGroup {
    /// The group of `gpus` (each a different device), rank `r` on `gpus[r]`.
    pub fn new(gpus: &[&Gpu]) -> Result<NcclGroup, CudaError> {
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
        Ok(NcclGroup { streams: gpus.iter().map(|g| g.stream.clone()).collect(), comms })
    }

    pub fn world(&self) -> usize {
        self.comms.len()
    }

    /// Sums `elements` values of `dtype` in place across the ranks: `buffers[r]` is rank `r`'s,
    /// on its device. Enqueued on each rank's stream, as one NCCL group.
    pub fn all_reduce_sum(&self, buffers: &[&DeviceBuffer], elements: usize, dtype: DType) -> Result<(), CudaError> {
        if let Some(b) = buffers.iter().find(|b| b.bytes() < elements * dtype.size_bytes()) {
            return Err(CudaError::Unsupported(format!(
                "an all-reduce of {elements} values over a buffer of {} bytes",
                b.bytes()
            )));
        }
        let transfers: Vec<Transfer> = buffers.iter().map(|b| Transfer { send: b.ptr(), receive: b.ptr() }).collect();
        // SAFETY: each buffer holds `elements` values (checked above) on its rank's device.
        unsafe { self.all_reduce_sum_at(&transfers, elements, dtype) }
    }

    /// Sums rank r's `elements` values at `transfers[r].send` across the ranks into
    /// `transfers[r].receive`, as one NCCL group.
    ///
    /// # Safety
    /// Each address must be on its rank's device, with room for `elements` values of `dtype`.
    pub(crate) unsafe fn all_reduce_sum_at(
        &self,
        transfers: &[Transfer],
        elements: usize,
        dtype: DType,
    ) -> Result<(), CudaError> {
        let datatype = nccl_type(dtype, "an all-reduce")?;
        self.each_rank(transfers, "an all-reduce", |t, comm, stream| {
            // SAFETY: the caller vouches for the addresses; the stream is the rank's own.
            unsafe {
                result::all_reduce(
                    t.send as *const _,
                    t.receive as *mut _,
                    elements,
                    datatype,
                    sys::ncclRedOp_t::ncclSum,
                    comm,
                    stream,
                )
            }
        })
    }

    /// Gathers every rank's `elements` values at `transfers[r].send` into each rank's
    /// `transfers[r].receive`, rank 0's part first, as one NCCL group.
    ///
    /// # Safety
    /// Each address must be on its rank's device; each send with room for `elements` values of
    /// `dtype`, each receive for `world` times as many.
    pub(crate) unsafe fn all_gather_at(
        &self,
        transfers: &[Transfer],
        elements: usize,
        dtype: DType,
    ) -> Result<(), CudaError> {
        let datatype = nccl_type(dtype, "an all-gather")?;
        self.each_rank(transfers, "an all-gather", |t, comm, stream| {
            // SAFETY: the caller vouches for the addresses; the stream is the rank's own.
            unsafe { result::all_gather(t.send as *const _, t.receive as *mut _, elements, datatype, comm, stream) }
        })
    }

    /// Enqueues `call` for every rank (its transfer, communicator and stream) as one group.
    fn each_rank(
        &self,
        transfers: &[Transfer],
        what: &str,
        call: impl Fn(&Transfer, sys::ncclComm_t, sys::cudaStream_t) -> Result<result::NcclStatus, result::NcclError>,
    ) -> Result<(), CudaError> {
        if transfers.len() != self.world() {
            return Err(CudaError::Unsupported(format!(
                "{what} of {} buffers over {} ranks",
                transfers.len(),
                self.world()
            )));
        }
        result::group_start().map_err(|e| nccl_error("starting a group", e))?;
        let mut enqueued = Ok(());
        for ((t, &comm), stream) in transfers.iter().zip(&self.comms).zip(&self.streams) {
            enqueued = call(t, comm, stream.cu_stream() as _)
                .map(|_| ())
                .map_err(|e| nccl_error(&format!("enqueueing {what}"), e));
            if enqueued.is_err() {
                break;
            }
        }
        // The group ends whatever failed inside it.
        let ended = result::group_end().map(|_| ()).map_err(|e| nccl_error("ending a group", e));
        enqueued.and(ended)
    }
}

impl Drop for NcclGroup {
    fn drop(&mut self) {
        for &comm in &self.comms {
            // SAFETY: each communicator was created by `new` and is destroyed once.
            let _ = unsafe { result::comm_destroy(comm) };
        }
    }
}
