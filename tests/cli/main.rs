//! The `smelt` command line as a contract: each subcommand run as a real process on the tiny
//! HF fixtures (tests/fixtures/models) and the real Qwen3 tokenizer, its outputs checked against
//! the Hugging Face references. One module per subcommand.

#[path = "../common/mod.rs"]
mod common;
mod compile;
mod compile_tp;
mod generate;
mod help;
mod logits;
mod random_model;
mod tokenize;

use common::*;

struct Reference {
    prompt: Vec<u32>,
    prefill: RefTensor,
    greedy: Vec<u32>,
}

fn reference(name: &str) -> Reference {
    let path = fixture_dir(name).join("reference.safetensors");
    let ids = |t: &str| read_tensor(&path, t).i32s.iter().map(|&i| u32::try_from(i).expect("id >= 0")).collect();
    Reference { prompt: ids("prompt_ids"), prefill: read_tensor(&path, "prefill_logits"), greedy: ids("greedy_ids") }
}

fn join_ids(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}
