//! The builder API: typed construction with inference at every step, and name scopes so that
//! every node of a layer carries a stable, meaningful name.

use std::collections::HashMap;
use std::sync::Arc;

use crate::dtype::DType;
use crate::error::IrError;
use crate::graph::{Graph, Node, NodeId};
use crate::infer::infer;
use crate::op::{BinaryOp, Bound, Op, ReduceOp, UnaryOp};
use crate::role::{Meta, Role};
use crate::shape::Shape;

#[derive(Default)]
pub struct Builder {
    graph: Graph,
    scope: Vec<String>,
    /// The layer index given to every node added, if any.
    layer: Option<u32>,
    weights: HashMap<String, NodeId>,
}

impl Builder {
    pub fn new() -> Builder {
        Builder::default()
    }

    /// Runs `f` with `name` pushed on the name scope (`l03` then `attn` gives `l03.attn.*`).
    pub fn scoped<R>(&mut self, name: &str, f: impl FnOnce(&mut Builder) -> R) -> R {
        self.scope.push(name.to_string());
        let r = f(self);
        self.scope.pop();
        r
    }

    /// Runs `f` with every node it adds marked as belonging to layer `layer`.
    pub fn in_layer<R>(&mut self, layer: u32, f: impl FnOnce(&mut Builder) -> R) -> R {
        let outer = self.layer.replace(layer);
        let r = f(self);
        self.layer = outer;
        r
    }

    /// Labels `x` with what it computes in the model's words (see [`Meta::label`]).
    pub fn label(&mut self, x: NodeId, label: &str) {
        self.graph.node_mut(x).meta.label = Some(label.to_string());
    }

    /// Says how tensor parallelism may split weight `w` (see [`Meta::split`]).
    pub fn split(&mut self, w: NodeId, split: crate::role::Split) {
        self.graph.node_mut(w).meta.split = Some(split);
    }

    fn meta(&self) -> Meta {
        Meta { layer: self.layer, label: None, split: None }
    }

    fn qualified(&self, name: &str) -> String {
        let mut s = self.scope.join(".");
        if !s.is_empty() {
            s.push('.');
        }
        s.push_str(name);
        s
    }

    /// Adds `op` on `operands` named `name` within the current scope, inferring its type.
    pub fn op(&mut self, name: &str, op: Op, operands: &[NodeId]) -> Result<NodeId, IrError> {
        let qualified = self.qualified(name);
        let tys: Vec<(DType, &Shape)> = operands
            .iter()
            .map(|&x| {
                let n = self.graph.node(x);
                (n.dtype, &n.shape)
            })
            .collect();
        let (dtype, shape) = match infer(&op, &tys) {
            Ok(Some(t)) => t,
            Ok(None) => {
                let message = format!("{} is a leaf: use input/weight/constant", op.kind());
                return Err(IrError::Node { node: qualified, message });
            }
            Err(message) => return Err(IrError::Node { node: qualified, message }),
        };
        let node = Node { op, dtype, shape, name: Some(qualified), meta: self.meta() };
        Ok(self.graph.add_node(node, operands))
    }

    fn leaf(&mut self, op: Op, dtype: DType, shape: Shape, name: String) -> NodeId {
        self.graph.add_node(Node { op, dtype, shape, name: Some(name), meta: self.meta() }, &[])
    }

    pub fn input(&mut self, name: &str, dtype: DType, shape: Shape) -> NodeId {
        let op = Op::Input { name: name.to_string() };
        self.leaf(op, dtype, shape, name.to_string())
    }

    /// An input playing `role` (an output of the same name shares it).
    pub fn input_as(&mut self, name: &str, dtype: DType, shape: Shape, role: Role) -> NodeId {
        self.graph.set_role(name, role);
        self.input(name, dtype, shape)
    }

    /// A checkpoint parameter. Asking twice for one name gives the same node (tied weights);
    /// asking with another type is an error.
    pub fn weight(&mut self, name: &str, dtype: DType, shape: Shape) -> Result<NodeId, IrError> {
        if let Some(&id) = self.weights.get(name) {
            let n = self.graph.node(id);
            if n.dtype != dtype || n.shape != shape {
                let message = format!("declared as {}{} and again as {dtype}{shape}", n.dtype, n.shape);
                return Err(IrError::Node { node: name.to_string(), message });
            }
            return Ok(id);
        }
        let id = self.leaf(Op::Weight { name: name.to_string() }, dtype, shape, name.to_string());
        self.weights.insert(name.to_string(), id);
        Ok(id)
    }

