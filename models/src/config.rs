//! Qwen3 `config.json`: parsed with serde, accepting both the transformers 4.x shape
//! (`rope_theta`, `rope_scaling` at the top level) and the 5.x shape (`rope_parameters`), and
//! validated so that a bad config names the field at fault instead of failing later.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use smelt_ir::DType;

/// The Qwen3-0.6B `config.json` as published, embedded so `smelt compile` needs no files.
pub const QWEN3_0_6B_CONFIG: &str = include_str!("../assets/qwen3/configs/qwen3-0.6b.json");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{origin}: not a valid config: {source}")]
    Parse { origin: String, source: serde_json::Error },
    #[error("{origin}: field `{field}`: {message}")]
    Field { origin: String, field: &'static str, message: String },
}

#[derive(Clone, Debug, Deserialize)]
struct RawRope {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    legacy_type: Option<String>,
    rope_theta: Option<f64>,
}

/// Plausibility limits on a config's dimensions. Each is far above every published Qwen3 (and
/// every open LLM: Llama-3.1-405B has hidden 16384, 126 layers, 128 heads), so no real model
/// meets them; they bound what a config can make smelt declare, plan or allocate, and keep
/// every size derived from a config (parameters, bytes, arenas) far below 2^64.
pub mod limits {
    /// Qwen3: 151,936; the largest open vocabularies are about 262k.
    pub const VOCAB_SIZE: usize = 1 << 24;
    /// Qwen3-32B: 5,120.
    pub const HIDDEN_SIZE: usize = 1 << 16;
    /// Qwen3-32B: 25,600.
    pub const INTERMEDIATE_SIZE: usize = 1 << 18;
    /// Qwen3-32B: 64.
    pub const LAYERS: usize = 512;
    /// Query and KV heads each. Qwen3-32B: 64 query heads.
    pub const HEADS: usize = 1024;
    /// Qwen3: 128.
    pub const HEAD_DIM: usize = 1024;
    /// Positions are computed in f32 for RoPE (as HF does), which counts integers exactly up
    /// to 2^24 only. Qwen3: 40,960.
    pub const POSITIONS: usize = 1 << 24;
}

/// The fields of HF's `Qwen3Config` that smelt reads.
#[derive(Clone, Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: i64,
    hidden_size: i64,
    intermediate_size: i64,
    num_hidden_layers: i64,
    num_attention_heads: i64,
    num_key_value_heads: Option<i64>,
    head_dim: Option<i64>,
    max_position_embeddings: i64,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<RawRope>,
    rope_parameters: Option<RawRope>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    use_sliding_window: bool,
    layer_types: Option<serde_json::Value>,
    hidden_act: Option<String>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    eos_token_id: Option<serde_json::Value>,
}

/// A validated Qwen3 configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Qwen3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    /// The dtype the checkpoint says it was saved in, if it says.
    pub checkpoint_dtype: Option<DType>,
    pub eos_token_ids: Vec<u32>,
}

impl Qwen3Config {
    /// The embedded Qwen3-0.6B config.
    pub fn qwen3_0_6b() -> Qwen3Config {
        Qwen3Config::from_json_str(QWEN3_0_6B_CONFIG, "embedded qwen3-0.6b config")
            .expect("the embedded config is valid")
    }

    pub fn from_file(path: &Path) -> Result<Qwen3Config, ConfigError> {
        let text = smelt_runtime::files::read_metadata(path)
            .map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        Qwen3Config::from_json_str(&text, &path.display().to_string())
    }

    /// Parses and validates; `origin` (a path) prefixes every error.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Qwen3Config, ConfigError> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|source| ConfigError::Parse { origin: origin.to_string(), source })?;
        validate(raw, origin)
    }

    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// Parameters in the checkpoint, counting a tied embedding once.
    pub fn parameter_count(&self) -> usize {
        let (d, hd, i) = (self.hidden_size, self.head_dim, self.intermediate_size);
        let attn = d * self.num_heads * hd * 2 + d * self.num_kv_heads * hd * 2 + 2 * hd;
        let mlp = 3 * d * i;
        let layer = attn + mlp + 2 * d;
        let embed = self.vocab_size * d;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + self.num_layers * layer + d
    }

    /// KV-cache bytes per token of context in `dtype`.
    pub fn kv_bytes_per_token(&self, dtype: DType) -> usize {
        self.num_layers * 2 * self.num_kv_heads * self.head_dim * dtype.size_bytes()
    }
}

