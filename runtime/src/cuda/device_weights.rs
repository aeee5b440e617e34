//! A model's weights on the device, uploaded once and shared by its graphs. They come from
//! a [`WeightBytes`] source a bounded piece at a time: straight from the mapped checkpoint
//! (converted to the execution dtype chunk by chunk, so the host never holds a whole model),
//! or from host weights a CPU model already has.

use std::collections::HashMap;

use smelt_ir::{DType, Graph, WEIGHT_CONCAT};

use super::device::{DeviceBuffer, Gpu};
use super::layout::{align, storage_bytes};
use super::CudaError;
use crate::cpu::HostWeights;
use crate::progress::{Task, Unit};
use crate::weights::Checkpoint;

/// Where device weights come from.
pub trait WeightBytes {
    /// Gives weight `name` to `sink` as little-endian `dtype` words, in order, in pieces. A
    /// fused graph's name may join checkpoint names with [`WEIGHT_CONCAT`]: their rows one
    /// after another. A part may name a slice of a stored tensor ([`smelt_ir::WeightSlice`]).
    fn stream(
        &self,
        name: &str,
        dtype: DType,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), CudaError>,
    ) -> Result<(), CudaError>;
}

/// Each part read from the mapped file through the checkpoint's staging buffer (see
/// [`Checkpoint::stream`]; a slice's bytes alone): the values a CPU model loads, refused for
/// the same reasons.
impl WeightBytes for Checkpoint {
    fn stream(
        &self,
        name: &str,
        dtype: DType,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), CudaError>,
    ) -> Result<(), CudaError> {
        for part in name.split(WEIGHT_CONCAT) {
            Checkpoint::stream(self, part, dtype, &mut *sink)?;
        }
        Ok(())
    }
}

/// Host weights prepared for the graphs (concatenations made), converted whole.
impl WeightBytes for HostWeights {
    fn stream(
        &self,
        name: &str,
        dtype: DType,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), CudaError>,
    ) -> Result<(), CudaError> {
        let host = smelt_ir::WeightSource::weight(self, name)
            .ok_or_else(|| CudaError::Layout(format!("weight {name} was not loaded")))?;
        sink(&storage_bytes(host, dtype))
    }
}

/// Where each weight the graphs read goes in one buffer: name, dtype, offset, bytes.
struct Regions {
    regions: Vec<(String, DType, usize, usize)>,
    total: usize,
}

impl Regions {
    /// Every weight any of `graphs` reads, once, in its node's dtype.
    fn plan(graphs: &[&Graph]) -> Result<Regions, CudaError> {
        let mut regions: Vec<(String, DType, usize, usize)> = Vec::new();
        let mut total = 0;
        for g in graphs {
            for (name, id) in g.weights() {
                if regions.iter().any(|(n, ..)| *n == name) {
                    continue;
                }
                let n = g.node(id);
                let bytes = n.shape.fixed_volume().map(|v| v * n.dtype.size_bytes());
                let bytes = bytes.ok_or_else(|| CudaError::Layout(format!("weight {name}: shape is not fixed")))?;
                regions.push((name, n.dtype, total, bytes));
                total += align(bytes);
            }
        }
        Ok(Regions { regions, total })
    }

    /// Streams every weight from `source` to `put(offset, bytes)`; each must fill its region
    /// exactly (a short or long one names the weight).
    fn fill(
        &self,
        source: &dyn WeightBytes,
        mut put: impl FnMut(usize, &[u8]) -> Result<(), CudaError>,
    ) -> Result<(), CudaError> {
        let task = Task::begin("uploading weights", self.regions.iter().map(|r| r.3 as u64).sum(), Unit::Bytes);
        for (name, dtype, offset, bytes) in &self.regions {
            let mut written = 0;
            source.stream(name, *dtype, &mut |piece| {
                if written + piece.len() > *bytes {
                    return Err(CudaError::Layout(format!("weight {name}: more than its {bytes} bytes of {dtype:?}")));
                }
                put(offset + written, piece)?;
                written += piece.len();
                task.advance(piece.len() as u64);
                Ok(())
            })?;
            if written != *bytes {
                return Err(CudaError::Layout(format!("weight {name}: {written} of its {bytes} bytes of {dtype:?}")));
            }
        }
        Ok(())
    }
}

/// Weights on the device by name (concatenations included).
pub struct DeviceWeights {
    buffer: DeviceBuffer,
    by_name: HashMap<String, u64>,
}

impl DeviceWeights {
    /// Uploads, in its node's dtype, every weight that any of `graphs` reads. Each piece is
    /// copied as it comes (a pageable copy returns once the driver has staged it), so the host
    /// holds one piece at a time.
    pub fn upload(gpu: &Gpu, graphs: &[&Graph], source: &dyn WeightBytes) -> Result<DeviceWeights, CudaError> {
        let regions = Regions::plan(graphs)?;
        let buffer = gpu.alloc(regions.total, "weights")?;
        let base = buffer.ptr();
        regions.fill(source, |offset, piece| gpu.upload(base + offset as u64, piece, "uploading the weights"))?;
        let by_name = regions.regions.into_iter().map(|(name, _, offset, _)| (name, base + offset as u64)).collect();
        Ok(DeviceWeights { buffer, by_name })
    }

    /// The device address of weight `name`.
    pub fn address(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).copied()
    }

    pub fn bytes(&self) -> usize {
        self.buffer.bytes()
    }
}

#[cfg(test)]
mod tests;
