//! Does a config describe the checkpoint beside it? Checked from a handful of tensor shapes
//! before any graph is declared, so a config that claims 20,000 layers or a head_dim of 2^40
//! over a small checkpoint fails in milliseconds, naming the field and the tensor, instead of
//! declaring (and allocating for) a model that is not there. The full per-tensor check
//! (`Checkpoint::validate`) runs later against the declared graph.

use smelt_runtime::Checkpoint;

use crate::config::{ConfigError, Qwen3Config};
use crate::qwen3::{EMBED, LM_HEAD};

/// The checkpoint's layer count (one past the highest `model.layers.N.` index) and the
/// config's field values against layer 0's and the embedding's shapes.
pub fn check(config: &Qwen3Config, checkpoint: &Checkpoint, origin: &str) -> Result<(), ConfigError> {
    let err = |field: &'static str, message: String| ConfigError::Field { origin: origin.to_string(), field, message };
    let layers = checkpoint
        .names()
        .iter()
        .filter_map(|n| n.strip_prefix("model.layers.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |last| last + 1);
    if layers != config.num_layers {
        let files: Vec<String> = checkpoint.files().iter().map(|p| p.display().to_string()).collect();
        let held = match layers {
            0 => "no layers (no model.layers.* tensors)".to_string(),
            n => format!("{n} layers (model.layers.0 to model.layers.{})", n - 1),
        };
        let m = format!("{}, but the checkpoint ({}) holds {held}", config.num_layers, files.join(", "));
        return Err(err("num_hidden_layers", m));
    }
    let c = config;
    let l0 = |t: &str| format!("model.layers.0.{t}");
    // (field at fault, its value, tensor, the tensor's shape as the config implies it, the
    // axis that field sets); in this order, so the first mismatch names the field at fault.
    let (d, hd) = (c.hidden_size, c.head_dim);
    let embed = vec![c.vocab_size, d];
    let mut expectations = vec![
        ("head_dim", hd, l0("self_attn.q_norm.weight"), vec![hd], 0),
        ("hidden_size", d, EMBED.to_string(), embed.clone(), 1),
        ("vocab_size", c.vocab_size, EMBED.to_string(), embed.clone(), 0),
        ("num_attention_heads", c.num_heads, l0("self_attn.q_proj.weight"), vec![c.num_heads * hd, d], 0),
        ("num_key_value_heads", c.num_kv_heads, l0("self_attn.k_proj.weight"), vec![c.num_kv_heads * hd, d], 0),
        ("intermediate_size", c.intermediate_size, l0("mlp.gate_proj.weight"), vec![c.intermediate_size, d], 0),
    ];
    if !c.tie_word_embeddings {
        expectations.push(("vocab_size", c.vocab_size, LM_HEAD.to_string(), embed, 0));
    }
    for (field, value, tensor, expected, axis) in expectations {
        // An absent tensor is reported, with every other absent one, by the full check.
        let Ok(shape) = checkpoint.shape(&tensor) else { continue };
        if shape.get(axis) != expected.get(axis) {
            let file = checkpoint.file_of(&tensor).map(|p| p.display().to_string()).unwrap_or_default();
            let m = format!("{value}, but tensor {tensor} in {file} has shape {shape:?}, expected {expected:?}");
            return Err(err(field, m));
        }
    }
    Ok(())
}
