//! Slices of stored tensors (`w[a:b]`, `w[:, a:b]`): a tensor-parallel rank's weights, read
//! without reading the rest of the tensor.

use std::mem::discriminant;

use safetensors::Dtype;
use smelt_ir::{shape, Builder, WeightSource};

use super::tests::{bf16s, f16s, f32_raw, f32s, single, spec, storage_of, streamed, Raw};
use super::*;
use crate::cpu::HostWeights;

const EXECUTION: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

/// The values of `slice` of a row-major tensor of `shape`, picked by flat index: the oracle
/// the reads are checked against.
fn slice_of(values: &[f32], shape: &[usize], slice: WeightSlice) -> Vec<f32> {
    let inner: usize = shape[slice.axis + 1..].iter().product();
    let picked = |i: &usize| (slice.start..slice.end).contains(&(i / inner % shape[slice.axis]));
    (0..values.len()).filter(picked).map(|i| values[i]).collect()
}

/// `name` stored as `dtype` with `values` (exact in every dtype used here).
fn stored(name: &'static str, dtype: Dtype, shape: &[usize], values: &[f32]) -> Raw {
    let bytes = match dtype {
        Dtype::BF16 => bf16s(values),
        Dtype::F16 => f16s(values),
        _ => f32s(values),
    };
    (name, dtype, shape.to_vec(), bytes)
}

/// Quarter steps: exact in bf16 and f16 below 64.
fn quarters(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i % 97) as f32 * 0.25 - 11.0).collect()
}

