//! Rank `r`'s graph from the plan: the same nodes with local shapes, split weights named by
//! their slices, and a collective wherever a value is made whole.

use std::collections::HashMap;

use smelt_ir::{verify, Dim, Graph, Node, NodeId, Op, Rank, Shape, WeightSlice};

use super::{Layout, Plan, ShardError};

impl Plan<'_> {
    /// Rank `rank`'s graph: every node with its local shape, split weights named by their
    /// slice, collectives where a value is made whole.
    pub(super) fn build(&self, rank: u32) -> Result<Graph, ShardError> {
        let g = self.graph;
        let r = rank as usize;
        let mut out = Graph::new();
        let mut local: HashMap<NodeId, NodeId> = HashMap::new();
        let mut whole: HashMap<NodeId, NodeId> = HashMap::new();
        for &id in &self.order {
            let node = g.node(id);
            let layout = &self.layout[&id];
            let shape = local_shape(&node.shape, layout, r);
            let op = match (&node.op, layout) {
                (Op::Weight { name }, Layout::Split { axis, parts, .. }) => {
                    Op::Weight { name: WeightSlice::new(*axis, parts[r].clone()).name(name) }
                }
                (Op::Gather, _) if self.partial_gathers.contains(&id) => {
                    let table = g.operands(id)[0];
                    let Layout::Split { parts, .. } = &self.layout[&table] else {
                        unreachable!("a partial gather's table is split")
                    };
                    let total = g.node(table).shape.dims()[0].fixed().unwrap_or(0);
                    Op::PartialGather { start: parts[r].start, total }
                }
                (Op::Reshape { .. }, _) => Op::Reshape { to: shape.clone() },
                (op, _) => op.clone(),
            };
            let mut operands = Vec::new();
            for (slot, x) in g.operands(id).into_iter().enumerate() {
                operands.push(match self.whole_at.contains(&(id, slot)) {
                    true => self.made_whole(&mut out, &local, &mut whole, x),
                    false => local[&x],
                });
            }
            local.insert(id, out.add_node(Node { op, shape, ..node.clone() }, &operands));
        }
        for (name, x) in g.outputs() {
            let y = match self.whole_outputs.contains(name) {
                true => self.made_whole(&mut out, &local, &mut whole, *x),
                false => local[x],
            };
            out.set_output(name, y);
        }
        for (name, role) in g.roles() {
            out.set_role(name, role);
        }
        for &(sym, v) in g.pins() {
            out.pin(sym, v);
        }
        out.set_rank(Rank { rank, world: self.world });
        verify::verify(&out)?;
        Ok(out)
    }

    /// The whole value of `x` on this rank: one all-reduce or all-gather per value, shared by
    /// every use that needs it.
    fn made_whole(
        &self,
        out: &mut Graph,
        local: &HashMap<NodeId, NodeId>,
        whole: &mut HashMap<NodeId, NodeId>,
        x: NodeId,
    ) -> NodeId {
        if let Some(&y) = whole.get(&x) {
            return y;
        }
        let node = self.graph.node(x);
        let (op, suffix) = match &self.layout[&x] {
            Layout::Split { axis, .. } => (Op::AllGather { axis: *axis, world: self.world }, "all_gather"),
            _ => (Op::AllReduce { world: self.world }, "all_reduce"),
        };
        let name = node.name.as_ref().map(|n| format!("{n}.{suffix}"));
        let meta = smelt_ir::Meta { split: None, ..node.meta.clone() };
        let y = out.add_node(Node { op, name, meta, ..node.clone() }, &[local[&x]]);
        whole.insert(x, y);
        y
    }
}

/// A node's shape on rank `r`: the split axis cut to the rank's range.
fn local_shape(global: &Shape, layout: &Layout, r: usize) -> Shape {
    let mut dims = global.dims().to_vec();
    if let Layout::Split { axis, parts, .. } = layout {
        dims[*axis] = Dim::Fixed(parts[r].len());
    }
    Shape(dims)
}
