//! Checks the tokenizer and chat template against reference outputs produced
//! by HF `transformers` (see `tests/fixtures/tokenizer/` at the workspace root).
//!
//! Each test collects every failing case before panicking, so one run shows
//! the full extent of any discrepancy with HF.

use std::path::Path;

use serde::Deserialize;
use smelt_models::{ChatMessage, Tokenizer};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::{NormalizedString, Normalizer};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tokenizer");
const MODEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/qwen3");

/// `cases.json`: HF `encode(text, add_special_tokens=False)` and `decode(ids)`.
#[derive(Deserialize)]
struct EncodeCase {
    name: String,
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

/// `chat.json`: HF `apply_chat_template(...)` rendered and then encoded.
#[derive(Deserialize)]
struct ChatCase {
    name: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    enable_thinking: Option<bool>,
    rendered: String,
    ids: Vec<u32>,
}

fn load<T: for<'de> Deserialize<'de>>(file: &str) -> Vec<T> {
    let path = Path::new(FIXTURES).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad fixture {}: {e}", path.display()))
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_model_dir(Path::new(MODEL_DIR)).expect("Qwen3 tokenizer loads")
}

/// Describes where two id sequences first differ, or `None` if equal.
fn id_diff(got: &[u32], want: &[u32]) -> Option<String> {
    if got == want {
        return None;
    }
    let at = got.iter().zip(want).take_while(|(g, w)| g == w).count();
    Some(format!(
        "first difference at index {at}: got {:?}, want {:?} (lengths {} vs {})",
        got.get(at),
        want.get(at),
        got.len(),
        want.len()
    ))
}

/// True when NFC normalization (the tokenizer's normalizer) leaves `text`
/// unchanged, i.e. decode(encode(text)) can be expected to give `text` back.
fn nfc_stable(text: &str) -> bool {
    let mut normalized = NormalizedString::from(text);
    NFC.normalize(&mut normalized).is_ok() && normalized.get() == text
}

/// Streams `ids` through the incremental decoder, checking no piece carries a
/// U+FFFD that the full decode does not, and returns the concatenation.
fn stream(tok: &Tokenizer, ids: &[u32], skip: bool) -> Result<String, String> {
    let full = tok.decode(ids, skip).map_err(|e| e.to_string())?;
    let mut decoder = tok.decode_stream(skip);
    let mut out = String::new();
    for &id in ids {
        if let Some(piece) = decoder.step(id).map_err(|e| e.to_string())? {
            if piece.contains(char::REPLACEMENT_CHARACTER) && !full.contains('\u{FFFD}') {
                return Err(format!("partial char emitted at id {id}: {piece:?}"));
            }
            out.push_str(&piece);
        }
    }
    out.extend(decoder.finish().map_err(|e| e.to_string())?);
    Ok(out)
}

fn report(what: &str, failures: &[String]) {
    assert!(failures.is_empty(), "{} {what} failure(s):\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn encode_matches_hf() {
    let tok = tokenizer();
    let cases: Vec<EncodeCase> = load("cases.json");
    assert!(!cases.is_empty(), "cases.json is empty");
    let mut failures = Vec::new();
    for case in &cases {
        match tok.encode(&case.text) {
            Ok(ids) => failures.extend(id_diff(&ids, &case.ids).map(|d| format!("{}: {d}", case.name))),
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }
    report("encode", &failures);
}

#[test]
fn decode_matches_hf_and_round_trips() {
    let tok = tokenizer();
    let cases: Vec<EncodeCase> = load("cases.json");
    let mut failures = Vec::new();
    for case in &cases {
        match tok.decode(&case.ids, false) {
            Ok(text) if text != case.decoded => {
                failures.push(format!("{}: decode gave {text:?}, HF gave {:?}", case.name, case.decoded))
            }
            Ok(text) if nfc_stable(&case.text) && text != case.text => {
                failures.push(format!("{}: NFC-stable text did not round-trip: {text:?}", case.name))
            }
            Ok(_) => {}
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }
    report("decode", &failures);
}

#[test]
fn stream_decode_matches_full_decode() {
    let tok = tokenizer();
    let cases: Vec<EncodeCase> = load("cases.json");
    let chats: Vec<ChatCase> = load("chat.json");
    let all = cases.iter().map(|c| (&c.name, &c.ids)).chain(chats.iter().map(|c| (&c.name, &c.ids)));
    let mut failures = Vec::new();
    for (name, ids) in all {
        for skip in [false, true] {
            let want = tok.decode(ids, skip).map_err(|e| e.to_string());
            match (stream(&tok, ids, skip), want) {
                (Ok(got), Ok(want)) if got == want => {}
                (got, want) => {
                    failures.push(format!("{name} (skip_special={skip}): stream {got:?} vs decode {want:?}"))
                }
            }
        }
    }
    report("streaming", &failures);
}

#[test]
fn chat_template_matches_hf() {
    let tok = tokenizer();
    let template = tok.chat_template().expect("Qwen3 ships a chat template");
    let cases: Vec<ChatCase> = load("chat.json");
    assert!(!cases.is_empty(), "chat.json is empty");
    let mut failures = Vec::new();
    for case in &cases {
        let rendered = template.render(&case.messages, case.add_generation_prompt, case.enable_thinking);
        match rendered {
            Ok(text) if text != case.rendered => {
                failures.push(format!("{}: rendered {text:?}\n  HF gave {:?}", case.name, case.rendered))
            }
            Ok(_) => {}
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
        match tok.encode(&case.rendered) {
            Ok(ids) => failures.extend(id_diff(&ids, &case.ids).map(|d| format!("{} (ids): {d}", case.name))),
            Err(e) => failures.push(format!("{} (ids): {e}", case.name)),
        }
    }
    report("chat", &failures);
}

/// A char that BPE splits over several byte-level tokens must come out
/// whole, in one step, and the stream must equal a full decode.
#[test]
fn stream_never_splits_a_char() {
    let tok = tokenizer();
    let text = "Snow: 雪 and 🦀🦀 crab, 𝄞 clef, ok.";
    let ids = tok.encode(text).expect("encode");
    // Prove the test is meaningful: some token alone is not valid UTF-8.
    let partial = ids.iter().any(|&id| {
        let s = tok.decode(&[id], false).unwrap_or_default();
        s.contains(char::REPLACEMENT_CHARACTER)
    });
    assert!(partial, "no char was split across tokens: {ids:?}");
    let mut stream = tok.decode_stream(false);
    let (mut out, mut held_back) = (String::new(), false);
    for &id in &ids {
        match stream.step(id).expect("step") {
            Some(piece) => {
                assert!(!piece.contains(char::REPLACEMENT_CHARACTER), "{piece:?}");
                out.push_str(&piece);
            }
            None => held_back = true,
        }
    }
    assert!(held_back, "no partial char was ever held back");
    assert_eq!(stream.finish().expect("finish"), None);
    assert_eq!(out, tok.decode(&ids, false).expect("decode"));
    assert_eq!(out, text);
}

#[test]
fn finish_flushes_incomplete_char() {
    let tok = tokenizer();
    let ids = tok.encode("a 𝄞 clef").expect("encode");
    // Cut the ids right after the first token that leaves a char unfinished,
    // as when generation stops at max_tokens in the middle of a char.
    let cut_len = (1..ids.len())
        .find(|&n| {
            let s = tok.decode(&ids[..n], false).unwrap_or_default();
            s.ends_with(char::REPLACEMENT_CHARACTER)
        })
        .expect("some char is split across tokens");
    let cut = &ids[..cut_len];
    let want = tok.decode(cut, false).expect("decode");
    let mut stream = tok.decode_stream(false);
    let mut out = String::new();
    for &id in cut {
        out.extend(stream.step(id).expect("step"));
    }
    out.extend(stream.finish().expect("finish"));
    assert_eq!(out, want);
}