#[test]
fn rows_and_columns_of_every_stored_dtype_are_that_slice_of_the_whole_tensor() {
    let shape = [6, 5];
    let values = quarters(30);
    let dir = single(&[
        stored("w.bf16", Dtype::BF16, &shape, &values),
        stored("w.f16", Dtype::F16, &shape, &values),
        stored("w.f32", Dtype::F32, &shape, &values),
    ]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    for base in ["w.bf16", "w.f16", "w.f32"] {
        for slice in [WeightSlice::new(0, 1..4), WeightSlice::new(1, 2..5), WeightSlice::new(1, 0..1)] {
            let name = slice.name(base);
            assert_eq!(ck.dtype(&name).unwrap(), ck.dtype(base).unwrap());
            for dtype in EXECUTION {
                let whole = ck.load(base, dtype).unwrap();
                let part = ck.load(&name, dtype).unwrap();
                assert_eq!(part.shape(), slice.shape_in(&shape).unwrap(), "{name} as {dtype:?}");
                assert_eq!(part.dtype(), dtype);
                assert_eq!(discriminant(part.data()), discriminant(whole.data()), "{name}: kept as the whole is");
                assert_eq!(part.to_f32_vec(), slice_of(&whole.to_f32_vec(), &shape, slice), "{name} as {dtype:?}");
                let (bytes, _) = streamed(&ck, &name, dtype).unwrap();
                assert!(bytes == storage_of(&part, dtype), "{name} as {dtype:?}: streamed differs from loaded");
            }
        }
    }
}

#[test]
fn slices_whose_runs_cross_staging_buffers() {
    // 16 bytes of staging: a column slice's 24-byte (f32) or 12-byte (bf16) runs straddle
    // chunks, and a rows slice is many chunks.
    let (matrix, cube) = ([40, 10], [4, 6, 5]);
    let values = quarters(400);
    let dir = single(&[
        stored("m.f32", Dtype::F32, &matrix, &values),
        stored("m.bf16", Dtype::BF16, &matrix, &values),
        stored("cube", Dtype::F16, &cube, &values[..120]),
    ]);
    let whole = Checkpoint::open(dir.path()).unwrap();
    let small = Checkpoint::open(dir.path()).unwrap().with_staging_bytes(16);
    let cases = [
        ("m.f32", &matrix[..], WeightSlice::new(1, 3..9)),
        ("m.f32", &matrix, WeightSlice::new(0, 5..37)),
        ("m.bf16", &matrix, WeightSlice::new(1, 3..9)),
        ("m.bf16", &matrix, WeightSlice::new(0, 1..40)),
        ("cube", &cube, WeightSlice::new(1, 2..5)),
        ("cube", &cube, WeightSlice::new(2, 1..4)),
    ];
    for (base, shape, slice) in cases {
        let name = slice.name(base);
        for dtype in EXECUTION {
            let expected = slice_of(&whole.load(base, dtype).unwrap().to_f32_vec(), shape, slice);
            assert_eq!(small.load(&name, dtype).unwrap().to_f32_vec(), expected, "{name} as {dtype:?}");
            let (bytes, largest) = streamed(&small, &name, dtype).unwrap();
            assert!(bytes == streamed(&whole, &name, dtype).unwrap().0, "{name} as {dtype:?}");
            // A chunk's stored bytes, widened at most 2x (16-bit -> f32).
            assert!(largest <= 32 && bytes.len() > largest, "{name} as {dtype:?}: a piece of {largest} bytes");
        }
    }
}

#[test]
fn only_the_slices_bytes_are_read() {
    let values = quarters(120);
    let dir = single(&[stored("m", Dtype::BF16, &[12, 10], &values), stored("cube", Dtype::F32, &[4, 6, 5], &values)]);
    for staging in [STAGING_BYTES, 8] {
        let ck = Checkpoint::open(dir.path()).unwrap().with_staging_bytes(staging);
        let cases = [("m", 2, "m[3:7]", 4 * 10), ("m", 2, "m[:, 2:5]", 12 * 3), ("m", 2, "m", 120)];
        let cube = [("cube", 4, "cube[:, 1:3]", 4 * 2 * 5), ("cube", 4, "cube[:, :, 4:5]", 4 * 6)];
        for (base, element, name, numel) in cases.into_iter().chain(cube) {
            for dtype in EXECUTION {
                let before = file::bytes_read();
                ck.load(name, dtype).unwrap();
                assert_eq!(file::bytes_read() - before, numel * element, "load {name} ({base}) as {dtype:?}");
                let before = file::bytes_read();
                streamed(&ck, name, dtype).unwrap();
                assert_eq!(file::bytes_read() - before, numel * element, "stream {name} as {dtype:?}");
            }
        }
    }
}

#[test]
fn a_slice_refuses_its_own_values_alone_and_names_itself() {
    // A NaN at [2, 0] and a value beyond f16 at [3, 3]; 8 bytes of staging: a row of the
    // two-column slices per chunk.
    let mut values = quarters(16);
    values[2 * 4] = f32::NAN;
    values[3 * 4 + 3] = 70000.0;
    let dir = single(&[stored("w", Dtype::F32, &[4, 4], &values)]);
    let ck = Checkpoint::open(dir.path()).unwrap().with_staging_bytes(8);
    for dtype in EXECUTION {
        assert_eq!(ck.load("w[:, 1:3]", dtype).unwrap().shape(), [4, 2], "{dtype:?}: neither bad value is read");
        assert_eq!(ck.load("w[0:2]", dtype).unwrap().shape(), [2, 4]);
        let mut received = 0;
        let err = ck
            .stream("w[:, 0:2]", dtype, |piece| {
                received += piece.len();
                Ok::<(), WeightError>(())
            })
            .unwrap_err();
        assert!(
            matches!(&err, WeightError::NonFinite { name, count: 1, first: 4, .. } if name == "w[:, 0:2]"),
            "{err}"
        );
        assert_eq!(err.to_string(), ck.load("w[:, 0:2]", dtype).unwrap_err().to_string());
        assert_eq!(received, 2 * 2 * dtype.size_bytes(), "{dtype:?}: the two rows before the NaN's");
    }
    let err = ck.load("w[3:4]", DType::F16).unwrap_err();
    assert!(matches!(&err, WeightError::Range { name, count: 1, .. } if name == "w[3:4]"), "{err}");
    assert!(err.to_string().contains(&format!("tensor w[3:4] in {}", dir.path().join(SINGLE_FILE).display())));
}

#[test]
fn slices_past_the_stored_shape_missing_bases_and_wrong_shapes() {
    let dir = single(&[f32_raw("w", &[4, 3]), f32_raw("other", &[2])]);
    let file = dir.path().join(SINGLE_FILE);
    let ck = Checkpoint::open(dir.path()).unwrap();
    let cases = [
        ("w[2:6]", vec![4, 3], "lies outside it"),
        ("w[:, 1:4]", vec![4, 3], "lies outside it"),
        ("w[:, :, 0:1]", vec![4, 3, 1], "lies outside it"),
        ("w[:, 0:2]", vec![4, 3], "has shape [4, 2], expected [4, 3]"),
        ("w[1:3]", vec![3, 3], "has shape [2, 3], expected [3, 3]"),
    ];
    for (name, shape, says) in cases {
        let err = ck.validate(&[spec("w[0:1]", &[1, 3]), spec(name, &shape)], &[]).unwrap_err();
        let text = err.to_string();
        let (_, slice) = WeightSlice::parse(name);
        match err {
            WeightError::Slice(m) => {
                assert_eq!((m.name.as_str(), &m.path, &m.stored), (name, &file, &vec![4, 3]));
                assert_eq!((Some(m.slice), m.expected), (slice, Some(shape)));
            }
            e => panic!("{name}: {e}"),
        }
        let wanted = format!(
            "tensor {name} in {}: slice {} of a tensor stored with shape [4, 3] {says}",
            file.display(),
            slice.unwrap()
        );
        assert_eq!(text, wanted);
    }
    // Loading or streaming a slice that does not fit: no spec to compare with.
    for err in [ck.load("w[3:5]", DType::F32).unwrap_err(), streamed(&ck, "w[3:5]", DType::BF16).unwrap_err()] {
        assert!(matches!(&err, WeightError::Slice(m) if m.name == "w[3:5]" && m.expected.is_none()), "{err}");
        assert!(err.to_string().ends_with("slice [3:5] of a tensor stored with shape [4, 3] lies outside it"), "{err}");
    }
    // A missing base is missing under the name the spec uses, with every other missing name.
    let specs = [spec("gone[0:2]", &[2]), spec("w[0:1]", &[1, 3]), spec("gone.too", &[1]), spec("x[:, 0:1]", &[1, 1])];
    match ck.validate(&specs, &[]).unwrap_err() {
        WeightError::Missing { missing, searched } => {
            assert_eq!(missing, ["gone[0:2]", "gone.too", "x[:, 0:1]"]);
            assert_eq!(searched, [file]);
        }
        e => panic!("{e}"),
    }
    assert!(
        matches!(ck.load("gone[0:2]", DType::F32), Err(WeightError::Missing { missing, .. }) if missing == ["gone[0:2]"])
    );
}

#[test]
fn a_sliced_tensor_is_used_and_load_all_gives_the_slices() {
    let dir = single(&[f32_raw("w", &[4, 3]), f32_raw("other", &[2]), f32_raw("lm_head.weight", &[1])]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    let specs = [spec("w[0:2]", &[2, 3]), spec("w[:, 2:3]", &[4, 1]), spec("w[0:2]", &[2, 3])];
    assert_eq!(ck.validate(&specs, &[]).unwrap(), ["lm_head.weight", "other"]);
    let got = ck.load_all(&specs, &["lm_head.weight"], DType::F32).unwrap();
    assert_eq!(got.unexpected, ["other"]);
    let names: Vec<&str> = got.tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["w[0:2]", "w[:, 2:3]", "w[0:2]"]);
    assert_eq!(got.tensors[0].1.to_f32_vec(), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(got.tensors[1].1.to_f32_vec(), [2.0, 5.0, 8.0, 11.0]);
    assert_eq!(ck.bytes_read("w[:, 2:3]"), 16);
}

#[test]
fn concatenations_of_slices_are_prepared_from_the_slices_loaded() {
    let (q_values, k_values) = (quarters(12), quarters(18).iter().map(|v| -v).collect::<Vec<_>>());
    let dir = single(&[stored("q", Dtype::BF16, &[4, 3], &q_values), stored("k", Dtype::F32, &[6, 3], &k_values)]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    // A rank's primitive graph reads the slices; its fused graph, their concatenations (and
    // one slice alone as well).
    let reads = |names: &[(&str, [usize; 2])]| {
        let mut b = Builder::new();
        for (i, (name, [rows, cols])) in names.iter().enumerate() {
            let w = b.weight(name, DType::BF16, shape![*rows, *cols]).unwrap();
            b.output(&format!("y{i}"), w).unwrap();
        }
        b.finish().unwrap()
    };
    let primitive = reads(&[("q[0:2]", [2, 3]), ("k[1:4]", [3, 3]), ("q[:, 0:2]", [4, 2]), ("k[:, 1:3]", [6, 2])]);
    let fused = reads(&[("q[0:2]+k[1:4]", [5, 3]), ("q[:, 0:2]+k[:, 1:3]", [10, 2]), ("k[1:4]", [3, 3])]);
    for dtype in [DType::BF16, DType::F32] {
        let (mut weights, unused) = HostWeights::load(&ck, &[&primitive], &[], dtype).unwrap();
        assert!(unused.is_empty(), "{unused:?}");
        weights.prepare_for(&[&fused]).unwrap();
        assert_eq!(weights.len(), 3, "the parts not read alone are gone");
        let (q, k) = (ck.load("q", dtype).unwrap().to_f32_vec(), ck.load("k", dtype).unwrap().to_f32_vec());
        let part = |values: &[f32], rows: usize, slice: WeightSlice| slice_of(values, &[rows, 3], slice);
        let rows = [part(&q, 4, WeightSlice::new(0, 0..2)), part(&k, 6, WeightSlice::new(0, 1..4))].concat();
        let columns = [part(&q, 4, WeightSlice::new(1, 0..2)), part(&k, 6, WeightSlice::new(1, 1..3))].concat();
        let got = |name: &str| weights.weight(name).map(|t| (t.shape().to_vec(), t.to_f32_vec()));
        assert_eq!(got("q[0:2]+k[1:4]"), Some((vec![5, 3], rows)), "{dtype:?}");
        assert_eq!(got("q[:, 0:2]+k[:, 1:3]"), Some((vec![10, 2], columns)), "{dtype:?}");
        assert_eq!(got("k[1:4]").map(|(shape, _)| shape), Some(vec![3, 3]));
    }
}
