//! smelt's tensor IR: dtypes, symbolic shapes, the op set, the graph and its builder, the
//! verifier, the text and DOT printers, and `eval`, the reference meaning of every op.

// Unsafe code only where a module is allowed it, with the reason there.
#![deny(unsafe_code)]
// What a user supplies is never unwrapped: errors carry context instead.
#![deny(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod builder;
pub mod cost;
pub mod dtype;
pub mod error;
pub mod eval;
pub mod expr;
pub mod fused;
pub mod graph;
pub mod infer;
pub mod op;
pub mod print;
pub mod role;
pub mod shape;
pub mod tensor;
pub mod verify;
pub mod weight_slice;

pub use builder::Builder;
pub use dtype::DType;
pub use error::IrError;
pub use eval::{
    eval, eval_observed, eval_rank, eval_with, Collective, EvalError, EvalOptions, ThreadGroup, WeightSource,
};
pub use expr::{Expr, ExprKind};
pub use graph::{Graph, Node, NodeId, Rank};
pub use op::{BinaryOp, Bound, FusedOp, Op, ReduceOp, UnaryOp, WEIGHT_CONCAT};
pub use role::{KvPart, Meta, Role, Split};
pub use shape::{Bindings, Dim, Shape, Sym};
pub use tensor::{Data, Tensor};
pub use weight_slice::WeightSlice;
