//! Naming the tensor at fault when `safetensors` refuses a header: its own errors often stop at
//! "invalid offset for tensor" or name a neighbour. Only run on a header already refused, so it
//! never decides what loads; it only says why.

use std::collections::HashSet;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// The header's entries in file order, duplicates kept (a JSON map would keep only the last).
struct Entries(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Entries, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(EntriesVisitor)
    }
}

fn dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// What is wrong with the first tensor of `header` (the JSON text) that is at fault, given
/// `data_len` bytes after the header; `None` when no single tensor is.
pub fn diagnose(header: &[u8], data_len: u64) -> Option<String> {
    let Entries(entries) = serde_json::from_slice(header).ok()?;
    let mut seen = HashSet::new();
    let mut spans = Vec::new();
    for (name, info) in &entries {
        if !seen.insert(name.as_str()) {
            return Some(format!("tensor {name} is listed twice in the header"));
        }
        if name == "__metadata__" {
            continue;
        }
        let fault = |what: String| Some(format!("tensor {name}: {what}"));
        let dtype = info["dtype"].as_str().unwrap_or("");
        let Some(size) = dtype_bytes(dtype) else {
            return fault(format!("dtype {} is not a safetensors dtype", info["dtype"]));
        };
        let shape: Option<Vec<u64>> = info["shape"].as_array().and_then(|a| a.iter().map(Value::as_u64).collect());
        let Some(shape) = shape else {
            return fault(format!("shape {} is not a list of sizes", info["shape"]));
        };
        let offsets: Option<Vec<u64>> =
            info["data_offsets"].as_array().and_then(|a| a.iter().map(Value::as_u64).collect());
        let Some(&[start, end]) = offsets.as_deref() else {
            return fault(format!("data_offsets {} is not [start, end]", info["data_offsets"]));
        };
        if start > end {
            return fault(format!("data_offsets [{start}, {end}] end before they start"));
        }
        if end > data_len {
            return fault(format!(
                "data_offsets [{start}, {end}] lie past the end of the data ({data_len} bytes): the file is \
                 incomplete or the offsets are wrong"
            ));
        }
        let bytes = shape.iter().try_fold(size, |acc, &d| acc.checked_mul(d));
        if bytes != Some(end - start) {
            let want = bytes.map_or("more than 2^64".to_string(), |b| b.to_string());
            return fault(format!(
                "dtype {dtype} x shape {shape:?} is {want} bytes, but its data_offsets [{start}, {end}] hold {}",
                end - start
            ));
        }
        spans.push((start, end, name));
    }
    spans.sort();
    let mut covered = 0;
    for (start, end, name) in spans {
        if start != covered {
            let how = if start < covered { "overlaps the tensor before it" } else { "leaves a gap before it" };
            return Some(format!(
                "tensor {name}: data_offsets [{start}, {end}] {how} (expected to start at {covered})"
            ));
        }
        covered = end;
    }
    (covered != data_len).then(|| format!("the tensors cover {covered} of the {data_len} data bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(tensors: &str) -> Vec<u8> {
        format!("{{\"__metadata__\": {{\"format\": \"pt\"}}, {tensors}}}").into_bytes()
    }

    #[test]
    fn each_fault_names_its_tensor() {
        let a = r#""a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}"#;
        let cases = [
            (r#""b": {"dtype": "F64", "shape": [2], "data_offsets": [8, 24]}"#, 24, None),
            (
                r#""b": {"dtype": "F64", "shape": [2], "data_offsets": [8, 24]}"#,
                32,
                Some("the tensors cover 24 of the 32"),
            ),
            (
                r#""b": {"dtype": "F64", "shape": [1], "data_offsets": [8, 24]}"#,
                24,
                Some("tensor b: dtype F64 x shape [1] is 8 bytes"),
            ),
            (r#""b": {"dtype": "X9", "shape": [2], "data_offsets": [8, 16]}"#, 16, Some("tensor b: dtype \"X9\"")),
            (r#""b": {"dtype": "F32", "shape": [-2], "data_offsets": [8, 16]}"#, 16, Some("tensor b: shape [-2]")),
            (
                r#""b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}"#,
                12,
                Some("tensor b: data_offsets [4, 12] overlaps"),
            ),
            (
                r#""b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}"#,
                20,
                Some("tensor b: data_offsets [12, 20] leaves a gap"),
            ),
            (
                r#""b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}"#,
                12,
                Some("tensor b: data_offsets [8, 16] lie past the end of the data (12 bytes)"),
            ),
            (r#""a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}"#, 16, Some("tensor a is listed twice")),
            (r#""b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 8]}"#, 16, Some("end before they start")),
            (
                r#""b": {"dtype": "F32", "shape": [4611686018427387904, 8], "data_offsets": [8, 16]}"#,
                16,
                Some("more than 2^64"),
            ),
        ];
        for (b, data_len, want) in cases {
            let got = diagnose(&header(&format!("{a}, {b}")), data_len);
            match (want, &got) {
                (None, None) => {}
                (Some(w), Some(g)) if g.contains(w) => {}
                _ => panic!("{b} over {data_len} bytes: got {got:?}, wanted {want:?}"),
            }
        }
        assert_eq!(diagnose(b"[1, 2]", 0), None, "not an object: safetensors' own message stands");
    }
}
