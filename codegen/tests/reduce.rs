//! The generic reduction kernel: every op and dtype compiles with NVRTC for sm_80 and sm_90
//! without spills, over the last and a middle axis with a symbolic T; a graph's `Reduce` node
//! becomes one; the source is snapshotted. Without libnvrtc the compile test says so and passes,
//! except under `CI=true`.

mod common;

use smelt_codegen::kernels::reduce::reduce;
use smelt_codegen::kernels::Kernel;
use smelt_codegen::{emit, PRELUDE};
use smelt_ir::{shape, Bindings, Builder, DType, ReduceOp, Sym};

fn variants() -> Vec<Kernel> {
    let mut v = Vec::new();
    for (i, op) in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max].into_iter().enumerate() {
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            v.push(reduce(&format!("r{i}_{dtype}_last"), op, (dtype, &shape![Sym::NewTokens, 1024]), 1, dtype));
            v.push(reduce(&format!("r{i}_{dtype}_mid"), op, (dtype, &shape![4, Sym::NewTokens, 8]), 1, DType::F32));
        }
    }
    v
}

#[test]
fn reductions_compile_for_every_arch_without_spills() {
    let Some(tc) = common::toolchain() else { return };
    tc.check_all(&variants());
}

#[test]
fn a_reduce_node_becomes_a_reduce_kernel() {
    let mut b = Builder::new();
    let x = b.input("x", DType::BF16, shape![Sym::NewTokens, 64]);
    let m = b.reduce("row_max", ReduceOp::Max, x, 1).unwrap();
    b.output("m", m).unwrap();
    let g = b.finish().unwrap();
    let p = emit(&g).unwrap();
    assert_eq!(p.kernels.len(), 1);
    let k = &p.kernels[0];
    assert_eq!((k.kind, k.launch.block), ("reduce", 256));
    // One warp per output row: 8 rows a block.
    let t = |n| Bindings { batch: 1, new_tokens: n, cached_tokens: 0 };
    assert_eq!((k.launch.grid.blocks(&t(1)), k.launch.grid.blocks(&t(17))), (1, 3));
}

#[test]
fn mean_source() {
    let k = reduce("l00_mean", ReduceOp::Mean, (DType::BF16, &shape![Sym::NewTokens, 1024]), 1, DType::BF16);
    insta::assert_snapshot!(k.source.strip_prefix(PRELUDE).unwrap());
}
