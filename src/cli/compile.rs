//! `smelt compile`: declare Qwen3 as a graph, verify it, print a summary, optionally dump it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use smelt::ir::cost::{parameter_count, weight_bytes_read};
use smelt::ir::print::{op_histogram, to_dot, to_text};
use smelt::ir::{Bindings, DType, Graph};
use smelt::models::qwen3::{declare, DeclareOptions, Logits, Phase};
use smelt::models::Qwen3Config;

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model directory; its config.json is used (weights are not read).
    #[arg(long, conflicts_with = "config")]
    model: Option<PathBuf>,
    /// A config.json. With neither --model nor --config, the embedded Qwen3-0.6B config.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write the graphs' text and DOT forms into this directory.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Execution dtype; defaults to the config's (bf16 for the published checkpoints).
    #[arg(long, value_enum)]
    dtype: Option<super::DTypeArg>,
}

pub fn run(a: Args) -> Result<()> {
    let (cfg, origin) = match (&a.model, &a.config) {
        (Some(dir), _) => {
            let dir = super::model_dir_arg(dir)?;
            let path = dir.join("config.json");
            (Qwen3Config::from_file(&path)?, path.display().to_string())
        }
        (None, Some(path)) => (Qwen3Config::from_file(path)?, path.display().to_string()),
        (None, None) => (Qwen3Config::qwen3_0_6b(), "embedded Qwen3-0.6B config".to_string()),
    };
    let dtype = a.dtype.map(DType::from).or(cfg.checkpoint_dtype).unwrap_or(DType::BF16);
    let opts = |phase, logits| DeclareOptions { phase, dtype, logits };
    let decode = declare(&cfg, opts(Phase::Decode, Logits::LastPosition)).context("declaring the decode graph")?;
    let prefill = declare(&cfg, opts(Phase::Prefill, Logits::AllPositions)).context("declaring the prefill graph")?;
    print!("{}", summary(&cfg, &origin, dtype, &decode, &prefill));
    if let Some(dir) = &a.dump {
        dump(dir, &[("decode", &decode), ("prefill", &prefill)])?;
        println!("dumped graphs to {}", dir.display());
    }
    Ok(())
}

fn summary(cfg: &Qwen3Config, origin: &str, dtype: DType, decode: &Graph, prefill: &Graph) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Qwen3 from {origin}, dtype {dtype}");
    let _ = writeln!(
        s,
        "  {} layers, hidden {}, {} heads / {} KV heads x head_dim {}, intermediate {}, vocab {}, tied embeddings: {}",
        cfg.num_layers,
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.intermediate_size,
        cfg.vocab_size,
        cfg.tie_word_embeddings
    );
    let params = parameter_count(decode);
    let _ = writeln!(s, "  parameters: {params} ({:.3} GB in {dtype})", (params * dtype.size_bytes()) as f64 / 1e9);
    for (name, g) in [("decode", decode), ("prefill", prefill)] {
        let hist = op_histogram(g);
        let kinds: Vec<String> = hist.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(s, "  {name} graph: {} ops: {}", g.node_count(), kinds.join(", "));
    }
    let step = Bindings { batch: 1, new_tokens: 1, cached_tokens: 0 };
    let weights = weight_bytes_read(decode, &step);
    let kv = cfg.kv_bytes_per_token(dtype);
    let _ = writeln!(
        s,
        "  bytes read per decode step: {weights} of weights ({:.3} GB) + {kv} of KV cache per context token",
        weights as f64 / 1e9
    );
    let _ = writeln!(s, "    at context 1024: {:.3} GB", (weights + 1024 * kv) as f64 / 1e9);
    s
}

fn dump(dir: &Path, graphs: &[(&str, &Graph)]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, g) in graphs {
        let title = format!("qwen3.{name}");
        for (ext, text) in [("txt", to_text(g, &title)), ("dot", to_dot(g, &title))] {
            let path = dir.join(format!("{name}.{ext}"));
            super::io::write_atomically(&path, text.as_bytes())?;
        }
    }
    Ok(())
}
