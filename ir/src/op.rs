//! The op set: the primitive operations Qwen3 is declared in.
//!
//! Ops are deliberately small (RMSNorm is square → mean → add → rsqrt → mul → mul) so that
//! fusion is the passes' work. Attention is one op: its fused form is a kernel family of its own.

use std::fmt;
use std::sync::Arc;

use crate::dtype::DType;
pub use crate::fused::FusedOp;
use crate::shape::Shape;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnaryOp {
    Neg,
    Exp,
    Square,
    Sqrt,
    Rsqrt,
    Recip,
    Sigmoid,
    /// `x * sigmoid(x)`, one op as in HF's `ACT2FN["silu"]`.
    Silu,
    Cos,
    Sin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
}

/// A slice bound counted from the start or, like Python's negative indices, from the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bound {
    FromStart(usize),
    FromEnd(usize),
}

impl Bound {
    /// The index this bound denotes in an axis of `len`, if it is within `0..=len`.
    pub fn resolve(self, len: usize) -> Option<usize> {
        match self {
            Bound::FromStart(i) => (i <= len).then_some(i),
            Bound::FromEnd(i) => len.checked_sub(i),
        }
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::FromStart(i) => write!(f, "{i}"),
            Bound::FromEnd(0) => f.write_str("end"),
            Bound::FromEnd(i) => write!(f, "end-{i}"),
        }
    }
}

/// A weight whose name joins checkpoint tensor names with this character (`a+b+c`) is their
/// concatenation along axis 0: horizontal fusion makes such weights, runtimes build them.
pub const WEIGHT_CONCAT: char = '+';

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A value supplied per run (token ids, positions, KV caches).
    Input {
        name: String,
    },
    /// A parameter loaded from the checkpoint.
    Weight {
        name: String,
    },
    /// A constant baked into the graph (a scalar like RMSNorm's eps, RoPE's inverse frequencies).
    Constant {
        values: Arc<Vec<f32>>,
    },
    Unary(UnaryOp),
    /// Elementwise with NumPy broadcasting.
    Binary(BinaryOp),
    /// Reduction over one axis, which is kept with size 1 (`keepdim=True`).
    Reduce {
        op: ReduceOp,
        axis: usize,
    },
    /// `a[.., M, K] @ b[N, K]^T -> [.., M, N]`: `b` in `nn.Linear`'s weight layout.
    MatMul,
    /// Rows of `table[V, D]` picked by `ids[..]` (i32) -> `[.., D]`.
    Gather,
    /// Same elements, new shape.
    Reshape {
        to: Shape,
    },
    /// `x[start:end]` along `axis`.
    Slice {
        axis: usize,
        start: Bound,
        end: Bound,
    },
    Concat {
        axis: usize,
    },
    Cast {
        to: DType,
    },
    /// Appends this step's keys or values `[T, KVH, D]` to a cache `[P, KVH, D]`, giving
    /// `[P+T, KVH, D]`. The runtime does this in place; the graph states it as a value.
    KvAppend,
    /// Causal grouped-query attention. `q[T, H, D]`, `k[S, KVH, D]`, `v[S, KVH, D]` ->
    /// `[T, H, D]`. Query `t` sits at position `S-T+t` and sees keys `0..=S-T+t`; query head
    /// `h` reads KV head `h / (H/KVH)`. Scores are `(q·k) * scale`, softmax in f32.
    Attention {
        scale: f32,
    },
    /// Index of the largest element along `axis` (first on ties), or -1 when any element along
    /// it is NaN or infinite (a greedy step over broken logits must fail, not pick a token);
    /// the axis is removed; i32.
    ArgMax {
        axis: usize,
    },

    /// The sum over the `world` ranks of a tensor-parallel group, which every rank gets:
    /// computed in f32 in rank order and rounded once to the dtype, so every rank holds the
    /// same bits.
    AllReduce {
        world: u32,
    },
    /// The `world` ranks' tensors concatenated along `axis` in rank order; every rank gets it.
    AllGather {
        axis: usize,
        world: u32,
    },
    /// One rank's part of a gather from a table of `total` rows split by rows: row
    /// `ids[i] - start` of this rank's `table[rows, D]`, or zeros where that row is another
    /// rank's. Summed over the ranks ([`Op::AllReduce`]) the parts are the gather from the whole
    /// table. An id outside `0..total` is an error, as in [`Op::Gather`].
    PartialGather {
        start: usize,
        total: usize,
    },

    /// A fused op, made by a pass from a chain of the ops above (see [`FusedOp`]).
    Fused(FusedOp),
}

