//! The verifier: re-infers every node's type from its operands and checks it against the
//! type the node records, so a pass that rewires a graph wrongly is caught by name.

use std::collections::HashSet;

use crate::error::IrError;
use crate::graph::{Graph, NodeId};
use crate::infer::infer;
use crate::op::Op;
use crate::print::node_label;
use crate::shape::{Dim, Sym};

pub fn verify(graph: &Graph) -> Result<(), IrError> {
    let order = graph.topo_order().ok_or(IrError::Cycle)?;
    let mut input_names = HashSet::new();
    for &id in &order {
        let node = graph.node(id);
        let err = |message: String| IrError::Node { node: node_label(graph, id), message };
        let operands = graph.operands(id);
        if let Some(n) = node.op.arity() {
            if operands.len() != n {
                return Err(err(format!("{} takes {n} operands, has {}", node.op.kind(), operands.len())));
            }
        }
        if let Op::Input { name } = &node.op {
            if !input_names.insert(name.clone()) {
                return Err(IrError::Duplicate { what: "input", name: name.clone() });
            }
        }
        if matches!(node.op, Op::KvAppend) {
            if let Some(&Dim::Fixed(n)) = operands.get(1).and_then(|&x| graph.node(x).shape.dims().first()) {
                if graph.pinned(Sym::NewTokens) != Some(n) {
                    return Err(err(format!("appends {n} fixed rows but the graph does not pin T={n}")));
                }
            }
        }
        if let Op::Constant { values } = &node.op {
            if node.shape.fixed_volume() != Some(values.len()) {
                return Err(err(format!("{} values for shape {}", values.len(), node.shape)));
            }
        }
        let tys: Vec<_> = operands.iter().map(|&x| (graph.node(x).dtype, &graph.node(x).shape)).collect();
        if let Some((dtype, shape)) = infer(&node.op, &tys).map_err(err)? {
            if dtype != node.dtype || shape != node.shape {
                return Err(err(format!("records {}{} but its operands give {dtype}{shape}", node.dtype, node.shape)));
            }
        }
    }
    for (name, id) in graph.outputs() {
        if !graph.contains(*id) {
            return Err(IrError::DanglingOutput { name: name.clone() });
        }
    }
    Ok(())
}

/// Nodes reachable backwards from the outputs.
pub fn live_nodes(graph: &Graph) -> HashSet<NodeId> {
    let mut live = HashSet::new();
    let mut stack: Vec<NodeId> = graph.outputs().iter().map(|(_, id)| *id).collect();
    while let Some(id) = stack.pop() {
        if live.insert(id) {
            stack.extend(graph.operands(id));
        }
    }
    live
}
