//! What loading reports, as `tracing` events (shown by the CLI; silent in a library without a
//! subscriber): the model loaded and how long it took, tensors the model does not use, and
//! the GPU's kernels and memory.

use std::path::Path;
use std::time::Instant;

use smelt_runtime::cuda::CudaDecoder;

use crate::blueprint::Blueprint;

/// Names of unused tensors shown; a checkpoint of another model can hold thousands, and the
/// warning stays one line.
const SHOWN: usize = 5;

pub(crate) fn loaded(dir: &Path, model: &Blueprint, started: Instant) {
    let unused = model.unused_tensors();
    if !unused.is_empty() {
        let mut names = unused.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ");
        if unused.len() > SHOWN {
            names.push_str(&format!(" and {} more", unused.len() - SHOWN));
        }
        tracing::warn!("{}: {} tensors are not used by the model: {names}", dir.display(), unused.len());
    }
    let c = model.config();
    tracing::info!(
        "loaded {} ({} layers, hidden {}, vocab {}) in {:.2}s",
        dir.display(),
        c.num_layers,
        c.hidden_size,
        c.vocab_size,
        started.elapsed().as_secs_f64()
    );
}

/// Each tensor-parallel rank's weight bytes (its slices, and what it replicates).
pub(crate) fn rank_weights(bytes: &[usize]) {
    if bytes.len() > 1 {
        let each: Vec<String> = bytes.iter().map(|b| format!("{:.1} MiB", *b as f64 / 1048576.0)).collect();
        tracing::info!("tensor parallelism over {} ranks: weights per rank {}", bytes.len(), each.join(", "));
    }
}

pub(crate) fn compiled(decoder: &CudaDecoder) {
    let jit = decoder.jit();
    let bytes: Vec<String> =
        decoder.device_bytes().iter().map(|(what, b)| format!("{what} {:.1} MiB", *b as f64 / 1048576.0)).collect();
    tracing::info!(
        "{}: {} kernels ready in {:.2}s ({} from the module cache); {}",
        decoder.gpu().name(),
        jit.kernels,
        jit.seconds,
        jit.cached,
        bytes.join(", ")
    );
}