impl Op {
    /// The op's kind as printed and counted ("matmul", "add", ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Weight { .. } => "weight",
            Op::Constant { .. } => "constant",
            Op::Unary(u) => match u {
                UnaryOp::Neg => "neg",
                UnaryOp::Exp => "exp",
                UnaryOp::Square => "square",
                UnaryOp::Sqrt => "sqrt",
                UnaryOp::Rsqrt => "rsqrt",
                UnaryOp::Recip => "recip",
                UnaryOp::Sigmoid => "sigmoid",
                UnaryOp::Silu => "silu",
                UnaryOp::Cos => "cos",
                UnaryOp::Sin => "sin",
            },
            Op::Binary(b) => match b {
                BinaryOp::Add => "add",
                BinaryOp::Sub => "sub",
                BinaryOp::Mul => "mul",
                BinaryOp::Div => "div",
                BinaryOp::Max => "max",
            },
            Op::Reduce { op, .. } => match op {
                ReduceOp::Sum => "reduce_sum",
                ReduceOp::Mean => "reduce_mean",
                ReduceOp::Max => "reduce_max",
            },
            Op::MatMul => "matmul",
            Op::Gather => "gather",
            Op::Reshape { .. } => "reshape",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::Cast { .. } => "cast",
            Op::KvAppend => "kv_append",
            Op::Attention { .. } => "attention",
            Op::ArgMax { .. } => "argmax",
            Op::AllReduce { .. } => "all_reduce",
            Op::AllGather { .. } => "all_gather",
            Op::PartialGather { .. } => "partial_gather",
            Op::Fused(f) => f.kind(),
        }
    }

    /// Leaves take no operands and carry their type on the node.
    pub fn is_leaf(&self) -> bool {
        matches!(self, Op::Input { .. } | Op::Weight { .. } | Op::Constant { .. })
    }

    /// Ops that only re-address their operand (no arithmetic, no copy needed by a kernel that
    /// reads through them): they cost nothing at run time.
    pub fn is_view(&self) -> bool {
        matches!(self, Op::Reshape { .. } | Op::Slice { .. })
    }

    /// For ops that append this step's rows to a KV cache (and yield the grown cache): the
    /// operand that holds the cache. Runtimes append in place; planners size the cache.
    pub fn kv_cache_operand(&self) -> Option<usize> {
        match self {
            Op::KvAppend => Some(0),
            Op::Fused(f) => f.kv_cache_operand(),
            _ => None,
        }
    }

    /// Ops that exchange values between the ranks of a tensor-parallel group.
    pub fn is_collective(&self) -> bool {
        matches!(self, Op::AllReduce { .. } | Op::AllGather { .. })
    }

    /// Fused ops (made by passes).
    pub fn is_fused(&self) -> bool {
        matches!(self, Op::Fused(_))
    }

    /// The number of operands, or `None` for variadic ops (concat).
    pub fn arity(&self) -> Option<usize> {
        match self {
            Op::Input { .. } | Op::Weight { .. } | Op::Constant { .. } => Some(0),
            Op::Unary(_) | Op::Reduce { .. } | Op::Reshape { .. } | Op::Slice { .. } => Some(1),
            Op::Cast { .. } | Op::ArgMax { .. } | Op::AllReduce { .. } | Op::AllGather { .. } => Some(1),
            Op::Binary(_) | Op::MatMul | Op::Gather | Op::PartialGather { .. } | Op::KvAppend => Some(2),
            Op::Attention { .. } => Some(3),
            Op::Fused(f) => f.arity(),
            Op::Concat { .. } => None,
        }
    }

    /// Attributes as printed after the kind, e.g. `axis=1`; empty when there are none.
    pub fn attrs(&self) -> String {
        match self {
            Op::Input { name } | Op::Weight { name } => format!("{name:?}"),
            Op::Constant { values } if values.len() == 1 => format!("{:?}", values[0]),
            Op::Constant { values } => {
                let head: Vec<String> = values.iter().take(3).map(|v| format!("{v:?}")).collect();
                format!("[{}, … {} values]", head.join(", "), values.len())
            }
            Op::Reduce { axis, .. } | Op::Concat { axis } | Op::ArgMax { axis } => {
                format!("axis={axis}")
            }
            Op::Reshape { to } => format!("to={to}"),
            Op::Slice { axis, start, end } => format!("axis={axis}, {start}:{end}"),
            Op::Cast { to } => format!("to={to}"),
            Op::Attention { scale } => format!("scale={scale:?}, causal"),
            Op::AllReduce { world } => format!("sum, world={world}"),
            Op::AllGather { axis, world } => format!("axis={axis}, world={world}"),
            Op::PartialGather { start, total } => format!("start={start}, of={total}"),
            Op::Fused(f) => f.attrs(),
            _ => String::new(),
        }
    }
}
