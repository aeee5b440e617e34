//! The upload's host half: the bytes each source gives, placed where the layout says, into a
//! host image of the device buffer.

use std::fs;

use half::bf16;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use smelt_ir::{shape, Builder};
use tempfile::TempDir;

use super::*;
use crate::weights::{WeightSpec, SINGLE_FILE};

/// A checkpoint of `a` [2, 3] (bf16), `b` [1, 3] (f32) and `c` [2, 3] (bf16).
fn checkpoint() -> TempDir {
    let bf16s = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes()).collect() };
    let a = bf16s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let b: Vec<u8> = [0.1f32, -70000.0, 7.25].iter().flat_map(|x| x.to_le_bytes()).collect();
    let c = bf16s(&[-1.0, -2.0, -3.0, -4.0, -5.0, 0.375]);
    let views =
        [("a", Dtype::BF16, vec![2, 3], a), ("b", Dtype::F32, vec![1, 3], b), ("c", Dtype::BF16, vec![2, 3], c)];
    let views: Vec<_> = views.iter().map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join(SINGLE_FILE), safetensors::serialize(views, None).unwrap()).unwrap();
    dir
}

/// Graphs as a model's fused ones: one reads `a+b` and `c`, the other `c` again and `c+a`.
fn graphs(dtype: DType) -> [Graph; 2] {
    let mut b1 = Builder::new();
    let ab = b1.weight("a+b", dtype, shape![3, 3]).unwrap();
    let c = b1.weight("c", dtype, shape![2, 3]).unwrap();
    b1.output("ab", ab).unwrap();
    b1.output("c", c).unwrap();
    let mut b2 = Builder::new();
    let c = b2.weight("c", dtype, shape![2, 3]).unwrap();
    let ca = b2.weight("c+a", dtype, shape![4, 3]).unwrap();
    b2.output("c", c).unwrap();
    b2.output("ca", ca).unwrap();
    [b1.finish().unwrap(), b2.finish().unwrap()]
}

/// The device buffer's bytes as `source` fills it (padding left at 0xAA).
fn image(graphs: &[&Graph], source: &dyn WeightBytes) -> Result<Vec<u8>, CudaError> {
    let regions = Regions::plan(graphs)?;
    let mut image = vec![0xAA; regions.total];
    regions.fill(source, |offset, piece| {
        image[offset..offset + piece.len()].copy_from_slice(piece);
        Ok(())
    })?;
    Ok(image)
}

