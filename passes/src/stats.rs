//! Counting the ops that become kernels: every op that computes, i.e. not a leaf (input,
//! weight, constant) and not a view (reshape, slice), which kernels absorb as addressing.
//! Ops are assigned to the decoder layer the model marked them with.

use std::collections::BTreeMap;

use serde::Serialize;
use smelt_ir::Graph;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OpCounts {
    /// Kernel ops in the whole graph.
    pub ops: usize,
    /// The most kernel ops in any one layer.
    pub ops_per_layer: usize,
    /// Kernel ops outside every layer (embedding, final norm, head, sampling).
    pub ops_outside_layers: usize,
    /// Kernel ops per layer index.
    #[serde(skip)]
    pub by_layer: BTreeMap<usize, usize>,
    /// Kernel ops by kind.
    pub by_kind: BTreeMap<&'static str, usize>,
}

pub fn op_counts(graph: &Graph) -> OpCounts {
    let mut c = OpCounts::default();
    for id in graph.node_ids() {
        let node = graph.node(id);
        if node.op.is_leaf() || node.op.is_view() {
            continue;
        }
        c.ops += 1;
        *c.by_kind.entry(node.op.kind()).or_insert(0) += 1;
        match node.meta.layer {
            Some(l) => *c.by_layer.entry(l as usize).or_insert(0) += 1,
            None => c.ops_outside_layers += 1,
        }
    }
    c.ops_per_layer = c.by_layer.values().copied().max().unwrap_or(0);
    c
}

#[cfg(test)]
mod tests {
    use smelt_ir::{shape, Builder, DType, UnaryOp};

    use super::*;

    #[test]
    fn ops_count_by_the_layer_the_model_marked() {
        let mut b = Builder::new();
        let x = b.input("x", DType::F32, shape![4]);
        let mut h = b.unary("embed", UnaryOp::Neg, x).unwrap();
        for layer in [0, 1, 3] {
            // Names carry no layer: the mark alone assigns it.
            h = b.in_layer(layer, |b| {
                let y = b.unary("a", UnaryOp::Exp, h).unwrap();
                let y = b.reshape("view", y, shape![2, 2]).unwrap();
                b.reshape("flat", y, shape![4]).unwrap()
            });
            if layer == 3 {
                h = b.in_layer(3, |b| b.unary("b", UnaryOp::Silu, h).unwrap());
            }
        }
        b.output("y", h).unwrap();
        let c = op_counts(&b.finish().unwrap());
        assert_eq!(c.ops, 5, "views and leaves are not kernel ops");
        assert_eq!(c.by_layer, BTreeMap::from([(0, 1), (1, 1), (3, 2)]));
        assert_eq!((c.ops_per_layer, c.ops_outside_layers), (2, 1));
    }
}
