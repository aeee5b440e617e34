//! `smelt tokenize`: text to ids (a JSON array) or, with `--decode`, ids to text. Without
//! `--text` or `--decode`, the text is read from stdin (a pipe or a file, not a terminal).

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use smelt::models::Tokenizer;

/// The most text read from stdin: far more than any context holds.
const MAX_STDIN_BYTES: u64 = 64 << 20;

#[derive(clap::Args)]
pub struct Args {
    /// Path to a tokenizer.json.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Text to encode (special tokens such as <|im_start|> are recognized). Without --text or
    /// --decode the text is read from stdin, whole and as it is (a trailing newline is text).
    #[arg(long, conflicts_with = "decode")]
    text: Option<String>,
    /// Comma-separated ids to decode instead; the text is printed with a newline after it.
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
    // Loaded first: a bad tokenizer fails before a pipe is read to its end.
    let tok = Tokenizer::from_file(&a.tokenizer)?;
    let text = match (a.text, &a.decode) {
        (Some(text), _) => Some(text),
        (None, Some(_)) => None,
        (None, None) => Some(read_stdin(std::io::stdin())?),
    };
    match (text, a.decode) {
        (Some(text), _) => {
            let ids = tok.encode(&text)?;
            println!("{}", serde_json::to_string(&ids).context("serializing ids")?);
        }
        (None, Some(ids)) => println!("{}", tok.decode(&ids.0, a.skip_special_tokens)?),
        (None, None) => unreachable!("the text is read from stdin without --decode"),
    }
    Ok(())
}

/// All of stdin as UTF-8 text, refused when it is a terminal (nothing would end it but
/// Ctrl-D: more likely a forgotten `--text`).
fn read_stdin(stdin: std::io::Stdin) -> Result<String> {
    if stdin.is_terminal() {
        bail!("give --text TEXT or --decode IDS, or pipe the text to encode on stdin");
    }
    let mut bytes = Vec::new();
    stdin.lock().take(MAX_STDIN_BYTES + 1).read_to_end(&mut bytes).context("reading the text from stdin")?;
    if bytes.len() as u64 > MAX_STDIN_BYTES {
        bail!("stdin holds more than {MAX_STDIN_BYTES} bytes of text: more than any context");
    }
    String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("stdin is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
}