#[test]
fn the_checkpoint_streamed_fills_the_device_as_prepared_host_weights_do() {
    let dir = checkpoint();
    let ck = Checkpoint::open(dir.path()).unwrap();
    for dtype in [DType::BF16, DType::F32] {
        let [g1, g2] = graphs(dtype);
        let all = [&g1, &g2];
        let specs = [WeightSpec::new("a", [2, 3]), WeightSpec::new("b", [1, 3]), WeightSpec::new("c", [2, 3])];
        let loaded = ck.load_all(&specs, &[], dtype).unwrap();
        let mut host = HostWeights::from_map(loaded.tensors.into_iter().collect());
        host.prepare_for(&all).unwrap();
        let from_host = image(&all, &host).unwrap();
        let streamed = image(&all, &ck).unwrap();
        assert!(streamed == from_host, "{dtype:?}: the images differ");
        // Three regions (c once), each ARENA_ALIGN-aligned: a+b, c, c+a.
        let rows = |r: usize| r * 3 * dtype.size_bytes();
        let at = |i: usize| i * align(rows(4));
        assert_eq!(
            Regions::plan(&all).unwrap().regions.iter().map(|r| (r.2, r.3)).collect::<Vec<_>>(),
            [(at(0), rows(3)), (at(1), rows(2)), (at(2), rows(4))]
        );
        // c+a is c's rows then a's, in the device dtype.
        let word = |i: usize| {
            let w = &streamed[at(2) + i * dtype.size_bytes()..][..dtype.size_bytes()];
            match dtype {
                DType::BF16 => bf16::from_le_bytes([w[0], w[1]]).to_f32(),
                _ => f32::from_le_bytes([w[0], w[1], w[2], w[3]]),
            }
        };
        assert_eq!(
            (0..12).map(word).collect::<Vec<_>>(),
            [-1.0, -2.0, -3.0, -4.0, -5.0, 0.375, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
    }
}

#[test]
fn a_source_that_does_not_fill_its_region_is_named() {
    let dir = checkpoint();
    let ck = Checkpoint::open(dir.path()).unwrap();
    // A graph whose `a+c` region is declared a row short, and one whose `b` is a row long.
    for (name, rows, says) in [("a+c", 3, "more than its 18 bytes"), ("b", 2, "6 of its 12 bytes")] {
        let mut b = Builder::new();
        let w = b.weight(name, DType::BF16, shape![rows, 3]).unwrap();
        b.output("y", w).unwrap();
        let g = b.finish().unwrap();
        let err = image(&[&g], &ck).unwrap_err().to_string();
        assert!(err.contains(&format!("weight {name}: {says}")), "{err}");
    }
    // A value out of f16's range is refused as loading refuses it, naming the tensor.
    let mut b = Builder::new();
    let w = b.weight("b", DType::F16, shape![1, 3]).unwrap();
    b.output("y", w).unwrap();
    let err = image(&[&b.finish().unwrap()], &ck).unwrap_err().to_string();
    assert!(err.contains("tensor b in") && err.contains("f16"), "{err}");
}

/// A tensor-parallel rank's fused graph: concatenations of row and column slices, one slice
/// read alone.
fn sliced_graph(dtype: DType) -> Graph {
    let mut b = Builder::new();
    for (i, (name, rows, cols)) in
        [("c[1:2]+a+b[0:1]", 4, 3), ("a[:, 1:3]+c[:, 0:2]", 4, 2), ("b[:, 2:3]", 1, 1)].into_iter().enumerate()
    {
        let w = b.weight(name, dtype, shape![rows, cols]).unwrap();
        b.output(&format!("y{i}"), w).unwrap();
    }
    b.finish().unwrap()
}

#[test]
fn concatenations_of_slices_stream_to_the_device_as_prepared_host_weights_do() {
    let dir = checkpoint();
    let ck = Checkpoint::open(dir.path()).unwrap();
    for dtype in [DType::BF16, DType::F32] {
        let g = sliced_graph(dtype);
        let specs = [
            WeightSpec::new("c[1:2]", [1, 3]),
            WeightSpec::new("a", [2, 3]),
            WeightSpec::new("b[0:1]", [1, 3]),
            WeightSpec::new("a[:, 1:3]", [2, 2]),
            WeightSpec::new("c[:, 0:2]", [2, 2]),
            WeightSpec::new("b[:, 2:3]", [1, 1]),
        ];
        let loaded = ck.load_all(&specs, &[], dtype).unwrap();
        let mut host = HostWeights::from_map(loaded.tensors.into_iter().collect());
        host.prepare_for(&[&g]).unwrap();
        let from_host = image(&[&g], &host).unwrap();
        let streamed = image(&[&g], &ck).unwrap();
        assert!(streamed == from_host, "{dtype:?}: the images differ");
        // The column concatenation, second region: a's last two columns, then c's first two.
        let at = align(4 * 3 * dtype.size_bytes());
        let word = |i: usize| {
            let w = &streamed[at + i * dtype.size_bytes()..][..dtype.size_bytes()];
            match dtype {
                DType::BF16 => bf16::from_le_bytes([w[0], w[1]]).to_f32(),
                _ => f32::from_le_bytes([w[0], w[1], w[2], w[3]]),
            }
        };
        assert_eq!((0..8).map(word).collect::<Vec<_>>(), [2.0, 3.0, 5.0, 6.0, -1.0, -2.0, -4.0, -5.0]);
    }
}
