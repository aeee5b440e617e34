//! `smelt tokenize`: text to ids (a JSON array) or, with `--decode`, ids to text.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use smelt::models::Tokenizer;

#[derive(clap::Args)]
pub struct Args {
    /// Path to a tokenizer.json.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Text to encode (special tokens such as <|im_start|> are recognized).
    #[arg(long, conflicts_with = "decode", required_unless_present = "decode")]
    text: Option<String>,
    /// Comma-separated ids to decode instead.
    #[arg(long, value_parser = super::token_ids)]
    decode: Option<super::Numbers>,
    /// With --decode: drop special tokens from the text.
    #[arg(long)]
    skip_special_tokens: bool,
}

pub fn run(a: Args) -> Result<()> {
    if a.skip_special_tokens && a.decode.is_none() {
        bail!("--skip-special-tokens applies to --decode");
    }
    let tok = Tokenizer::from_file(&a.tokenizer)?;
    match (a.text, a.decode) {
        (Some(text), _) => {
            let ids = tok.encode(&text)?;
            println!("{}", serde_json::to_string(&ids).context("serializing ids")?);
        }
        (None, Some(ids)) => {
            let ids = ids.0;
            print!("{}", tok.decode(&ids, a.skip_special_tokens)?);
        }
        (None, None) => unreachable!("clap requires --text or --decode"),
    }
    Ok(())
}
