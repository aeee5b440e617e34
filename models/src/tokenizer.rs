//! Qwen3 tokenizer: a thin, error-checked wrapper over HF `tokenizers`.
//!
//! The wrapper exists so the rest of smelt never sees `tokenizers`' boxed
//! errors (which do not say which file or id was at fault), never silently
//! drops an unknown id during decoding (the library's `decode` does), and can
//! stream generated text without ever emitting half of a multi-byte char.

use std::path::{Path, PathBuf};

use crate::chat::{ChatError, ChatTemplate};

/// Boxed error type returned by the `tokenizers` crate.
type HfError = tokenizers::Error;

/// Everything that can go wrong loading or using a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read tokenizer file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid tokenizer file {}: {source}", path.display())]
    Parse { path: PathBuf, source: HfError },
    #[error("cannot load chat template for tokenizer in {}: {source}", dir.display())]
    ChatTemplate { dir: PathBuf, source: ChatError },
    #[error("encoding failed with tokenizer {}: {source}", path.display())]
    Encode { path: PathBuf, source: HfError },
    #[error("decoding failed at token id {id} with tokenizer {}: {source}", path.display())]
    Decode { path: PathBuf, id: u32, source: HfError },
    #[error("token id {id} is out of range for tokenizer {} (vocab size {vocab_size})", path.display())]
    UnknownId { path: PathBuf, id: u32, vocab_size: usize },
    #[error("streaming decode of token id {id} rewrote earlier text {earlier:?} as {now:?}")]
    StreamPrefix { id: u32, earlier: String, now: String },
}

/// A loaded tokenizer plus (optionally) the model's chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    chat_template: Option<ChatTemplate>,
}

impl Tokenizer {
    /// Loads a `tokenizer.json`. No chat template is attached.
    pub fn from_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
        // Read the bytes ourselves so an I/O error can name the path.
        let bytes = smelt_runtime::files::read_metadata(path)
            .map_err(|source| TokenizerError::Read { path: path.to_path_buf(), source })?;
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|source| TokenizerError::Parse { path: path.to_path_buf(), source })?;
        Ok(Tokenizer { inner, path: path.to_path_buf(), chat_template: None })
    }

    /// Loads `dir/tokenizer.json` and, when present, the chat template from
    /// `dir/chat_template.jinja` or else `dir/tokenizer_config.json` (the same
    /// precedence as recent `transformers`).
    pub fn from_model_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let mut tok = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
        tok.chat_template = ChatTemplate::from_model_dir(dir)
            .map_err(|source| TokenizerError::ChatTemplate { dir: dir.to_path_buf(), source })?;
        Ok(tok)
    }

    /// Loads `path` (a tokenizer.json) with the chat template of its own folder, else of
    /// `model_dir` (see [`Tokenizer::from_model_dir`]).
    pub fn from_file_for(path: &Path, model_dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let mut tok = Tokenizer::from_file(path)?;
        let own = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        for dir in [own, model_dir] {
            tok.chat_template = ChatTemplate::from_model_dir(dir)
                .map_err(|source| TokenizerError::ChatTemplate { dir: dir.to_path_buf(), source })?;
            if tok.chat_template.is_some() {
                break;
            }
        }
        Ok(tok)
    }

    /// Encodes `text` without adding special tokens (Qwen3 has no BOS), but
    /// recognizing special tokens such as `<|im_start|>` written in the text,
    /// exactly as HF `tokenizer.encode(text, add_special_tokens=False)`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|source| TokenizerError::Encode { path: self.path.clone(), source })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes `ids` to text. Unlike `tokenizers`, an unknown id is an error
    /// naming that id rather than being silently dropped.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        for &id in ids {
            self.check_id(id)?;
        }
        self.decode_checked(ids, skip_special_tokens)
    }

    /// Decodes ids already known to be valid.
    fn decode_checked(&self, ids: &[u32], skip: bool) -> Result<String, TokenizerError> {
        self.inner.decode(ids, skip).map_err(|source| TokenizerError::Decode {
            path: self.path.clone(),
            id: ids.first().copied().unwrap_or_default(),
            source,
        })
    }

    /// Errors unless `id` maps to a token (base vocab or added token).
    fn check_id(&self, id: u32) -> Result<(), TokenizerError> {
        if self.inner.id_to_token(id).is_some() {
            Ok(())
        } else {
            Err(TokenizerError::UnknownId { path: self.path.clone(), id, vocab_size: self.vocab_size() })
        }
    }

    /// Number of tokens including added/special tokens (151669 for Qwen3;
    /// smaller than the model's padded embedding table).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of a token string (e.g. `"<|im_end|>"`), if it is in the vocab.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The chat template loaded by [`Tokenizer::from_model_dir`], if any.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Starts streaming detokenization of generated ids.
    pub fn decode_stream(&self, skip_special_tokens: bool) -> IncrementalDecoder<'_> {
        IncrementalDecoder { tokenizer: self, skip_special_tokens, ids: Vec::new(), read_offset: 0 }
    }
}

