//! Static costs of a graph: parameter counts and the bytes a run reads from weights.

use crate::graph::Graph;
use crate::op::Op;
use crate::shape::Bindings;

/// Elements across all weight nodes (a weight used twice, e.g. tied embeddings, counts once).
pub fn parameter_count(graph: &Graph) -> usize {
    graph.weights().iter().map(|(_, id)| graph.node(*id).shape.fixed_volume().unwrap_or(0)).sum()
}

/// Bytes of weights one run reads under `b`: a weight used only by gathers costs the rows
/// gathered; any other use reads the whole tensor, once.
pub fn weight_bytes_read(graph: &Graph, b: &Bindings) -> usize {
    let mut total = 0;
    for (_, id) in graph.weights() {
        let node = graph.node(id);
        let users = graph.users(id);
        let only_gathers = !users.is_empty() && users.iter().all(|&u| matches!(graph.node(u).op, Op::Gather));
        let bytes = if only_gathers {
            let row: usize = node.shape.dims()[1..].iter().map(|d| b.dim(*d)).product();
            let rows: usize = users
                .iter()
                .map(|&u| graph.node(graph.operands(u)[1]).shape.resolve(b).iter().product::<usize>())
                .sum();
            rows * row
        } else {
            node.shape.resolve(b).iter().product()
        };
        total += bytes * node.dtype.size_bytes();
    }
    total
}
