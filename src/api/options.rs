//! How a model is loaded and where it runs: [`ModelOptions`], [`Device`], [`CudaOptions`]. The
//! defaults live here once; the CLI's flags only fill these in.

use std::path::PathBuf;

use smelt_ir::DType;
use smelt_models::batch::BatchOptions;
use smelt_models::{ModelError, Qwen3Config};
use smelt_runtime::cuda::DecoderOptions;

use super::Error;

/// Where a model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The reference evaluator (f32 by default).
    #[default]
    Cpu,
    /// An NVIDIA GPU through the generated kernels (bf16 by default).
    Cuda,
}

impl Device {
    /// The execution dtype when none is asked for: f32 on the CPU (the reference), bf16 on CUDA.
    pub fn default_dtype(self) -> DType {
        match self {
            Device::Cpu => DType::F32,
            Device::Cuda => DType::BF16,
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        })
    }
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Device, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            other => Err(format!("unknown device {other:?} (cpu or cuda)")),
        }
    }
}

/// The KV cache of the CUDA backend holds the model's context, but at most this many tokens
/// unless asked ([`CudaOptions::kv_tokens`]): Qwen3's 40,960-token context would take 4.4 GiB
/// on the 0.6B in bf16 before a single request needs it.
pub const DEFAULT_MAX_KV_TOKENS: usize = 32768;

/// Options of the CUDA backend (each is an error on the CPU, where it would do nothing).
#[derive(Clone, Debug, Default)]
pub struct CudaOptions {
    /// Tokens the KV cache holds (default: the context, at most [`DEFAULT_MAX_KV_TOKENS`]).
    pub kv_tokens: Option<usize>,
    /// Launch the decode step's kernels one by one instead of replaying a CUDA graph.
    pub no_cuda_graphs: bool,
    /// Launch without programmatic dependent launch.
    pub no_pdl: bool,
    /// Run prompts through the prefill kernels instead of one decode step per token
    /// (not yet checked on a GPU).
    pub prefill: bool,
    /// The kernel variants (each on by default; off is its A/B twin).
    pub variants: smelt_codegen::Variants,
}

impl CudaOptions {
    /// Tokens the KV cache holds for `config`.
    pub fn kv_tokens(&self, config: &Qwen3Config) -> usize {
        self.kv_tokens.unwrap_or(config.max_position_embeddings.min(DEFAULT_MAX_KV_TOKENS))
    }

    /// Whether any option differs from the default (on the CPU, that is an error).
    pub fn any_set(&self) -> bool {
        self.kv_tokens.is_some()
            || self.no_cuda_graphs
            || self.no_pdl
            || self.prefill
            || self.variants != smelt_codegen::Variants::default()
    }

    /// Refuses a KV cache larger than the GPU's memory (probing the GPU), before any weights
    /// are read.
    pub fn check_fits(&self, config: &Qwen3Config, dtype: DType) -> Result<(), Error> {
        let info = smelt_runtime::cuda::probe(0).map_err(ModelError::from)?;
        let tokens = self.kv_tokens(config);
        let bytes = tokens.checked_mul(config.kv_bytes_per_token(dtype)).map_or(u64::MAX, |b| b as u64);
        let total = info.total_bytes as u64;
        if bytes > total {
            return Err(Error::KvCacheTooLarge { tokens, bytes, dtype, gpu: info.name, total });
        }
        Ok(())
    }

    /// The runtime's options for `config`, compiling a batched decode step of `batch_rows`
    /// rows (0: none).
    pub fn decoder_options(&self, config: &Qwen3Config, batch_rows: usize) -> DecoderOptions {
        DecoderOptions {
            cuda_graphs: !self.no_cuda_graphs,
            pdl: !self.no_pdl,
            prefill: self.prefill,
            variants: self.variants,
            batch_rows,
            ..DecoderOptions::new(self.kv_tokens(config))
        }
    }
}

/// What a model directory must hold besides its config and weights; checked before the
/// weights are read, so a missing file fails in a moment, not after a long load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Needs {
    #[default]
    Weights,
    /// A tokenizer (a text prompt, stop strings).
    Tokenizer,
    /// A tokenizer with a chat template (a chat).
    ChatTemplate,
}