/// A field at fault and what is wrong with it.
type FieldError = (&'static str, String);

fn validate(raw: RawConfig, origin: &str) -> Result<Qwen3Config, ConfigError> {
    let err = |(field, message): FieldError| ConfigError::Field { origin: origin.to_string(), field, message };
    check_architecture(&raw).map_err(err)?;
    let dims = dims(&raw).map_err(err)?;
    check_features(&raw, dims.num_layers).map_err(err)?;
    let rope_theta = rope_theta(&raw).map_err(err)?;
    let checkpoint_dtype = checkpoint_dtype(&raw).map_err(err)?;
    let eos_token_ids = token_ids(raw.eos_token_id.as_ref()).map_err(|m| err(("eos_token_id", m)))?;
    check_eos_in_vocab(&eos_token_ids, dims.vocab_size).map_err(|m| err(("eos_token_id", m)))?;
    check_rope_theta(rope_theta, dims.head_dim).map_err(|m| err((rope_field(&raw), m)))?;
    Ok(Qwen3Config {
        vocab_size: dims.vocab_size,
        hidden_size: dims.hidden_size,
        intermediate_size: dims.intermediate_size,
        num_layers: dims.num_layers,
        num_heads: dims.num_heads,
        num_kv_heads: dims.num_kv_heads,
        head_dim: dims.head_dim,
        max_position_embeddings: dims.max_position_embeddings,
        rms_norm_eps: raw.rms_norm_eps as f32,
        rope_theta,
        tie_word_embeddings: raw.tie_word_embeddings,
        checkpoint_dtype,
        eos_token_ids,
    })
}

/// A Qwen3 model, when the config names its type or architecture.
fn check_architecture(raw: &RawConfig) -> Result<(), FieldError> {
    if let Some(t) = raw.model_type.as_deref() {
        if t != "qwen3" {
            return Err(("model_type", format!("expected \"qwen3\", found {t:?}")));
        }
    }
    if let Some(archs) = &raw.architectures {
        if let Some(other) = archs.iter().find(|a| a.as_str() != "Qwen3ForCausalLM") {
            return Err(("architectures", format!("expected [\"Qwen3ForCausalLM\"], found {other:?}")));
        }
    }
    Ok(())
}

/// A config's dimensions, each checked against [`limits`].
struct Dims {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_layers: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    max_position_embeddings: usize,
}

/// `v`, the value of `field`, as a size in `1..=limit`.
fn dim(field: &'static str, v: i64, limit: usize) -> Result<usize, FieldError> {
    match usize::try_from(v) {
        Ok(n) if n > 0 && n <= limit => Ok(n),
        _ if v <= 0 => Err((field, format!("must be positive, found {v}"))),
        _ => Err((field, format!("{v} is beyond smelt's limit of {limit} (see config::limits)"))),
    }
}

/// The dimensions; the heads must group and the head dim (given, or hidden / heads) be even.
fn dims(raw: &RawConfig) -> Result<Dims, FieldError> {
    let vocab_size = dim("vocab_size", raw.vocab_size, limits::VOCAB_SIZE)?;
    let hidden_size = dim("hidden_size", raw.hidden_size, limits::HIDDEN_SIZE)?;
    let intermediate_size = dim("intermediate_size", raw.intermediate_size, limits::INTERMEDIATE_SIZE)?;
    let num_layers = dim("num_hidden_layers", raw.num_hidden_layers, limits::LAYERS)?;
    let num_heads = dim("num_attention_heads", raw.num_attention_heads, limits::HEADS)?;
    let kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
    let num_kv_heads = dim("num_key_value_heads", kv_heads, limits::HEADS)?;
    let max_position_embeddings = dim("max_position_embeddings", raw.max_position_embeddings, limits::POSITIONS)?;
    if num_heads % num_kv_heads != 0 {
        let m = format!("num_attention_heads ({num_heads}) is not a multiple of num_key_value_heads ({num_kv_heads})");
        return Err(("num_key_value_heads", m));
    }
    let head_dim = match raw.head_dim {
        Some(h) => dim("head_dim", h, limits::HEAD_DIM)?,
        None if hidden_size % num_heads == 0 => dim("head_dim", (hidden_size / num_heads) as i64, limits::HEAD_DIM)?,
        None => {
            return Err((
                "head_dim",
                format!("absent, and hidden_size {hidden_size} is not divisible by {num_heads} heads"),
            ))
        }
    };
    if head_dim % 2 != 0 {
        return Err(("head_dim", format!("must be even for rotary embeddings, found {head_dim}")));
    }
    Ok(Dims {
        vocab_size,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        max_position_embeddings,
    })
}

/// What the config asks of the model beyond its dimensions: a usable RMSNorm epsilon, and
/// only what smelt implements (no attention bias, no sliding window, SiLU).
fn check_features(raw: &RawConfig, num_layers: usize) -> Result<(), FieldError> {
    // Used in f32: a value that rounds to 0 there divides by zero for an all-zero row.
    let eps = raw.rms_norm_eps as f32;
    if !(raw.rms_norm_eps > 0.0 && raw.rms_norm_eps < 1.0 && eps.is_normal()) {
        let m = format!(
            "must be in (0, 1) and a normal f32 (at least {:e}), found {:e}",
            f32::MIN_POSITIVE,
            raw.rms_norm_eps
        );
        return Err(("rms_norm_eps", m));
    }
    if raw.attention_bias {
        return Err(("attention_bias", "true is not supported (Qwen3 has no attention bias)".into()));
    }
    if raw.use_sliding_window {
        return Err(("use_sliding_window", "sliding-window attention is not supported".into()));
    }
    check_layer_types(raw.layer_types.as_ref(), num_layers).map_err(|m| ("layer_types", m))?;
    if let Some(act) = raw.hidden_act.as_deref() {
        if act != "silu" {
            return Err(("hidden_act", format!("only \"silu\" is supported, found {act:?}")));
        }
    }
    Ok(())
}

/// The dtype the checkpoint says it was saved in (`dtype`, else `torch_dtype`), if it says.
fn checkpoint_dtype(raw: &RawConfig) -> Result<Option<DType>, FieldError> {
    let dtype_name = raw.dtype.as_deref().or(raw.torch_dtype.as_deref());
    Ok(match dtype_name {
        None => None,
        Some(name) => Some(DType::parse(name).filter(|d| d.is_float()).ok_or_else(|| {
            (if raw.dtype.is_some() { "dtype" } else { "torch_dtype" }, format!("unsupported dtype {name:?}"))
        })?),
    })
}

/// `rope_theta` from either config shape; any RoPE scaling other than the default is refused
/// rather than silently ignored.
fn rope_theta(raw: &RawConfig) -> Result<f64, FieldError> {
    for (field, rope) in [("rope_parameters", &raw.rope_parameters), ("rope_scaling", &raw.rope_scaling)] {
        if let Some(r) = rope {
            if let Some(t) = r.rope_type.as_deref().or(r.legacy_type.as_deref()) {
                if t != "default" {
                    return Err((field, format!("rope_type {t:?} is not supported (only \"default\")")));
                }
            }
        }
    }
    let nested = raw.rope_parameters.as_ref().and_then(|r| r.rope_theta);
    if let (Some(a), Some(b)) = (nested, raw.rope_theta) {
        if a != b {
            return Err((
                "rope_theta",
                format!("{b} at the top level but {a} in rope_parameters: which one is meant?"),
            ));
        }
    }
    nested.or(raw.rope_theta).ok_or(("rope_theta", "missing (neither top-level nor in rope_parameters)".to_string()))
}

/// HF's per-layer attention kinds: smelt runs full attention only, so the list, when given,
/// must say so for every layer (HF applies a sliding window wherever it says otherwise).
fn check_layer_types(types: Option<&serde_json::Value>, layers: usize) -> Result<(), String> {
    let Some(types) = types else { return Ok(()) };
    let Some(list) = types.as_array() else {
        return Err(format!("must be a list of per-layer attention kinds, found {types}"));
    };
    if list.len() != layers {
        return Err(format!("lists {} layers but num_hidden_layers is {layers}", list.len()));
    }
    match list.iter().position(|t| t.as_str() != Some("full_attention")) {
        Some(i) => Err(format!("layer {i} is {}: only \"full_attention\" is supported (no sliding windows)", list[i])),
        None => Ok(()),
    }
}

/// Where `rope_theta` came from, for its errors.
fn rope_field(raw: &RawConfig) -> &'static str {
    if raw.rope_parameters.as_ref().is_some_and(|r| r.rope_theta.is_some()) {
        "rope_parameters"
    } else {
        "rope_theta"
    }
}

