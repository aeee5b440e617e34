//! Fusion passes: each matches a primitive chain by walking operands from a root, and
//! replaces it with one fused op whose `eval` meaning is the chain's. Nodes left dead are
//! removed by `Dce`.

mod elementwise;
mod epilogue;
mod horizontal;
mod norm;

pub use elementwise::FuseElementwise;
pub use epilogue::FuseEpilogue;
pub use horizontal::FuseHorizontal;
pub use norm::{FuseNormPrologue, FuseNormRope, FuseRmsNorm};

/// The fusion passes, in the order the standard pipeline runs them (each followed by `Dce`): a
/// new fusion is listed once, here or in its family's list (`norm::fusions`). Horizontal
/// fusion goes first so that the norms and matmuls after it see the concatenated projections;
/// epilogues last, over the fused elementwise regions.
pub fn fusions() -> Vec<Box<dyn Pass>> {
    let mut passes: Vec<Box<dyn Pass>> = vec![Box::new(FuseHorizontal)];
    passes.extend(norm::fusions());
    passes.push(Box::new(FuseElementwise));
    passes.push(Box::new(FuseEpilogue));
    passes
}

#[cfg(test)]
mod near_miss;
#[cfg(test)]
mod rope_tests;
#[cfg(test)]
mod tests;

use smelt_ir::{Graph, Node, NodeId, Op};

use crate::pass::Pass;

pub(crate) fn op(g: &Graph, id: NodeId) -> &Op {
    &g.node(id).op
}

/// True when `id` has exactly one user and is not a graph output, so folding it into that
/// user cannot change anything else.
pub(crate) fn only_used_by(g: &Graph, id: NodeId, user: NodeId) -> bool {
    g.users(id) == [user] && !g.outputs().iter().any(|(_, o)| *o == id)
}

/// The f32 value of a scalar constant.
pub(crate) fn scalar_value(g: &Graph, id: NodeId) -> Option<f32> {
    match op(g, id) {
        Op::Constant { values } if values.len() == 1 => Some(values[0]),
        _ => None,
    }
}

/// Skips a cast, returning its operand (or `id` itself when it is not a cast).
pub(crate) fn through_cast(g: &Graph, id: NodeId) -> NodeId {
    match op(g, id) {
        Op::Cast { .. } => g.operands(id)[0],
        _ => id,
    }
}

/// Adds `op` on `operands` with the type of `like`, carrying its name and metadata, and moves
/// every use of `like` to the new node.
pub(crate) fn replace_with(g: &mut Graph, like: NodeId, op: Op, operands: &[NodeId]) -> NodeId {
    let new = g.add_node(Node { op, ..g.node(like).clone() }, operands);
    g.replace_all_uses(like, new);
    new
}

/// Node ids in topological order (a snapshot: passes mutate the graph while iterating).
pub(crate) fn topo(g: &Graph) -> Vec<NodeId> {
    g.topo_order().unwrap_or_else(|| g.node_ids().collect())
}
