//! The graph: ops as nodes of a `petgraph` DAG; edges run from operand to user and carry the
//! operand's slot.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, NodeIndexable};
use petgraph::Direction;

use crate::dtype::DType;
use crate::op::Op;
use crate::role::{Meta, Role};
use crate::shape::{Shape, Sym};

pub type NodeId = NodeIndex<u32>;

/// One op and the type of the value it produces.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub dtype: DType,
    pub shape: Shape,
    /// A stable, meaningful name (`l03.attn.scores`) used by printers and error messages.
    pub name: Option<String>,
    /// The model's layer index and label, from which kernels are named.
    pub meta: Meta,
}

impl Node {
    /// A node with no name and no metadata.
    pub fn new(op: Op, dtype: DType, shape: Shape) -> Node {
        Node { op, dtype, shape, name: None, meta: Meta::default() }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    g: StableDiGraph<Node, u32>,
    outputs: Vec<(String, NodeId)>,
    /// Symbols this graph fixes: a decode graph pins `T = 1`, which gives `P+T` its meaning
    /// where shapes spell the new-token dim as a literal 1.
    pins: Vec<(Sym, usize)>,
    /// The role of each input and output name that has one; the rest are [`Role::Other`].
    roles: BTreeMap<String, Role>,
    /// Which rank of a tensor-parallel group this graph is; `None`: the whole model.
    rank: Option<Rank>,
}

/// One rank of a tensor-parallel group of `world` ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rank {
    pub rank: u32,
    pub world: u32,
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Adds a node without checking it; the builder checks as it goes and [`crate::verify`]
    /// checks the whole graph.
    pub fn add_node(&mut self, node: Node, operands: &[NodeId]) -> NodeId {
        let id = self.g.add_node(node);
        for (slot, &x) in operands.iter().enumerate() {
            self.g.add_edge(x, id, slot as u32);
        }
        id
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.g[id]
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.g.contains_node(id)
    }

    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }

    /// One past the largest node index: the length of a table indexed by `NodeId::index()`.
    pub fn node_bound(&self) -> usize {
        self.g.node_bound()
    }

    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.g.node_indices()
    }

    /// Operands in slot order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut ins: Vec<(u32, NodeId)> =
            self.g.edges_directed(id, Direction::Incoming).map(|e| (*e.weight(), e.source())).collect();
        ins.sort();
        ins.into_iter().map(|(_, n)| n).collect()
    }

    /// Distinct users, in id order.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = self.g.neighbors_directed(id, Direction::Outgoing).collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn pins(&self) -> &[(Sym, usize)] {
        &self.pins
    }

    /// The value this graph fixes for `sym`, if any.
    pub fn pinned(&self, sym: Sym) -> Option<usize> {
        self.pins.iter().find(|(s, _)| *s == sym).map(|&(_, v)| v)
    }

    /// Fixes `sym` to `value` for this graph.
    pub fn pin(&mut self, sym: Sym, value: usize) {
        self.pins.retain(|(s, _)| *s != sym);
        self.pins.push((sym, value));
        self.pins.sort();
    }

    /// The tensor-parallel rank this graph computes, if it is one rank's part of a model.
    pub fn rank(&self) -> Option<Rank> {
        self.rank
    }

    /// The size of the tensor-parallel group this graph belongs to (1 for a whole model).
    pub fn world(&self) -> u32 {
        self.rank.map_or(1, |r| r.world)
    }

    pub fn set_rank(&mut self, rank: Rank) {
        self.rank = Some(rank);
    }

    pub fn outputs(&self) -> &[(String, NodeId)] {
        &self.outputs
    }

    /// Marks `id` as the graph output `name` (replacing an output of the same name).
    pub fn set_output(&mut self, name: &str, id: NodeId) {
        match self.outputs.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = id,
            None => self.outputs.push((name.to_string(), id)),
        }
    }

    /// Gives the input and/or output called `name` the role `role`.
    pub fn set_role(&mut self, name: &str, role: Role) {
        match role {
            Role::Other => self.roles.remove(name),
            role => self.roles.insert(name.to_string(), role),
        };
    }

    /// The role of the input or output called `name`.
    pub fn role(&self, name: &str) -> Role {
        self.roles.get(name).copied().unwrap_or_default()
    }

    /// Every name with a role, by name.
    pub fn roles(&self) -> impl Iterator<Item = (&str, Role)> + '_ {
        self.roles.iter().map(|(n, r)| (n.as_str(), *r))
    }

    /// The input playing `role`, if one does.
    pub fn input_with(&self, role: Role) -> Option<(String, NodeId)> {
        self.inputs().into_iter().find(|(n, _)| self.role(n) == role)
    }

    /// The output playing `role`, if one does.
    pub fn output_with(&self, role: Role) -> Option<(String, NodeId)> {
        self.outputs.iter().find(|(n, _)| self.role(n) == role).cloned()
    }

    /// The KV-cache inputs (state the runtime keeps between steps and feeds back under the
    /// same name), by layer, keys before values.
    pub fn kv_cache_inputs(&self) -> Vec<(String, NodeId)> {
        let mut caches: Vec<(Role, String, NodeId)> = self
            .inputs()
            .into_iter()
            .filter_map(|(n, id)| Some(self.role(&n)).filter(|r| r.is_kv_cache()).map(|r| (r, n, id)))
            .collect();
        caches.sort();
        caches.into_iter().map(|(_, n, id)| (n, id)).collect()
    }

    /// Redirects every use of `old` (operands and outputs) to `new`.
    pub fn replace_all_uses(&mut self, old: NodeId, new: NodeId) {
        let uses: Vec<(NodeId, u32)> =
            self.g.edges_directed(old, Direction::Outgoing).map(|e| (e.target(), *e.weight())).collect();
        for (user, slot) in uses {
            if let Some(e) = self.g.find_edge(old, user) {
                self.g.remove_edge(e);
            }
            self.g.add_edge(new, user, slot);
        }
        for out in &mut self.outputs {
            if out.1 == old {
                out.1 = new;
            }
        }
    }

    pub fn remove_node(&mut self, id: NodeId) -> Option<Node> {
        self.g.remove_node(id)
    }

    /// A deterministic topological order, so that everything printed from it only changes
    /// when the graph does: graph inputs first (the calling convention), then computing nodes,
    /// the lowest id first among the ready ones, each preceded by the weights and constants it
    /// reads that have not appeared yet (so a dump shows a weight next to its use); leaves
    /// nobody reads come last. `None` if the graph has a cycle.
    pub fn topo_order(&self) -> Option<Vec<NodeId>> {
        let is_leaf = |id: NodeId| self.g[id].op.is_leaf();
        let mut placed = vec![false; self.g.node_bound()];
        let mut pending: Vec<usize> = vec![0; self.g.node_bound()];
        let mut order = Vec::with_capacity(self.g.node_count());
        let mut ready = BinaryHeap::new();
        for id in self.g.node_indices() {
            if matches!(self.g[id].op, Op::Input { .. }) {
                placed[id.index()] = true;
                order.push(id);
            }
            // Only edges from computing nodes gate readiness; leaves are placed on demand.
            let n = self.g.edges_directed(id, Direction::Incoming).filter(|e| !is_leaf(e.source())).count();
            pending[id.index()] = n;
            if n == 0 && !is_leaf(id) {
                ready.push(Reverse(id));
            }
        }
        while let Some(Reverse(id)) = ready.pop() {
            for x in self.operands(id) {
                if is_leaf(x) && !placed[x.index()] {
                    placed[x.index()] = true;
                    order.push(x);
                }
            }
            placed[id.index()] = true;
            order.push(id);
            for e in self.g.edges_directed(id, Direction::Outgoing) {
                let t = e.target();
                pending[t.index()] -= 1;
                if pending[t.index()] == 0 {
                    ready.push(Reverse(t));
                }
            }
        }
        order.extend(self.g.node_indices().filter(|&id| is_leaf(id) && !placed[id.index()]));
        (order.len() == self.g.node_count()).then_some(order)
    }

    /// Input nodes as (name, id), in id order.
    pub fn inputs(&self) -> Vec<(String, NodeId)> {
        self.leaves(|op| match op {
            Op::Input { name } => Some(name),
            _ => None,
        })
    }

    /// Weight nodes as (name, id), in id order.
    pub fn weights(&self) -> Vec<(String, NodeId)> {
        self.leaves(|op| match op {
            Op::Weight { name } => Some(name),
            _ => None,
        })
    }

    fn leaves(&self, pick: impl Fn(&Op) -> Option<&String>) -> Vec<(String, NodeId)> {
        let mut v: Vec<(String, NodeId)> =
            self.g.node_indices().filter_map(|id| pick(&self.g[id].op).map(|n| (n.clone(), id))).collect();
        v.sort_by_key(|(_, id)| *id);
        v
    }
}

#[cfg(test)]
mod tests;
