//! Property-based fuzzing of the safetensors header and index parsing (`Checkpoint::open`),
//! then of everything a loaded checkpoint offers (`dtype`, `shape`, `load` in every dtype):
//! thousands of mutated files per run must give no panic, no hang and no unbounded allocation,
//! and every error must name the file it is about.

use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use smelt_ir::DType;
use smelt_runtime::weights::{INDEX_FILE, SINGLE_FILE};
use smelt_runtime::Checkpoint;

/// One case may take this long: a parse is microseconds, so more means a loop or a huge copy.
const SLOW: Duration = Duration::from_secs(2);

/// A valid file: three tensors in three dtypes, with metadata.
fn valid_file() -> Vec<u8> {
    let a: Vec<u8> = (0..6).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
    let b: Vec<u8> = (0..4u16).flat_map(|i| (0x3f80 + i).to_le_bytes()).collect();
    let c: Vec<u8> = (0..4u16).flat_map(|i| (0x3c00 + i).to_le_bytes()).collect();
    let views = [
        ("a", TensorView::new(Dtype::F32, vec![2, 3], &a).unwrap()),
        ("b", TensorView::new(Dtype::BF16, vec![4], &b).unwrap()),
        ("c", TensorView::new(Dtype::F16, vec![2, 2], &c).unwrap()),
    ];
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).unwrap()
}

/// JSON values a mutated header or index field may take.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        Just(json!(null)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (0u64..64).prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        prop::sample::select(vec!["F32", "BF16", "F16", "F64", "I32", "BOOL", "U8", "F8_E4M3", "", "x"])
            .prop_map(|s| json!(s)),
        prop::collection::vec(prop_oneof![0u64..8, Just(u64::MAX), Just(1 << 40)], 0..4).prop_map(|v| json!(v)),
        ".{0,12}".prop_map(|s| json!(s)),
        Just(json!({})),
    ]
}