    /// A constant tensor of fixed `shape`; `values` are rounded to `dtype`.
    pub fn constant(&mut self, name: &str, dtype: DType, shape: Shape, values: Vec<f32>) -> Result<NodeId, IrError> {
        let qualified = self.qualified(name);
        if shape.fixed_volume() != Some(values.len()) || !dtype.is_float() {
            let message = format!("{} values do not fill {dtype}{shape}", values.len());
            return Err(IrError::Node { node: qualified, message });
        }
        let values = values.into_iter().map(|v| dtype.round(v)).collect();
        Ok(self.leaf(Op::Constant { values: Arc::new(values) }, dtype, shape, qualified))
    }

    pub fn scalar(&mut self, name: &str, dtype: DType, value: f32) -> Result<NodeId, IrError> {
        self.constant(name, dtype, Shape::scalar(), vec![value])
    }

    pub fn unary(&mut self, name: &str, op: UnaryOp, x: NodeId) -> Result<NodeId, IrError> {
        self.op(name, Op::Unary(op), &[x])
    }

    pub fn binary(&mut self, name: &str, op: BinaryOp, a: NodeId, b: NodeId) -> Result<NodeId, IrError> {
        self.op(name, Op::Binary(op), &[a, b])
    }

    pub fn add(&mut self, name: &str, a: NodeId, b: NodeId) -> Result<NodeId, IrError> {
        self.binary(name, BinaryOp::Add, a, b)
    }

    pub fn mul(&mut self, name: &str, a: NodeId, b: NodeId) -> Result<NodeId, IrError> {
        self.binary(name, BinaryOp::Mul, a, b)
    }

    pub fn reduce(&mut self, name: &str, op: ReduceOp, x: NodeId, axis: usize) -> Result<NodeId, IrError> {
        self.op(name, Op::Reduce { op, axis }, &[x])
    }

    pub fn matmul(&mut self, name: &str, a: NodeId, b: NodeId) -> Result<NodeId, IrError> {
        self.op(name, Op::MatMul, &[a, b])
    }

    pub fn gather(&mut self, name: &str, table: NodeId, ids: NodeId) -> Result<NodeId, IrError> {
        self.op(name, Op::Gather, &[table, ids])
    }

    pub fn reshape(&mut self, name: &str, x: NodeId, to: Shape) -> Result<NodeId, IrError> {
        self.op(name, Op::Reshape { to }, &[x])
    }

    pub fn slice(&mut self, name: &str, x: NodeId, axis: usize, start: Bound, end: Bound) -> Result<NodeId, IrError> {
        self.op(name, Op::Slice { axis, start, end }, &[x])
    }

    pub fn concat(&mut self, name: &str, xs: &[NodeId], axis: usize) -> Result<NodeId, IrError> {
        self.op(name, Op::Concat { axis }, xs)
    }

    /// Casts `x` to `to`; returns `x` itself when it already has that dtype.
    pub fn cast(&mut self, name: &str, x: NodeId, to: DType) -> Result<NodeId, IrError> {
        if self.graph.node(x).dtype == to {
            return Ok(x);
        }
        self.op(name, Op::Cast { to }, &[x])
    }

    pub fn dtype(&self, x: NodeId) -> DType {
        self.graph.node(x).dtype
    }

    pub fn shape(&self, x: NodeId) -> &Shape {
        &self.graph.node(x).shape
    }

    /// Fixes `sym` to `value` for the whole graph (see [`Graph::pins`]).
    pub fn pin(&mut self, sym: crate::shape::Sym, value: usize) {
        self.graph.pin(sym, value);
    }

    /// Marks `x` as the graph output `name`; each name once.
    pub fn output(&mut self, name: &str, x: NodeId) -> Result<(), IrError> {
        if self.graph.outputs().iter().any(|(n, _)| n == name) {
            return Err(IrError::Duplicate { what: "output", name: name.to_string() });
        }
        self.graph.set_output(name, x);
        Ok(())
    }

    /// [`Builder::output`] playing `role`.
    pub fn output_as(&mut self, name: &str, x: NodeId, role: Role) -> Result<(), IrError> {
        self.output(name, x)?;
        self.graph.set_role(name, role);
        Ok(())
    }

    /// Makes the graph one rank's part of a tensor-parallel group (its collectives' world).
    pub fn set_rank(&mut self, rank: crate::graph::Rank) {
        self.graph.set_rank(rank);
    }

    /// The finished graph, verified.
    pub fn finish(self) -> Result<Graph, IrError> {
        crate::verify::verify(&self.graph)?;
        Ok(self.graph)
    }
}

#[cfg(test)]
mod tests;
