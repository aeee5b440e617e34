//! Generated kernels compile with NVRTC, with no include paths, for sm_80 and sm_90, and
//! ptxas finds no local-memory spills. Without libnvrtc these tests say so and pass, except
//! under `CI=true`, where a missing NVRTC is a failure (.ci/run installs it).

mod common;

use smelt_codegen::kernels::elementwise::elementwise;
use smelt_codegen::kernels::exchange::{all_gather, all_reduce};
use smelt_codegen::{Arch, NvrtcError};
use smelt_ir::{shape, BinaryOp, DType, Expr, ExprKind, Shape, Sym, UnaryOp};

fn leaf(kind: ExprKind, dtype: DType) -> Box<Expr> {
    Box::new(Expr::new(kind, dtype))
}

/// SwiGLU over two inputs, `silu(in0) * in1`, in `dtype`.
fn swiglu(dtype: DType) -> Expr {
    let silu = Expr::new(ExprKind::Unary(UnaryOp::Silu, leaf(ExprKind::Input(0), dtype)), dtype);
    Expr::new(ExprKind::Binary(BinaryOp::Mul, Box::new(silu), leaf(ExprKind::Input(1), dtype)), dtype)
}

/// A residual add broadcasting a per-row scale: `in0 + in1 * in2[T, 1]`.
fn scaled_residual(dtype: DType) -> Expr {
    let prod = Expr::new(
        ExprKind::Binary(BinaryOp::Mul, leaf(ExprKind::Input(1), dtype), leaf(ExprKind::Input(2), dtype)),
        dtype,
    );
    Expr::new(ExprKind::Binary(BinaryOp::Add, leaf(ExprKind::Input(0), dtype), Box::new(prod)), dtype)
}

#[test]
fn elementwise_kernels_compile_for_every_arch_without_spills() {
    let Some(tc) = common::toolchain() else { return };
    let t = Sym::NewTokens;
    let mut kernels = Vec::new();
    for dtype in [DType::BF16, DType::F16, DType::F32] {
        let full: Shape = shape![t, 3072];
        kernels.push(elementwise(
            &format!("l00_mlp_gate_up_{dtype}"),
            &swiglu(dtype),
            &[(dtype, full.clone()), (dtype, full.clone())],
            (dtype, &full),
        ));
        let (x, scale): (Shape, Shape) = (shape![t, 1024], shape![t, 1]);
        kernels.push(elementwise(
            &format!("l00_scaled_residual_{dtype}"),
            &scaled_residual(dtype),
            &[(dtype, x.clone()), (dtype, x.clone()), (dtype, scale)],
            (dtype, &x),
        ));
    }
    tc.check_all(&kernels);
}

/// The exchanges' kernels (a tensor-parallel group's ranks on one device): the all-reduce of
/// a hidden state and the all-gather of logits split by vocabulary, over 2, 4 and 8 ranks.
#[test]
fn exchange_kernels_compile_for_every_arch_without_spills() {
    let Some(tc) = common::toolchain() else { return };
    let t = Sym::NewTokens;
    let mut kernels = Vec::new();
    for world in [2, 4, 8] {
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            kernels.push(all_reduce(world, dtype, &shape![t, 1024]));
        }
        kernels.push(all_gather(world, DType::F32, &shape![t, 151936 / world as usize], 1));
    }
    tc.check_all(&kernels);
}

#[test]
fn compile_errors_name_the_kernel_and_show_the_log() {
    let Some(common::Toolchain { nvrtc, .. }) = common::toolchain() else { return };
    let src = "extern \"C\" __global__ void l03_broken(float* y) { y[0] = not_a_function(1.0f); }";
    match nvrtc.compile("l03_broken", src, Arch::Sm90) {
        Err(e @ NvrtcError::Compile { .. }) => {
            let text = e.to_string();
            assert!(text.contains("l03_broken") && text.contains("sm_90"), "{text}");
            assert!(text.contains("not_a_function"), "the NVRTC log is shown: {text}");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}

#[test]
fn module_cache_hits_on_the_second_compile() {
    let Some(common::Toolchain { nvrtc, .. }) = common::toolchain() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = smelt_codegen::ModuleCache::at(dir.path().join("modules"));
    let k = elementwise(
        "cached_swiglu",
        &swiglu(DType::BF16),
        &[(DType::BF16, shape![Sym::NewTokens, 8]), (DType::BF16, shape![Sym::NewTokens, 8])],
        (DType::BF16, &shape![Sym::NewTokens, 8]),
    );
    let (first, hit) = cache.compile(&nvrtc, &k.name, &k.source, Arch::Sm90).expect("compiles");
    assert!(!hit, "an empty cache misses");
    let (second, hit) = cache.compile(&nvrtc, &k.name, &k.source, Arch::Sm90).expect("reads back");
    assert!(hit, "the same source, arch and NVRTC hit");
    assert_eq!(first, second);
    let (_, hit) = cache.compile(&nvrtc, &k.name, &k.source, Arch::Sm80).expect("compiles");
    assert!(!hit, "another arch is another module");
    // A damaged entry is recompiled, not loaded.
    for entry in std::fs::read_dir(cache.dir()).expect("cache dir") {
        std::fs::write(entry.expect("entry").path(), "garbage").expect("damage");
    }
    let (third, hit) = cache.compile(&nvrtc, &k.name, &k.source, Arch::Sm90).expect("recompiles");
    assert!(!hit);
    assert_eq!(third, first);
}
