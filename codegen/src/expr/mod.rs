//! The expression renderer: a fused body (`ir::Expr`) as one C expression over f32 values.
//! Every node is rounded to its dtype exactly where `ir::eval` rounds it, so a kernel computes
//! what the reference computes.

use smelt_ir::{BinaryOp, DType, Expr, ExprKind, UnaryOp};

/// How leaves read their values: `Input(i)` and the matmul accumulator (or a part of it).
pub trait Leaves {
    fn input(&self, index: usize) -> String;
    fn acc(&self, part: usize, parts: usize) -> String;
}

/// Leaves named `in0, in1, …` and `acc` / `acc_0of2, …`: local variables a kernel has loaded.
pub struct LocalNames;

impl Leaves for LocalNames {
    fn input(&self, index: usize) -> String {
        format!("in{index}")
    }

    fn acc(&self, part: usize, parts: usize) -> String {
        if parts == 1 {
            "acc".to_string()
        } else {
            format!("acc_{part}of{parts}")
        }
    }
}

/// `x` stored in `dtype`: the rounding call, or `x` itself for f32.
fn stored(dtype: DType, x: String) -> String {
    match dtype {
        DType::F32 => x,
        DType::BF16 => format!("smelt_round_bf16({x})"),
        DType::F16 => format!("smelt_round_f16({x})"),
        // A cast to i32 truncates toward zero, as `ir::eval` (and PyTorch) do.
        DType::I32 => format!("(float)(int)({x})"),
    }
}

/// An exact f32 constant: its bit pattern, so no decimal round trip can change it.
pub fn f32_literal(v: f32) -> String {
    format!("smelt_u2f(0x{:08x}u)", v.to_bits())
}

fn unary(op: UnaryOp, x: &str) -> String {
    match op {
        UnaryOp::Neg => format!("(-{x})"),
        UnaryOp::Exp => format!("expf({x})"),
        UnaryOp::Square => format!("smelt_mul({x}, {x})"),
        UnaryOp::Sqrt => format!("sqrtf({x})"),
        UnaryOp::Rsqrt => format!("(1.0f / sqrtf({x}))"),
        UnaryOp::Recip => format!("(1.0f / {x})"),
        UnaryOp::Sigmoid => format!("(1.0f / (1.0f + expf(-{x})))"),
        UnaryOp::Silu => format!("({x} / (1.0f + expf(-{x})))"),
        UnaryOp::Cos => format!("cosf({x})"),
        UnaryOp::Sin => format!("sinf({x})"),
    }
}

fn binary(op: BinaryOp, a: &str, b: &str) -> String {
    match op {
        BinaryOp::Add => format!("({a} + {b})"),
        BinaryOp::Sub => format!("({a} - {b})"),
        BinaryOp::Mul => format!("smelt_mul({a}, {b})"),
        BinaryOp::Div => format!("({a} / {b})"),
        BinaryOp::Max => format!("fmaxf({a}, {b})"),
    }
}

/// Renders `e` as a C expression of type `float`. Operands that appear twice (`square`,
/// `silu`) are rendered twice: bodies are small trees and the C compiler shares the work.
pub fn render(e: &Expr, leaves: &dyn Leaves) -> String {
    match &e.kind {
        ExprKind::Input(i) => leaves.input(*i),
        ExprKind::Acc { part, parts } => leaves.acc(*part, *parts),
        ExprKind::Const(c) => f32_literal(e.dtype.round(*c)),
        ExprKind::Unary(u, x) => stored(e.dtype, unary(*u, &render(x, leaves))),
        ExprKind::Binary(b, x, y) => stored(e.dtype, binary(*b, &render(x, leaves), &render(y, leaves))),
        ExprKind::Cast(x) => stored(e.dtype, render(x, leaves)),
    }
}

#[cfg(test)]
mod tests;
