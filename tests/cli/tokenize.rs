//! `smelt tokenize`: text to the Hugging Face ids and back, with and without special tokens.

use crate::common::*;
use crate::join_ids;

struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

fn tokenizer_case(name: &str) -> Case {
    let path = root().join("tests/fixtures/tokenizer/cases.json");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let c = cases.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no tokenizer case {name}"));
    Case {
        text: c["text"].as_str().unwrap().to_string(),
        ids: c["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect(),
        decoded: c["decoded"].as_str().unwrap().to_string(),
    }
}

const TOKENIZER_CASES: [&str; 8] = [
    "ascii_sentence",
    "code_python",
    "chinese",
    "emoji_zwj_family",
    "crlf",
    "special_im_start_end",
    "special_adjacent",
    "special_think_block",
];

#[test]
fn tokenize_text_prints_the_hf_ids() {
    let tok = tokenizer_path();
    for name in TOKENIZER_CASES {
        let case = tokenizer_case(name);
        let (stdout, _) = smelt_ok(&["tokenize", "--tokenizer", path_str(&tok), "--text", &case.text]);
        assert_eq!(stdout, format!("{}\n", serde_json::to_string(&case.ids).unwrap()), "{name}");
    }
}

#[test]
fn tokenize_decode_prints_the_text() {
    let tok = tokenizer_path();
    for name in TOKENIZER_CASES {
        let case = tokenizer_case(name);
        let (stdout, _) = smelt_ok(&["tokenize", "--tokenizer", path_str(&tok), "--decode", &join_ids(&case.ids)]);
        assert_eq!(stdout, case.decoded, "{name}");
    }
}

#[test]
fn tokenize_decode_can_skip_special_tokens() {
    let case = tokenizer_case("special_im_start_end");
    let tok = tokenizer_path();
    let ids = join_ids(&case.ids);
    let (stdout, _) = smelt_ok(&["tokenize", "--tokenizer", path_str(&tok), "--decode", &ids, "--skip-special-tokens"]);
    assert_eq!(stdout, "user\nhi");
}
