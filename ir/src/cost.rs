//! Static costs of a graph: parameter counts and the bytes a run reads from weights.

use crate::graph::Graph;
use crate::op::Op;
use crate::shape::Bindings;

/// Elements across all weight nodes (a weight used twice, e.g. tied embeddings, counts once);
/// `None` when a weight's shape is not fixed or the count overflows `usize`.
pub fn parameter_count(graph: &Graph) -> Option<usize> {
    graph.weights().iter().try_fold(0usize, |total, (_, id)| total.checked_add(graph.node(*id).shape.fixed_volume()?))
}

/// Bytes of weights one run reads under `b`: a weight used only by gathers costs the rows
/// gathered; any other use reads the whole tensor, once. `None` when the count overflows.
pub fn weight_bytes_read(graph: &Graph, b: &Bindings) -> Option<usize> {
    let mut total = 0usize;
    for (_, id) in graph.weights() {
        let node = graph.node(id);
        let users = graph.users(id);
        let only_gathers = !users.is_empty() && users.iter().all(|&u| matches!(graph.node(u).op, Op::Gather));
        let elements = if only_gathers {
            let row = node.shape.dims()[1..].iter().try_fold(1usize, |n, d| n.checked_mul(b.dim(*d)))?;
            let rows = users
                .iter()
                .try_fold(0usize, |n, &u| n.checked_add(graph.node(graph.operands(u)[1]).shape.checked_volume(b)?))?;
            rows.checked_mul(row)?
        } else {
            node.shape.checked_volume(b)?
        };
        total = total.checked_add(elements.checked_mul(node.dtype.size_bytes())?)?;
    }
    Some(total)
}
