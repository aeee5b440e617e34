//! `--batch` sizes, and property-based fuzzing of the batch-file parser: thousands of files
//! with a mutated line per run. No line may panic the parser, and every error names the file
//! and the line at fault.

use std::sync::OnceLock;

use proptest::prelude::*;
use smelt::models::{SamplingParams, Tokenizer};

use super::{parse_size, read_requests, Defaults};

#[test]
fn sizes_parse_in_binary_and_decimal_units() {
    assert_eq!(parse_size("48KiB"), Ok(48 * 1024));
    assert_eq!(parse_size("2GiB"), Ok(2 << 30));
    assert_eq!(parse_size("1.5 GB"), Ok(1_500_000_000));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert!(parse_size("12 parsecs").unwrap_err().contains("unknown unit"));
    assert!(parse_size("KiB").is_err());
    assert!(parse_size("0").is_err());
}

/// A batch's defaults: 4 new tokens, greedy, no stops, no chat template.
fn defaults() -> Defaults<'static> {
    Defaults { max_new_tokens: 4, sampling: SamplingParams::default(), stop: &[], chat: false, enable_thinking: None }
}

#[test]
fn a_line_setting_a_sampling_field_at_temperature_0_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests.jsonl");
    let defaults = defaults();
    for (line, refused) in [
        (r#"{"prompt_ids": [1, 2], "top_k": 5}"#, Some("top_k")),
        (r#"{"prompt_ids": [1, 2], "seed": 7, "temperature": 0}"#, Some("seed")),
        (r#"{"prompt_ids": [1, 2], "top_p": 0.5, "temperature": 0.7}"#, None),
        (r#"{"prompt_ids": [1, 2], "repetition_penalty": 1.2}"#, None),
    ] {
        std::fs::write(&path, format!("{{\"prompt_ids\": [3]}}\n{line}\n")).unwrap();
        match (read_requests(&path, &defaults, None), refused) {
            (Ok(_), None) => {}
            (Err(e), Some(field)) => {
                let e = format!("{e:#}");
                assert!(e.contains(&format!("{}:2", path.display())) && e.contains(field), "{e}");
                assert!(e.contains("temperature"), "{e}");
            }
            (r, _) => panic!("{line}: {:?}", r.map(|_| ()).map_err(|e| format!("{e:#}"))),
        }
    }
}

/// The real tokenizer and chat template, loaded once for every case.
fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/assets/qwen3");
        Tokenizer::from_model_dir(&dir).expect("the Qwen3 tokenizer")
    })
}

const KEYS: [&str; 14] = [
    "prompt",
    "prompt_ids",
    "messages",
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "seed",
    "stop",
    "role",
    "unknown",
];

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    let leaf = prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(|b| json!(b)),
        any::<i64>().prop_map(|n| json!(n)),
        (0u64..200000).prop_map(|n| json!(n)),
        Just(json!(u64::MAX)),
        prop_oneof![Just(-1.0f64), Just(0.0), Just(0.5), Just(1.0), Just(2.0), Just(1e39), Just(1e-45)]
            .prop_map(|f| json!(f)),
        prop::sample::select(vec!["hi", "", "<|im_start|>", "user", "assistant", "system", "tool", "wizard"])
            .prop_map(|s| json!(s)),
        ".{0,6}".prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(prop::sample::select(vec!["role", "content", "x"]), inner, 0..3)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

#[derive(Clone, Debug)]
enum LineEdit {
    Set(usize, serde_json::Value),
    Remove(usize),
    Splice { at: usize, bytes: Vec<u8> },
}

fn line_edit() -> impl Strategy<Value = LineEdit> {
    prop_oneof![
        6 => (0..KEYS.len(), json_value()).prop_map(|(k, v)| LineEdit::Set(k, v)),
        1 => (0..KEYS.len()).prop_map(LineEdit::Remove),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..5)).prop_map(|(at, bytes)| LineEdit::Splice { at, bytes }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_batch_lines_parse_or_fail_naming_file_and_line(
        base in 0usize..3,
        edits in prop::collection::vec(line_edit(), 1..4),
        at_line in 1usize..4,
    ) {
        let bases = [
            serde_json::json!({"prompt_ids": [5, 17]}),
            serde_json::json!({"prompt": "Hello"}),
            serde_json::json!({"messages": [{"role": "user", "content": "Hi"}], "max_new_tokens": 3}),
        ];
        let mut value = bases[base].clone();
        let mut text: Option<Vec<u8>> = None;
        for e in &edits {
            match e {
                LineEdit::Set(k, v) => value[KEYS[*k]] = v.clone(),
                LineEdit::Remove(k) => {
                    value.as_object_mut().unwrap().remove(KEYS[*k]);
                }
                LineEdit::Splice { at, bytes } => {
                    let mut t = text.take().unwrap_or_else(|| value.to_string().into_bytes());
                    let i = at % (t.len() + 1);
                    t.splice(i..i, bytes.iter().copied());
                    text = Some(t);
                }
            }
        }
        // The mutated line among valid ones; a newline it gained splits it (still one file).
        let line = String::from_utf8_lossy(&text.unwrap_or_else(|| value.to_string().into_bytes())).into_owned();
        let mut lines = vec![r#"{"prompt_ids": [1]}"#.to_string(); 3];
        lines[at_line - 1] = line;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("requests.jsonl");
        std::fs::write(&path, lines.join("\n")).unwrap();
        let defaults = defaults();
        if let Err(e) = read_requests(&path, &defaults, Some(tokenizer())) {
            let text = format!("{e:#}");
            let named = (1..=lines.join("\n").lines().count().max(1))
                .any(|n| text.contains(&format!("{}:{n}", path.display())))
                || text.contains(&format!("--batch {}", path.display()));
            prop_assert!(named, "the error does not name the file and line: {text}");
        }
    }
}
