//! Expression trees: the bodies of fused elementwise ops and matmul epilogues. The same tree
//! is evaluated by `eval` (as the primitive ops it replaced, rounding at every node) and, later,
//! rendered to CUDA C by codegen, so both run one meaning.

use std::fmt;

use crate::dtype::DType;
use crate::infer::broadcast;
use crate::op::{BinaryOp, Op, UnaryOp};
use crate::shape::{Dim, Shape};

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// The fused op's `i`-th extra input (for `Elementwise`, its `i`-th operand).
    Input(usize),
    /// A matmul epilogue's accumulator, or its `part`-th of `parts` equal chunks along the last
    /// axis (a horizontally fused matmul whose outputs are combined, e.g. SwiGLU).
    Acc {
        part: usize,
        parts: usize,
    },
    /// A scalar.
    Const(f32),
    Unary(UnaryOp, Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// Conversion to this node's dtype.
    Cast(Box<Expr>),
}

/// A node of an expression tree and the dtype its value is stored in.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub dtype: DType,
}

impl Expr {
    pub fn new(kind: ExprKind, dtype: DType) -> Expr {
        Expr { kind, dtype }
    }

    /// Infers this tree's shape given the types of its inputs and of the accumulator, and
    /// checks that every node's dtype follows the primitive op's rule.
    pub fn infer(&self, inputs: &[(DType, &Shape)], acc: Option<(DType, &Shape)>) -> Result<Shape, String> {
        let (dtype, shape) = match &self.kind {
            ExprKind::Input(i) => {
                let (d, s) = inputs.get(*i).ok_or_else(|| format!("expression reads input {i} of {}", inputs.len()))?;
                (*d, (*s).clone())
            }
            ExprKind::Acc { part, parts } => {
                let (d, s) = acc.ok_or("expression reads an accumulator outside a matmul epilogue")?;
                let mut dims = s.0.clone();
                let last = dims.last_mut().ok_or("accumulator of rank 0")?;
                match *last {
                    Dim::Fixed(n) if *parts > 0 && part < parts && n % parts == 0 => *last = Dim::Fixed(n / parts),
                    _ => return Err(format!("accumulator {s} cannot be cut into part {part} of {parts}")),
                }
                (d, Shape(dims))
            }
            ExprKind::Const(_) => (self.dtype, Shape::scalar()),
            ExprKind::Unary(_, x) => (x.dtype, x.infer(inputs, acc)?),
            ExprKind::Binary(_, a, b) => {
                if a.dtype != b.dtype {
                    return Err(format!("expression mixes dtypes {} and {}", a.dtype, b.dtype));
                }
                (a.dtype, broadcast(&a.infer(inputs, acc)?, &b.infer(inputs, acc)?)?)
            }
            ExprKind::Cast(x) => (self.dtype, x.infer(inputs, acc)?),
        };
        if dtype != self.dtype {
            return Err(format!("expression node {self} records {} but computes {dtype}", self.dtype));
        }
        Ok(shape)
    }

    /// Number of op nodes (not leaves) in the tree.
    pub fn op_count(&self) -> usize {
        match &self.kind {
            ExprKind::Input(_) | ExprKind::Acc { .. } | ExprKind::Const(_) => 0,
            ExprKind::Unary(_, x) | ExprKind::Cast(x) => 1 + x.op_count(),
            ExprKind::Binary(_, a, b) => 1 + a.op_count() + b.op_count(),
        }
    }

    /// Renumbers `Input(i)` leaves through `map`.
    pub fn map_inputs(&self, map: &dyn Fn(usize) -> ExprKind) -> Expr {
        let kind = match &self.kind {
            ExprKind::Input(i) => map(*i),
            ExprKind::Unary(u, x) => ExprKind::Unary(*u, Box::new(x.map_inputs(map))),
            ExprKind::Binary(b, x, y) => ExprKind::Binary(*b, Box::new(x.map_inputs(map)), Box::new(y.map_inputs(map))),
            ExprKind::Cast(x) => ExprKind::Cast(Box::new(x.map_inputs(map))),
            k => k.clone(),
        };
        Expr { kind, dtype: self.dtype }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Input(i) => write!(f, "in{i}"),
            ExprKind::Acc { parts: 1, .. } => f.write_str("acc"),
            ExprKind::Acc { part, parts } => write!(f, "acc[{part}/{parts}]"),
            ExprKind::Const(c) => write!(f, "{c:?}"),
            ExprKind::Unary(u, x) => write!(f, "{}({x})", Op::Unary(*u).kind()),
            ExprKind::Binary(b, x, y) => write!(f, "{}({x}, {y})", Op::Binary(*b).kind()),
            ExprKind::Cast(x) => write!(f, "cast<{}>({x})", self.dtype),
        }
    }
}