/// Streaming detokenizer using the prefix / read-offset scheme.
///
/// Byte-level BPE may split one UTF-8 char over several tokens, and decoding
/// a token alone may differ from decoding it in context. So each step decodes
/// a short window `ids[..]` (the last emitted tokens plus the pending ones),
/// compares it to the decoding of the already-emitted part `ids[..read_offset]`,
/// and emits only the new suffix once it no longer ends in U+FFFD (the
/// marker of an incomplete char). We do not use `tokenizers::DecodeStream`
/// because it silently drops unknown ids and cannot flush held-back text.
pub struct IncrementalDecoder<'a> {
    tokenizer: &'a Tokenizer,
    skip_special_tokens: bool,
    /// Context window: already-emitted tokens followed by pending ones.
    ids: Vec<u32>,
    /// `ids[..read_offset]` has been emitted; the rest is pending.
    read_offset: usize,
}

impl IncrementalDecoder<'_> {
    /// Feed one generated id; returns the text that became final (never a
    /// partial UTF-8 char / U+FFFD from a char split across tokens).
    pub fn step(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        self.tokenizer.check_id(id)?;
        self.ids.push(id);
        let (prefix, full) = self.decode_window(id)?;
        if full.len() <= prefix.len() || full.ends_with(char::REPLACEMENT_CHARACTER) {
            return Ok(None);
        }
        let new_text = full[prefix.len()..].to_string();
        // The newly emitted tokens become the context for the next step;
        // older ones can no longer influence decoding and are dropped.
        self.ids.drain(..self.read_offset);
        self.read_offset = self.ids.len();
        Ok(Some(new_text))
    }

    /// Ends the stream, returning any text still held back (e.g. a
    /// generation that stopped in the middle of a multi-byte char, which
    /// then ends in U+FFFD exactly as a full `decode` would).
    pub fn finish(mut self) -> Result<Option<String>, TokenizerError> {
        let Some(&id) = self.ids.last() else {
            return Ok(None);
        };
        let (prefix, full) = self.decode_window(id)?;
        self.ids.clear();
        Ok((full.len() > prefix.len()).then(|| full[prefix.len()..].to_string()))
    }

    /// Decodes the emitted part and the whole window, checking that the
    /// former is a prefix of the latter so slicing is on a char boundary.
    fn decode_window(&self, id: u32) -> Result<(String, String), TokenizerError> {
        let skip = self.skip_special_tokens;
        let prefix = self.tokenizer.decode_checked(&self.ids[..self.read_offset], skip)?;
        let full = self.tokenizer.decode_checked(&self.ids, skip)?;
        if !full.starts_with(&prefix) {
            return Err(TokenizerError::StreamPrefix { id, earlier: prefix, now: full });
        }
        Ok((prefix, full))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen3() -> Tokenizer {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/qwen3"));
        Tokenizer::from_model_dir(dir).expect("bundled Qwen3 tokenizer loads")
    }

    #[test]
    fn missing_file_error_names_path() {
        let path = Path::new("/nonexistent/dir/tokenizer.json");
        let err = Tokenizer::from_file(path).err().expect("must fail");
        assert!(matches!(err, TokenizerError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/dir/tokenizer.json"));
    }

    #[test]
    fn invalid_file_error_names_path() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, b"{ not json").expect("write temp file");
        let err = Tokenizer::from_file(&path).err().expect("must fail");
        assert!(matches!(err, TokenizerError::Parse { .. }), "{err:?}");
        assert!(err.to_string().contains(&*path.to_string_lossy()));
    }

    #[test]
    fn out_of_range_id_error_names_id() {
        let tok = qwen3();
        let err = tok.decode(&[9707, 151_900], false).expect_err("must fail");
        assert!(matches!(err, TokenizerError::UnknownId { id: 151_900, .. }));
        assert!(err.to_string().contains("151900"), "{err}");
        let mut stream = tok.decode_stream(false);
        assert!(stream.step(151_669).is_err());
    }

    #[test]
    fn vocab_and_special_tokens() {
        let tok = qwen3();
        assert_eq!(tok.vocab_size(), 151_669);
        assert_eq!(tok.token_id("<|im_end|>"), Some(151_645));
        assert_eq!(tok.token_id("<think>"), Some(151_667));
        assert!(tok.chat_template().is_some());
        let ids = tok.encode("<|im_start|>user\nhi<|im_end|>").expect("encode");
        assert_eq!(ids.first(), Some(&151_644));
        assert_eq!(ids.last(), Some(&151_645));
        assert_eq!(tok.decode(&ids, true).expect("decode"), "user\nhi");
    }
}