/// One change to a file's bytes or to its header's JSON.
#[derive(Clone, Debug)]
enum Mutation {
    Flip {
        at: usize,
        xor: u8,
    },
    Truncate {
        to: usize,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    HeaderLength(u64),
    /// Sets field `field` of tensor `tensor` (or a new key) in the header JSON.
    HeaderField {
        tensor: usize,
        field: usize,
        value: serde_json::Value,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Header edits most often: byte-level damage rarely leaves a header that parses.
    prop_oneof![
        1 => (any::<usize>(), 1u8..).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        1 => any::<usize>().prop_map(|to| Mutation::Truncate { to }),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => prop_oneof![any::<u64>(), 0u64..400].prop_map(Mutation::HeaderLength),
        4 => (0usize..5, 0usize..4, json_value()).prop_map(|(tensor, field, value)| Mutation::HeaderField {
            tensor,
            field,
            value
        }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Flip { at, xor } if !bytes.is_empty() => {
            let i = at % bytes.len();
            bytes[i] ^= xor;
        }
        Mutation::Flip { .. } => {}
        Mutation::Truncate { to } => bytes.truncate(to % (bytes.len() + 1)),
        Mutation::Insert { at, bytes: new } => {
            let i = at % (bytes.len() + 1);
            bytes.splice(i..i, new.iter().copied());
        }
        Mutation::HeaderLength(n) if bytes.len() >= 8 => bytes[..8].copy_from_slice(&n.to_le_bytes()),
        Mutation::HeaderLength(_) => {}
        Mutation::HeaderField { tensor, field, value } => {
            let Some(n) = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize) else { return };
            let Some(header) = bytes.get(8..8usize.saturating_add(n)) else { return };
            let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice::<serde_json::Value>(header) else {
                return;
            };
            let name = ["a", "b", "c", "__metadata__", "new"][*tensor];
            let key = ["dtype", "shape", "data_offsets", "extra"][*field];
            let entry = map.entry(name).or_insert_with(|| serde_json::json!({}));
            match entry.as_object_mut() {
                Some(obj) => {
                    obj.insert(key.to_string(), value.clone());
                }
                None => *entry = value.clone(),
            }
            let text = serde_json::to_vec(&map).unwrap();
            let mut out = (text.len() as u64).to_le_bytes().to_vec();
            out.extend(text);
            out.extend_from_slice(&bytes[8 + n..]);
            *bytes = out;
        }
    }
}

/// Opens `dir` and uses everything the checkpoint offers; every error must name a file in
/// `dir` (or `dir` itself). Returns whether it opened.
fn exercise(dir: &Path) -> bool {
    let shown = dir.display().to_string();
    let named = |e: &dyn std::fmt::Display| {
        let text = e.to_string();
        assert!(text.contains(&shown), "the error does not name its file: {text}");
    };
    let checkpoint = match Checkpoint::open(dir) {
        Ok(c) => c,
        Err(e) => {
            named(&e);
            return false;
        }
    };
    for name in checkpoint.names() {
        let _ = checkpoint.shape(name);
        if let Err(e) = checkpoint.dtype(name) {
            named(&e);
        }
        for dtype in [DType::F32, DType::BF16, DType::F16, DType::I32] {
            if let Err(e) = checkpoint.load(name, dtype) {
                named(&e);
            }
        }
    }
    true
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_safetensors_files_fail_cleanly(mutations in prop::collection::vec(mutation(), 1..4)) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = valid_file();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        std::fs::write(dir.path().join(SINGLE_FILE), &bytes).unwrap();
        let t = Instant::now();
        exercise(dir.path());
        prop_assert!(t.elapsed() < SLOW, "took {:?}", t.elapsed());
    }
}

/// A shard holding tensors `names` (f32 [2]).
fn shard(dir: &Path, file: &str, names: &[&str]) {
    let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let views: Vec<_> = names.iter().map(|n| (*n, TensorView::new(Dtype::F32, vec![2], &data).unwrap())).collect();
    std::fs::write(dir.join(file), safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Index mutations: a weight_map entry set to any JSON value, any name, or the text mangled.
#[derive(Clone, Debug)]
enum IndexMutation {
    Entry { key: String, value: serde_json::Value },
    Shard { key: usize, shard: String },
    Root(serde_json::Value),
    Text { at: usize, bytes: Vec<u8> },
}

fn index_mutation() -> impl Strategy<Value = IndexMutation> {
    let shard = prop_oneof![
        Just("s1.safetensors".to_string()),
        Just("s2.safetensors".to_string()),
        Just("../s1.safetensors".to_string()),
        Just("/etc/passwd".to_string()),
        Just(String::new()),
        Just(".".to_string()),
        Just("sub/../s1.safetensors".to_string()),
        "[a-z./]{0,12}",
    ];
    prop_oneof![
        ("[a-z]{1,3}", json_value()).prop_map(|(key, value)| IndexMutation::Entry { key, value }),
        (0usize..3, shard).prop_map(|(key, shard)| IndexMutation::Shard { key, shard }),
        json_value().prop_map(IndexMutation::Root),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| IndexMutation::Text { at, bytes }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_indexes_fail_cleanly(mutations in prop::collection::vec(index_mutation(), 1..4)) {
        let dir = tempfile::tempdir().unwrap();
        shard(dir.path(), "s1.safetensors", &["a", "b"]);
        shard(dir.path(), "s2.safetensors", &["c"]);
        let mut index = serde_json::json!({
            "metadata": {"total_size": 24},
            "weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"}
        });
        let mut text: Option<Vec<u8>> = None;
        for m in &mutations {
            match m {
                IndexMutation::Entry { key, value } => {
                    if let Some(map) = index["weight_map"].as_object_mut() {
                        map.insert(key.clone(), value.clone());
                    }
                }
                IndexMutation::Shard { key, shard } => {
                    if let Some(map) = index["weight_map"].as_object_mut() {
                        map.insert(["a", "b", "c"][*key].to_string(), shard.clone().into());
                    }
                }
                IndexMutation::Root(v) => index["weight_map"] = v.clone(),
                IndexMutation::Text { at, bytes } => {
                    let mut t = text.take().unwrap_or_else(|| serde_json::to_vec(&index).unwrap());
                    let i = at % (t.len() + 1);
                    t.splice(i..i, bytes.iter().copied());
                    text = Some(t);
                }
            }
        }
        let text = text.unwrap_or_else(|| serde_json::to_vec(&index).unwrap());
        std::fs::write(dir.path().join(INDEX_FILE), text).unwrap();
        let t = Instant::now();
        exercise(dir.path());
        prop_assert!(t.elapsed() < SLOW, "took {:?}", t.elapsed());
    }
}
