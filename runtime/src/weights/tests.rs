//! Checkpoint tests over small files written with `safetensors::serialize`.

use std::fs;
use std::path::Path;

use half::{bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use tempfile::TempDir;

use super::*;
use smelt_ir::Data;

/// One stored tensor: name, dtype, shape, raw little-endian bytes.
pub(super) type Raw = (&'static str, Dtype, Vec<usize>, Vec<u8>);

pub(super) fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
pub(super) fn bf16s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes()).collect()
}
pub(super) fn f16s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| f16::from_f32(x).to_bits().to_le_bytes()).collect()
}

pub(super) fn f32_raw(name: &'static str, shape: &[usize]) -> Raw {
    let n = shape.iter().product::<usize>();
    let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
    (name, Dtype::F32, shape.to_vec(), f32s(&v))
}

pub(super) fn write(path: &Path, tensors: &[Raw]) {
    let views: Vec<_> = tensors.iter().map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap())).collect();
    fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

pub(super) fn single(tensors: &[Raw]) -> TempDir {
    let dir = TempDir::new().unwrap();
    write(&dir.path().join(SINGLE_FILE), tensors);
    dir
}

/// Two shards: `a` and `b` in shard 1, `c` in shard 2.
fn sharded() -> TempDir {
    let dir = TempDir::new().unwrap();
    let s1 = "model-00001-of-00002.safetensors";
    let s2 = "model-00002-of-00002.safetensors";
    write(&dir.path().join(s1), &[f32_raw("a", &[2]), f32_raw("b", &[3])]);
    let c = [1.0, -0.5, 0.25, 8.0];
    write(&dir.path().join(s2), &[("c", Dtype::BF16, vec![2, 2], bf16s(&c))]);
    let index =
        format!(r#"{{"metadata": {{"total_size": 28}}, "weight_map": {{"a": "{s1}", "b": "{s1}", "c": "{s2}"}}}}"#);
    fs::write(dir.path().join(INDEX_FILE), index).unwrap();
    dir
}

pub(super) fn spec(name: &str, shape: &[usize]) -> WeightSpec {
    WeightSpec::new(name, shape)
}

fn open_err(dir: &Path) -> WeightError {
    match Checkpoint::open(dir) {
        Ok(_) => panic!("opened {}", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn round_trips_f32_bf16_f16() {
    let exact = [1.0, -2.5, 0.15625, 65504.0, -0.0, 3.0e-5];
    let dir = single(&[
        ("x.bf16", Dtype::BF16, vec![2, 3], bf16s(&exact)),
        ("x.f16", Dtype::F16, vec![6], f16s(&exact)),
        ("x.f32", Dtype::F32, vec![3, 2], f32s(&[0.1, 1.0 / 3.0, 1e30, -7.0, 0.0, 2.0])),
    ]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.names(), ["x.bf16", "x.f16", "x.f32"]);
    assert_eq!(ck.dtype("x.bf16").unwrap(), DType::BF16);
    assert_eq!(ck.dtype("x.f16").unwrap(), DType::F16);
    assert_eq!(ck.dtype("x.f32").unwrap(), DType::F32);

    // Half-precision storage widens to f32 exactly; loaded for f32 it stays in its 16 bits.
    let b = ck.load("x.bf16", DType::F32).unwrap();
    assert!(matches!(b.data(), Data::Bf16(_)), "{:?}", b.data());
    assert!(matches!(ck.load("x.f16", DType::F32).unwrap().data(), Data::F16(_)));
    assert!(matches!(ck.load("x.f32", DType::F32).unwrap().data(), Data::F32(_)));
    assert!(matches!(ck.load("x.f32", DType::BF16).unwrap().data(), Data::Bf16(_)));
    assert!(matches!(ck.load("x.f16", DType::BF16).unwrap().data(), Data::Bf16(_)));
    assert!(
        matches!(ck.load("x.bf16", DType::F16), Err(WeightError::Range { count: 1, .. })),
        "65504 rounds to bf16 65536"
    );
    assert_eq!(b.shape(), [2, 3]);
    let want: Vec<f32> = exact.iter().map(|&x| DType::BF16.round(x)).collect();
    assert_eq!(b.to_f32_vec(), want);
    assert_eq!(ck.load("x.bf16", DType::BF16).unwrap().to_f32_vec(), want);
    let h = ck.load("x.f16", DType::F32).unwrap();
    let want: Vec<f32> = exact.iter().map(|&x| DType::F16.round(x)).collect();
    assert_eq!(h.to_f32_vec(), want);
    assert_eq!(want[..3], [1.0, -2.5, 0.15625]);

    // f32 is exact as f32 and rounded once when loaded narrower.
    let vals = [0.1, 1.0 / 3.0, 1e30, -7.0, 0.0, 2.0];
    let f = ck.load("x.f32", DType::F32).unwrap();
    assert_eq!((f.dtype(), &f.to_f32_vec()[..]), (DType::F32, &vals[..]));
    let fb = ck.load("x.f32", DType::BF16).unwrap();
    let want: Vec<f32> = vals.iter().map(|&x| DType::BF16.round(x)).collect();
    assert_eq!((fb.dtype(), &fb.to_f32_vec()[..]), (DType::BF16, &want[..]));
}

#[test]
fn single_file_load_all_in_spec_order() {
    let dir = single(&[f32_raw("w1", &[2, 2]), f32_raw("w0", &[3])]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    let specs = [spec("w1", &[2, 2]), spec("w0", &[3])];
    let got = ck.load_all(&specs, &[], DType::F16).unwrap();
    let names: Vec<&str> = got.tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["w1", "w0"]);
    assert_eq!(got.tensors[1].1.to_f32_vec(), [0.0, 1.0, 2.0]);
    assert_eq!(got.tensors[0].1.dtype(), DType::F16);
    assert!(got.unexpected.is_empty());
}

#[test]
fn two_shard_index() {
    let dir = sharded();
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.names(), ["a", "b", "c"]);
    assert_eq!(ck.files().len(), 2);
    let specs = [spec("c", &[2, 2]), spec("a", &[2]), spec("b", &[3])];
    let got = ck.load_all(&specs, &[], DType::F32).unwrap();
    assert_eq!(got.tensors[0].1.to_f32_vec(), [1.0, -0.5, 0.25, 8.0]);
    assert_eq!(got.tensors[2].1.to_f32_vec(), [0.0, 1.0, 2.0]);
    assert_eq!(ck.dtype("c").unwrap(), DType::BF16);
}

#[test]
fn truncated_file_is_malformed() {
    let dir = single(&[f32_raw("w", &[4])]);
    let path = dir.path().join(SINGLE_FILE);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    match open_err(dir.path()) {
        WeightError::Malformed { path: p, reason } => {
            assert_eq!(p, path);
            assert!(reason.contains("incomplete"), "{reason}");
        }
        e => panic!("{e}"),
    }
}

#[test]
fn garbage_file_is_malformed() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join(SINGLE_FILE);
    for junk in [&b"version https://git-lfs.github.com/spec/v1\n"[..], b"", b"\x02\0\0\0\0\0\0\0x}"] {
        fs::write(&path, junk).unwrap();
        assert!(matches!(open_err(dir.path()), WeightError::Malformed { path: p, .. } if p == path));
    }
}

#[test]
fn huge_header_length_is_malformed() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join(SINGLE_FILE);
    for len in [u64::MAX, 1 << 40, 1000] {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend(b"{}      ");
        fs::write(&path, bytes).unwrap();
        match open_err(dir.path()) {
            WeightError::Malformed { path: p, reason } => {
                assert_eq!(p, path);
                assert!(reason.contains("header"), "{reason}");
            }
            e => panic!("{e}"),
        }
    }
}

#[test]
fn missing_tensors_listed_together() {
    let dir = single(&[f32_raw("present", &[1])]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    let specs = [spec("gone.a", &[1]), spec("present", &[9]), spec("gone.b", &[2])];
    match ck.validate(&specs, &[]).unwrap_err() {
        WeightError::Missing { missing, searched } => {
            assert_eq!(missing, ["gone.a", "gone.b"]);
            assert_eq!(searched, [dir.path().join(SINGLE_FILE)]);
        }
        e => panic!("{e}"),
    }
    assert!(matches!(ck.load("nope", DType::F32), Err(WeightError::Missing { missing, .. }) if missing == ["nope"]));
}

#[test]
fn wrong_shape_reports_expected_and_found() {
    let dir = single(&[f32_raw("w", &[2, 3])]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    match ck.validate(&[spec("w", &[3, 2])], &[]).unwrap_err() {
        WeightError::Shape { name, path, expected, found } => {
            assert_eq!((name.as_str(), path), ("w", dir.path().join(SINGLE_FILE)));
            assert_eq!((expected, found), (vec![3, 2], vec![2, 3]));
        }
        e => panic!("{e}"),
    }
}

#[test]
fn non_float_dtypes_rejected() {
    let dir = single(&[
        ("ids", Dtype::I32, vec![2], vec![1, 0, 0, 0, 2, 0, 0, 0]),
        ("wide", Dtype::F64, vec![1], 1.0f64.to_le_bytes().to_vec()),
    ]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    for (name, stored) in [("ids", "I32"), ("wide", "F64")] {
        let dtype_err = |e: WeightError| match e {
            WeightError::DType { name: n, found, .. } => n == name && found == stored,
            _ => false,
        };
        assert!(dtype_err(ck.validate(&[spec(name, &[2])], &[]).unwrap_err()));
        assert!(dtype_err(ck.dtype(name).unwrap_err()));
        assert!(dtype_err(ck.load(name, DType::F32).unwrap_err()));
    }
}

#[test]
fn loading_as_i32_is_an_error() {
    let dir = single(&[f32_raw("w", &[1])]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert!(matches!(ck.load("w", DType::I32), Err(WeightError::Target { .. })));
}

#[test]
fn index_naming_a_missing_shard() {
    let dir = sharded();
    fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    match open_err(dir.path()) {
        WeightError::ShardMissing { index, shard } => {
            assert_eq!(index, dir.path().join(INDEX_FILE));
            assert_eq!(shard, dir.path().join("model-00002-of-00002.safetensors"));
        }
        e => panic!("{e}"),
    }
}

#[test]
fn index_tensor_absent_from_its_shard() {
    let dir = sharded();
    let s1 = "model-00001-of-00002.safetensors";
    let index = format!(r#"{{"weight_map": {{"a": "{s1}", "c": "{s1}"}}}}"#);
    fs::write(dir.path().join(INDEX_FILE), index).unwrap();
    match open_err(dir.path()) {
        WeightError::NotInShard { name, shard, .. } => {
            assert_eq!((name.as_str(), shard), ("c", dir.path().join(s1)));
        }
        e => panic!("{e}"),
    }
}

#[test]
fn bad_index_and_empty_dir() {
    let dir = TempDir::new().unwrap();
    assert!(matches!(open_err(dir.path()), WeightError::NoWeights { dir: d } if d == dir.path()));
    let index = dir.path().join(INDEX_FILE);
    for text in ["not json", r#"{"metadata": {}}"#, r#"{"weight_map": {"a": "../x.safetensors"}}"#] {
        fs::write(&index, text).unwrap();
        assert!(matches!(open_err(dir.path()), WeightError::BadIndex { path, .. } if path == index));
    }
}

#[test]
fn ignored_and_unexpected_names() {
    let dir = single(&[f32_raw("w", &[1]), f32_raw("lm_head.weight", &[1]), f32_raw("extra", &[1])]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    let specs = [spec("w", &[1])];
    assert_eq!(ck.validate(&specs, &["lm_head.weight"]).unwrap(), ["extra"]);
    assert_eq!(ck.validate(&specs, &[]).unwrap(), ["extra", "lm_head.weight"]);
    let got = ck.load_all(&specs, &["lm_head.weight", "extra"], DType::F32).unwrap();
    assert!(got.unexpected.is_empty());
    assert_eq!(got.tensors.len(), 1);
}

/// Users see these through anyhow: each message must name the file and the tensor at fault.
#[test]
fn error_messages_name_file_and_tensor() {
    let single_name = SINGLE_FILE;
    let dir = single(&[f32_raw("blk.w", &[2]), ("blk.ids", Dtype::I32, vec![1], vec![0; 4])]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    let checks: Vec<(WeightError, Option<&str>, &str)> = vec![
        (ck.validate(&[spec("blk.gone", &[1])], &[]).unwrap_err(), Some("blk.gone"), single_name),
        (ck.validate(&[spec("blk.w", &[5])], &[]).unwrap_err(), Some("blk.w"), single_name),
        (ck.dtype("blk.ids").unwrap_err(), Some("blk.ids"), single_name),
        (ck.load("blk.w", DType::I32).unwrap_err(), Some("blk.w"), single_name),
    ];
    let path = dir.path().join(SINGLE_FILE);
    fs::write(&path, b"garbage!garbage!").unwrap();
    let malformed = (open_err(dir.path()), None, single_name);

    let sh = sharded();
    let s2 = "model-00002-of-00002.safetensors";
    fs::remove_file(sh.path().join(s2)).unwrap();
    let shard_missing = (open_err(sh.path()), None, s2);
    fs::write(sh.path().join(INDEX_FILE), "{").unwrap();
    let bad_index = (open_err(sh.path()), None, INDEX_FILE);
    let sh2 = sharded();
    let s1 = "model-00001-of-00002.safetensors";
    let index = format!(r#"{{"weight_map": {{"blk.c": "{s1}"}}}}"#);
    fs::write(sh2.path().join(INDEX_FILE), index).unwrap();
    let not_in_shard = (open_err(sh2.path()), Some("blk.c"), s1);
    let empty = TempDir::new().unwrap();
    let no_weights = (open_err(empty.path()), None, SINGLE_FILE);

    let all = checks.into_iter().chain([malformed, shard_missing, bad_index, not_in_shard, no_weights]);
    for (err, tensor, file) in all {
        let text = err.to_string();
        assert!(text.contains(file), "no {file} in: {text}");
        if let Some(t) = tensor {
            assert!(text.contains(t), "no {t} in: {text}");
        }
    }
}

#[test]
fn values_beyond_f16_are_an_error_when_loading_in_f16() {
    let dir = single(&[("big", Dtype::F32, vec![3], f32s(&[1.0, 70000.0, -1e6]))]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    let err = ck.load("big", DType::F16).unwrap_err();
    assert!(matches!(err, WeightError::Range { count: 2, dtype: DType::F16, .. }), "{err}");
    assert!(err.to_string().contains("tensor big in") && err.to_string().contains("bf16 or f32"), "{err}");
    assert_eq!(ck.load("big", DType::BF16).unwrap().shape(), &[3]);
}

/// The bytes a device buffer of `dtype` holds for `t`, computed from its values.
pub(super) fn storage_of(t: &Tensor, dtype: DType) -> Vec<u8> {
    let v = t.to_f32_vec();
    match dtype {
        DType::F32 => f32s(&v),
        DType::BF16 => bf16s(&v),
        DType::F16 => f16s(&v),
        DType::I32 => unreachable!("weights are floats"),
    }
}

/// Streams `name` as `dtype`, returning the bytes and the largest piece `sink` was given.
pub(super) fn streamed(ck: &Checkpoint, name: &str, dtype: DType) -> Result<(Vec<u8>, usize), WeightError> {
    let (mut bytes, mut largest) = (Vec::new(), 0);
    ck.stream(name, dtype, |piece| {
        largest = largest.max(piece.len());
        bytes.extend_from_slice(piece);
        Ok::<(), WeightError>(())
    })?;
    Ok((bytes, largest))
}

#[test]
fn streaming_gives_the_loaded_values_in_every_dtype_a_chunk_at_a_time() {
    // 2.5 staging buffers of f32: three chunks, the last partial.
    let n = STAGING_BYTES / 4 * 5 / 2 + 3;
    let values: Vec<f32> = (0..n).map(|i| ((i * 7919) % 2003) as f32 / 64.0 - 15.0 + i as f32 * 1e-7).collect();
    let dir = single(&[
        ("w.f32", Dtype::F32, vec![n], f32s(&values)),
        ("w.bf16", Dtype::BF16, vec![n], bf16s(&values)),
        ("w.f16", Dtype::F16, vec![n], f16s(&values)),
    ]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    for name in ["w.f32", "w.bf16", "w.f16"] {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let (bytes, largest) = streamed(&ck, name, dtype).unwrap();
            let expected = storage_of(&ck.load(name, dtype).unwrap(), dtype);
            assert!(bytes == expected, "{name} as {dtype:?}: streamed bytes differ from the loaded values");
            // A chunk's stored bytes, widened at most 2x (bf16 -> f32).
            assert!(largest <= 2 * STAGING_BYTES, "{name} as {dtype:?}: a piece of {largest} bytes");
            assert!(bytes.len() > largest, "{name} as {dtype:?}: {} bytes in one piece", bytes.len());
        }
    }
}

#[test]
fn streaming_refuses_what_loading_refuses_and_stops_at_the_bad_chunk() {
    // A NaN and an inf in the second of three chunks.
    let n = STAGING_BYTES / 4 * 5 / 2;
    let mut values = vec![0.5f32; n];
    let bad = STAGING_BYTES / 4 + 10;
    values[bad] = f32::NAN;
    values[bad + 5] = f32::INFINITY;
    values[5] = 70000.0;
    let dir = single(&[("w", Dtype::F32, vec![n], f32s(&values))]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let mut received = 0;
        let err = ck
            .stream("w", dtype, |piece| {
                received += piece.len();
                Ok::<(), WeightError>(())
            })
            .unwrap_err();
        let loaded = ck.load("w", dtype).unwrap_err();
        assert_eq!(err.to_string(), loaded.to_string(), "{dtype:?}");
        // In f16, 70000 rounds to inf: counted with the NaN and inf, and first.
        let (count, first) = if dtype == DType::F16 { (3, 5) } else { (2, bad) };
        assert!(
            matches!(err, WeightError::NonFinite { count: c, first: f, .. } if (c, f) == (count, first)),
            "{dtype:?}: {err}"
        );
        let words_per_chunk = STAGING_BYTES / 4;
        let expected = if dtype == DType::F16 { 0 } else { words_per_chunk * dtype.size_bytes() };
        assert_eq!(received, expected, "{dtype:?}: bytes given before the refusal");
    }
    // Finite values beyond f16 alone: a range error, nothing given.
    let dir = single(&[("big", Dtype::F32, vec![3], f32s(&[1.0, 70000.0, -1e6]))]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    let err = streamed(&ck, "big", DType::F16).unwrap_err();
    assert!(matches!(err, WeightError::Range { count: 2, dtype: DType::F16, .. }), "{err}");
}