/// RoPE's inverse frequencies are `1 / theta^(2i / head_dim)` in f32, as HF computes them: theta
/// must be positive and stay finite and non-zero in f32, and so must every frequency.
fn check_rope_theta(theta: f64, head_dim: usize) -> Result<(), String> {
    let t = theta as f32;
    if !(theta > 0.0 && t.is_normal()) {
        return Err(format!("rope_theta must be positive and a normal f32, found {theta:e}"));
    }
    // The first frequency is 1; the last is the extreme one.
    let last = 1.0 / t.powf((head_dim - 2) as f32 / head_dim as f32);
    if !last.is_normal() {
        return Err(format!("rope_theta {theta} makes RoPE frequencies that are not finite in f32"));
    }
    Ok(())
}

/// EOS ids the model can never produce would never end a generation.
pub(crate) fn check_eos_in_vocab(ids: &[u32], vocab: usize) -> Result<(), String> {
    match ids.iter().find(|&&id| id as usize >= vocab) {
        Some(id) => Err(format!("{id} is not below vocab_size {vocab}")),
        None => Ok(()),
    }
}

/// An id, a list of ids, or null.
pub(crate) fn token_ids(v: Option<&serde_json::Value>) -> Result<Vec<u32>, String> {
    let one = |x: &serde_json::Value| {
        x.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| format!("{x} is not a token id"))
    };
    match v {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(xs)) => xs.iter().map(one).collect(),
        Some(x) => Ok(vec![one(x)?]),
    }
}

#[cfg(test)]
mod tests;
