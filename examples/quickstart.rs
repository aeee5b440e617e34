//! smelt as a library: stream a reply, then run requests as one continuous batch.
//! `cargo run --release --example quickstart -- demo` (a model directory, such as the one
//! `smelt random-model --config tiny --out demo` writes).
use std::path::Path;

use smelt::{GenerateParams, Model, ModelOptions, Prompt};

fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "demo".into());
    run(Path::new(&dir))
}

pub fn run(dir: &Path) -> anyhow::Result<()> {
    // ModelOptions: the device (Cpu or Cuda), dtype, tokenizer file, CUDA and batch options.
    let mut model = Model::load(dir, &ModelOptions::default())?;
    let params = GenerateParams { max_new_tokens: 16, ..Default::default() };
    let mut generation = model.generate(Prompt::Text("The capital of France is"), &params)?;
    for chunk in &mut generation {
        print!("{}", chunk?.text);
    }
    let finish = generation.finish_reason().map_or("unfinished", |f| f.as_str());
    println!("\n[finish: {finish}]");

    // Many requests at once: continuous batching with prefix caching; completions in input
    // order, each exactly what generate gives it alone.
    let requests = [(Prompt::Text("Hello"), params.clone()), (Prompt::Text("Hello there"), params)];
    let (completions, _stats) = model.generate_batch(&requests, |_event| {})?;
    for completion in &completions {
        println!("{} tokens, {}: {}", completion.ids.len(), completion.finish.as_str(), completion.text);
    }
    Ok(())
}