/// How a model is loaded.
#[derive(Clone, Debug, Default)]
pub struct ModelOptions {
    pub device: Device,
    /// Execution dtype; default [`Device::default_dtype`].
    pub dtype: Option<DType>,
    /// Run the primitive graphs instead of the fused ones (CPU only).
    pub no_fuse: bool,
    /// Split the model over this many tensor-parallel ranks (0 or 1: none), each with its
    /// slices of the weights and its share of the KV heads: on the CPU a thread per rank, on
    /// CUDA a GPU per rank (devices 0..N, NCCL between them; one sequence at a time).
    pub tensor_parallel: u32,
    /// A tokenizer.json to use instead of the model directory's (without a chat template).
    pub tokenizer: Option<PathBuf>,
    pub needs: Needs,
    pub cuda: CudaOptions,
    /// The batch engine of [`crate::Model::generate_batch`] (default [`BatchOptions::default`]).
    /// On CUDA, setting it also compiles the batched decode step for its `max_batch` rows.
    pub batch: Option<BatchOptions>,
}

impl ModelOptions {
    /// The execution dtype: as asked, else the device's default.
    pub fn dtype(&self) -> DType {
        self.dtype.unwrap_or(self.device.default_dtype())
    }

    /// Refuses options that would do nothing on the chosen device.
    pub(crate) fn check(&self) -> Result<(), ModelError> {
        let refuse = |what: &str| Err(ModelError::BadRequest(what.to_string()));
        match self.device {
            Device::Cpu if self.cuda.any_set() => refuse("CUDA options apply to the GPU (device cuda)"),
            Device::Cuda if self.no_fuse => refuse("the CUDA backend runs fused graphs only"),
            Device::Cuda if self.tensor_parallel > 1 && self.batch.is_some() => refuse(
                "batched decode over a tensor-parallel group of GPUs is not built: batch on one GPU, or on the CPU with --tensor-parallel",
            ),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_as_they_print() {
        for device in [Device::Cpu, Device::Cuda] {
            assert_eq!(device.to_string().parse::<Device>(), Ok(device));
        }
        assert!("gpu".parse::<Device>().unwrap_err().contains("cpu or cuda"));
        assert_eq!((Device::Cpu.default_dtype(), Device::Cuda.default_dtype()), (DType::F32, DType::BF16));
    }

    /// A group of GPUs runs one sequence at a time: batch options with it are refused, not
    /// ignored; one GPU, or a CPU group, takes them.
    #[test]
    fn a_gpu_group_refuses_the_batch_engine() {
        let group = ModelOptions { device: Device::Cuda, tensor_parallel: 2, ..ModelOptions::default() };
        assert!(group.check().is_ok());
        let batched = ModelOptions { batch: Some(BatchOptions::default()), ..group.clone() };
        let e = batched.check().unwrap_err().to_string();
        assert!(e.contains("tensor-parallel group of GPUs"), "{e}");
        assert!(ModelOptions { tensor_parallel: 1, ..batched.clone() }.check().is_ok());
        assert!(ModelOptions { device: Device::Cpu, ..batched }.check().is_ok());
    }

    #[test]
    fn the_kv_cache_holds_the_context_up_to_the_default_cap() {
        let mut config = Qwen3Config::qwen3_0_6b();
        assert_eq!(config.max_position_embeddings, 40960);
        assert_eq!(CudaOptions::default().kv_tokens(&config), DEFAULT_MAX_KV_TOKENS);
        config.max_position_embeddings = 512;
        assert_eq!(CudaOptions::default().kv_tokens(&config), 512);
        assert_eq!(CudaOptions { kv_tokens: Some(40000), ..Default::default() }.kv_tokens(&config), 40000);
        let options = CudaOptions { no_cuda_graphs: true, prefill: true, ..Default::default() };
        let decoder = options.decoder_options(&config, 8);
        assert!(!decoder.cuda_graphs && decoder.pdl && decoder.prefill && decoder.batch_rows == 8);
    }
}
