//! Property-based fuzzing of the config parser (`Qwen3Config::from_json_str`): thousands of
//! mutated config.json texts per run, from field-level edits (any JSON value in any field the
//! parser reads) to byte-level damage. No input may panic; every error names its origin; every
//! config that parses keeps the invariants the rest of smelt relies on, and (when small) its
//! graph declares.

use proptest::prelude::*;
use smelt_ir::DType;
use smelt_models::config::limits;
use smelt_models::qwen3::{declare, DeclareOptions, Logits, Phase};
use smelt_models::Qwen3Config;

const ORIGIN: &str = "fuzzed/config.json";

/// A small valid config in the transformers 4.x shape.
const BASE: &str = r#"{
  "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 384,
  "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
  "rope_theta": 10000.0, "rope_scaling": null, "tie_word_embeddings": true, "attention_bias": false,
  "use_sliding_window": false, "hidden_act": "silu", "torch_dtype": "bfloat16", "eos_token_id": 383
}"#;

const FIELDS: [&str; 22] = [
    "architectures",
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "tie_word_embeddings",
    "attention_bias",
    "use_sliding_window",
    "hidden_act",
    "torch_dtype",
    "dtype",
    "eos_token_id",
    "unknown_field",
];

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    let leaf = prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(|b| json!(b)),
        any::<i64>().prop_map(|n| json!(n)),
        (-4i64..70000).prop_map(|n| json!(n)),
        prop_oneof![Just(0u64), Just(1), Just(2), Just(3), Just(1 << 24), Just(1 << 40), Just(u64::MAX)]
            .prop_map(|n| json!(n)),
        prop_oneof![Just(1e-50f64), Just(1e-6), Just(0.0), Just(-1.0), Just(1e39), Just(1e300), Just(0.5)]
            .prop_map(|f| json!(f)),
        any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        prop::sample::select(vec![
            "qwen3", "llama", "silu", "gelu", "bfloat16", "float16", "float32", "int8", "default", "yarn", "",
        ])
        .prop_map(|s| json!(s)),
        ".{0,8}".prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec!["rope_type", "type", "rope_theta", "factor", "x"]),
                inner,
                0..3
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

#[derive(Clone, Debug)]
enum Edit {
    Set(usize, serde_json::Value),
    Remove(usize),
    /// Byte-level damage to the final text.
    Splice {
        at: usize,
        bytes: Vec<u8>,
    },
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        6 => (0..FIELDS.len(), json_value()).prop_map(|(f, v)| Edit::Set(f, v)),
        2 => (0..FIELDS.len()).prop_map(Edit::Remove),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 0..6)).prop_map(|(at, bytes)| Edit::Splice { at, bytes }),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

/// What every parsed config must satisfy.
fn check_invariants(c: &Qwen3Config) {
    for (v, limit) in [
        (c.vocab_size, limits::VOCAB_SIZE),
        (c.hidden_size, limits::HIDDEN_SIZE),
        (c.intermediate_size, limits::INTERMEDIATE_SIZE),
        (c.num_layers, limits::LAYERS),
        (c.num_heads, limits::HEADS),
        (c.num_kv_heads, limits::HEADS),
        (c.head_dim, limits::HEAD_DIM),
        (c.max_position_embeddings, limits::POSITIONS),
    ] {
        assert!(v >= 1 && v <= limit, "{v} outside 1..={limit}: {c:?}");
    }
    assert_eq!(c.num_heads % c.num_kv_heads, 0, "{c:?}");
    assert_eq!(c.head_dim % 2, 0, "{c:?}");
    assert!(c.rms_norm_eps.is_normal() && c.rms_norm_eps > 0.0 && c.rms_norm_eps < 1.0, "{c:?}");
    assert!((c.rope_theta as f32).is_normal() && c.rope_theta > 0.0, "{c:?}");
    assert!(c.eos_token_ids.iter().all(|&id| (id as usize) < c.vocab_size), "{c:?}");
    // Derived sizes fit: the KV bytes per token and the parameter count of the largest config.
    assert!(c.num_layers.checked_mul(2 * c.num_kv_heads * c.head_dim * 4).is_some());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_configs_parse_or_fail_naming_their_origin(edits in prop::collection::vec(edit(), 1..5)) {
        let mut value: serde_json::Value = serde_json::from_str(BASE).unwrap();
        let mut text: Option<Vec<u8>> = None;
        for e in &edits {
            match e {
                Edit::Set(f, v) => {
                    value[FIELDS[*f]] = v.clone();
                }
                Edit::Remove(f) => {
                    value.as_object_mut().unwrap().remove(FIELDS[*f]);
                }
                Edit::Splice { at, bytes } => {
                    let mut t = text.take().unwrap_or_else(|| value.to_string().into_bytes());
                    let i = at % (t.len() + 1);
                    t.splice(i..i, bytes.iter().copied());
                    text = Some(t);
                }
                Edit::Truncate(n) => {
                    let mut t = text.take().unwrap_or_else(|| value.to_string().into_bytes());
                    t.truncate(n % (t.len() + 1));
                    text = Some(t);
                }
            }
        }
        let text = String::from_utf8_lossy(&text.unwrap_or_else(|| value.to_string().into_bytes())).into_owned();
        match Qwen3Config::from_json_str(&text, ORIGIN) {
            Err(e) => prop_assert!(e.to_string().contains(ORIGIN), "the error does not name its origin: {e}"),
            Ok(c) => {
                check_invariants(&c);
                // Declaring is linear in the layers; a small parsed config must declare.
                if c.num_layers <= 4 && c.hidden_size <= 4096 && c.num_heads * c.head_dim <= 4096 {
                    let options = DeclareOptions { phase: Phase::Decode, dtype: DType::BF16, logits: Logits::LastPosition };
                    prop_assert!(declare(&c, options).is_ok(), "{c:?} does not declare");
                }
            }
        }
    }
}
