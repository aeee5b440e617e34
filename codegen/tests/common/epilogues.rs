//! The matmul epilogues Qwen3's fused graph carries, as expressions, for the GEMV and GEMM
//! emitter tests.

use smelt_ir::{BinaryOp, DType, Expr, ExprKind, UnaryOp};

pub fn node(kind: ExprKind, dtype: DType) -> Box<Expr> {
    Box::new(Expr::new(kind, dtype))
}

pub fn acc(part: usize, parts: usize, dtype: DType) -> Box<Expr> {
    node(ExprKind::Acc { part, parts }, dtype)
}

/// `add(in0, acc)`: the residual epilogue of the attention output and MLP down projections.
pub fn residual(dtype: DType) -> Expr {
    Expr::new(ExprKind::Binary(BinaryOp::Add, node(ExprKind::Input(0), dtype), acc(0, 1, dtype)), dtype)
}

/// `mul(silu(acc[0/2]), acc[1/2])`: SwiGLU over the fused gate_up projection.
pub fn swiglu(dtype: DType) -> Expr {
    let silu = node(ExprKind::Unary(UnaryOp::Silu, acc(0, 2, dtype)), dtype);
    Expr::new(ExprKind::Binary(BinaryOp::Mul, silu, acc(1, 2, dtype)), dtype)
}

/// `cast<f32>(acc)`: the logits.
pub fn to_f32(dtype: DType) -> Expr {
    Expr::new(ExprKind::Cast(acc(0, 1, dtype)), DType::F32)
}
