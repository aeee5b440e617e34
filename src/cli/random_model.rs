//! `smelt random-model`: a Qwen3 model directory with random weights, to run every other
//! command without a download. The tensors are the ones the model declaration reads, under the
//! checkpoint's own names and shapes, with the values `Qwen3Cpu::with_random_weights` makes
//! for the same seed (uniform in ±0.05, norm weights 1). `model.safetensors` is streamed to
//! disk a chunk at a time (its header is computed first), so memory stays small whatever the
//! model's size. The tokenizer and chat template are Qwen3's own, built into the binary.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::Rng as _;
use smelt::ir::DType;
use smelt::models::qwen3::{declare, DeclareOptions, Logits, Phase};
use smelt::models::Qwen3Config;
use smelt::runtime::files;
use smelt::runtime::progress::{Task, Unit};

use super::outputs::{Dump, Reads};
use super::{size, DTypeArg};

#[derive(clap::Args)]
pub struct Args {
    /// The model's shape: tiny (2 layers, hidden 32, head dim 64, the real 151,936-token
    /// vocabulary: about 10 MB of bf16), qwen3-0.6b, qwen3-1.7b, qwen3-4b or qwen3-8b (the
    /// published shapes), or the path of a config.json (its vocabulary must hold the tokenizer's
    /// 151,669 tokens).
    #[arg(long, value_name = "NAME|FILE")]
    config: String,
    /// The model directory to write: new, empty, or one smelt wrote earlier (replaced whole). It
    /// gets config.json, generation_config.json, model.safetensors, tokenizer.json and
    /// tokenizer_config.json.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The weights' dtype (written as config.json's torch_dtype too).
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: DTypeArg,
    /// The weights' seed: the same seed writes the same bytes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

const ASSETS_QWEN3_0_6B: &str = include_str!("../../models/assets/qwen3/configs/qwen3-0.6b.json");

/// The published shapes, by name.
const NAMED: [(&str, &str); 4] = [
    ("qwen3-0.6b", ASSETS_QWEN3_0_6B),
    ("qwen3-1.7b", include_str!("../../models/assets/qwen3/configs/qwen3-1.7b.json")),
    ("qwen3-4b", include_str!("../../models/assets/qwen3/configs/qwen3-4b.json")),
    ("qwen3-8b", include_str!("../../models/assets/qwen3/configs/qwen3-8b.json")),
];

/// `tiny`: Qwen3-0.6B's config with these fields changed. Head dim 64 and GQA 2 keep the CUDA
/// kernels' shape rules (a head is one warp, 4 to 16 bytes a lane, in every dtype).
const TINY: [(&str, u64); 7] = [
    ("hidden_size", 32),
    ("intermediate_size", 64),
    ("num_hidden_layers", 2),
    ("max_window_layers", 2),
    ("num_attention_heads", 2),
    ("num_key_value_heads", 1),
    ("head_dim", 64),
];

/// Qwen3's generation config (the same for every size): EOS `<|im_end|>` and `<|endoftext|>`.
const GENERATION_CONFIG: &str = include_str!("../../models/assets/qwen3/configs/qwen3-0.6b.generation_config.json");
const TOKENIZER: &[u8] = include_bytes!("../../models/assets/qwen3/tokenizer.json");
const TOKENIZER_CONFIG: &[u8] = include_bytes!("../../models/assets/qwen3/tokenizer_config.json");

/// Tokens of the Qwen3 tokenizer, special tokens included: the least vocabulary that runs it.
const TOKENIZER_TOKENS: usize = 151_669;

/// Bytes generated and written at a time.
const CHUNK_BYTES: usize = 4 << 20;

/// Checkpoints at least this large show a progress bar.
const PROGRESS_FROM_BYTES: u64 = 256 << 20;

pub fn run(a: Args) -> Result<()> {
    let (mut json, file) = config_json(&a.config)?;
    let origin = match &file {
        Some(path) => format!("--config {}", path.display()),
        None => format!("--config {}", a.config),
    };
    let torch_dtype = match a.dtype {
        DTypeArg::F32 => "float32",
        DTypeArg::Bf16 => "bfloat16",
        DTypeArg::F16 => "float16",
    };
    let fields = json.as_object_mut().with_context(|| format!("{origin}: not a JSON object"))?;
    fields.insert("torch_dtype".into(), torch_dtype.into());
    if fields.contains_key("dtype") {
        fields.insert("dtype".into(), torch_dtype.into());
    }
    let text = serde_json::to_string_pretty(&json).context("serializing config.json")?;
    let config = Qwen3Config::from_json_str(&text, &origin)?;
    if config.vocab_size < TOKENIZER_TOKENS {
        bail!(
            "{origin}: vocab_size {} is smaller than the Qwen3 tokenizer written with the model \
             ({TOKENIZER_TOKENS} tokens)",
            config.vocab_size
        );
    }
    let plan = plan(&config, a.dtype)?;
    let total = plan.file_bytes().with_context(|| format!("{origin}: the checkpoint's size overflows 64 bits"))?;

    let reads = Reads::new().maybe_file(file.as_deref(), "the --config file");
    let mut out = Dump::begin("--out", &a.out, &reads)?;
    let shown = out.target().display().to_string();
    tracing::info!(
        "{shown}: {} parameters in {} tensors, model.safetensors {} ({total} bytes) of {torch_dtype}, seed {}",
        config.parameter_count(),
        plan.tensors.len(),
        size(total),
        a.seed
    );
    out.write("config.json", format!("{text}\n").as_bytes())?;
    out.write("generation_config.json", GENERATION_CONFIG.as_bytes())?;
    out.write("tokenizer.json", TOKENIZER)?;
    out.write("tokenizer_config.json", TOKENIZER_CONFIG)?;
    let show_progress = total >= PROGRESS_FROM_BYTES;
    out.write_with("model.safetensors", |f| write_checkpoint(f, &plan, a.dtype, a.seed, show_progress))?;
    out.finish()?;
    tracing::info!("wrote {shown}");
    Ok(())
}

/// config.json for `--config`: a named shape, or the file at that path (also returned).
fn config_json(spec: &str) -> Result<(serde_json::Value, Option<PathBuf>)> {
    let named = match spec {
        "tiny" => Some(ASSETS_QWEN3_0_6B),
        _ => NAMED.iter().find(|(name, _)| *name == spec).map(|(_, text)| *text),
    };
    if let Some(text) = named {
        let mut json: serde_json::Value = serde_json::from_str(text).context("the built-in config")?;
        if spec == "tiny" {
            for (field, value) in TINY {
                json[field] = value.into();
            }
        }
        return Ok((json, None));
    }
    let path = Path::new(spec);
    if !files::exists(path) {
        let names: Vec<&str> = std::iter::once("tiny").chain(NAMED.iter().map(|(n, _)| *n)).collect();
        bail!("--config {spec:?} is neither a known shape ({}) nor an existing file", names.join(", "));
    }
    let text = files::read_metadata(path).with_context(|| format!("--config {}", path.display()))?;
    let json = serde_json::from_str(&text)
        .with_context(|| format!("--config {}: not a valid config (not JSON)", path.display()))?;
    Ok((json, Some(path.to_path_buf())))
}

/// One tensor of the checkpoint, in file order.
pub struct Tensor {
    pub name: String,
    pub elements: u64,
}

/// What `model.safetensors` holds, known before a byte of it is written.
pub struct Plan {
    pub tensors: Vec<Tensor>,
    /// The header: its length (8 bytes, little-endian) and JSON padded to 8 bytes.
    pub header: Vec<u8>,
    pub data_bytes: u64,
}

impl Plan {
    /// The file's size, unless it overflows.
    pub fn file_bytes(&self) -> Option<u64> {
        self.data_bytes.checked_add(self.header.len() as u64)
    }
}

/// The checkpoint of `config` in `dtype`: the weights the model's graphs read (as
/// `Qwen3Cpu::with_random_weights` declares them), in that order, under their own names.
pub fn plan(config: &Qwen3Config, dtype: DTypeArg) -> Result<Plan> {
    let options = |phase, logits| DeclareOptions { phase, dtype: dtype.into(), logits };
    let graphs = [
        declare(config, options(Phase::Prefill, Logits::AllPositions)),
        declare(config, options(Phase::Prefill, Logits::LastPosition)),
        declare(config, options(Phase::Decode, Logits::LastPosition)),
    ]
    .into_iter()
    .collect::<Result<Vec<_>, _>>()
    .context("declaring the model")?;
    let (name, element_bytes) = match dtype {
        DTypeArg::F32 => ("F32", 4u64),
        DTypeArg::Bf16 => ("BF16", 2),
        DTypeArg::F16 => ("F16", 2),
    };
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let (mut tensors, mut offset) = (Vec::new(), 0u64);
    for spec in smelt::runtime::weight_specs(&graphs.iter().collect::<Vec<_>>()) {
        let elements = spec.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let end = elements.and_then(|e| e.checked_mul(element_bytes)).and_then(|b| b.checked_add(offset));
        let end = end.with_context(|| format!("{} {:?}: its size overflows 64 bits", spec.name, spec.shape))?;
        let entry = serde_json::json!({ "dtype": name, "shape": spec.shape, "data_offsets": [offset, end] });
        header.insert(spec.name.clone(), entry);
        tensors.push(Tensor { name: spec.name, elements: (end - offset) / element_bytes });
        offset = end;
    }
    let mut json = serde_json::to_vec(&header).context("serializing the safetensors header")?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend(json);
    Ok(Plan { tensors, header: bytes, data_bytes: offset })
}

/// Writes the header, then each tensor's values a chunk at a time: norm weights 1, the rest
/// uniform in [-0.05, 0.05) from the seeded generator, in `with_random_weights`'s order.
fn write_checkpoint(out: &mut impl Write, plan: &Plan, dtype: DTypeArg, seed: u64, progress: bool) -> Result<()> {
    out.write_all(&plan.header)?;
    let encode: fn(f32, &mut Vec<u8>) = match dtype {
        DTypeArg::F32 => |v, b| b.extend_from_slice(&v.to_le_bytes()),
        DTypeArg::Bf16 => |v, b| b.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes()),
        DTypeArg::F16 => |v, b| b.extend_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes()),
    };
    let per_chunk = (CHUNK_BYTES / DType::from(dtype).size_bytes()) as u64;
    let mut rng = smelt::models::sample::seeded_rng(seed);
    let mut buf = Vec::with_capacity(CHUNK_BYTES);
    // A bar on a terminal for checkpoints worth watching.
    let task = progress.then(|| Task::begin("writing model.safetensors", plan.data_bytes, Unit::Bytes));
    for tensor in &plan.tensors {
        let norm = tensor.name.ends_with("norm.weight");
        let mut left = tensor.elements;
        while left > 0 {
            let n = left.min(per_chunk);
            buf.clear();
            for _ in 0..n {
                let v = if norm { 1.0 } else { (rng.random::<f32>() - 0.5) * 0.1 };
                encode(v, &mut buf);
            }
            out.write_all(&buf)?;
            left -= n;
            if let Some(task) = &task {
                task.advance(buf.len() as u64);
            }
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
#[path = "random_model_tests.rs"]
mod tests;
