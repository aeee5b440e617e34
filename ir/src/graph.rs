//! The graph: ops as nodes of a `petgraph` DAG; edges run from operand to user and carry the
//! operand's slot.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, NodeIndexable};
use petgraph::Direction;

use crate::dtype::DType;
use crate::op::Op;
use crate::shape::{Shape, Sym};

pub type NodeId = NodeIndex<u32>;

/// One op and the type of the value it produces.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub dtype: DType,
    pub shape: Shape,
    /// A stable, meaningful name (`l03.attn.q_proj`) used by printers and kernel names.
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    g: StableDiGraph<Node, u32>,
    outputs: Vec<(String, NodeId)>,
    /// Symbols this graph fixes: a decode graph pins `T = 1`, which gives `P+T` its meaning
    /// where shapes spell the new-token dim as a literal 1.
    pins: Vec<(Sym, usize)>,
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

    /// A deterministic topological order: among ready nodes the lowest id goes first, so the
    /// order (and everything printed from it) only changes when the graph does.
    /// `None` if the graph has a cycle.
    pub fn topo_order(&self) -> Option<Vec<NodeId>> {
        let mut pending: Vec<usize> = vec![0; self.g.node_bound()];
        let mut ready = BinaryHeap::new();
        for id in self.g.node_indices() {
            let n = self.g.edges_directed(id, Direction::Incoming).count();
            pending[id.index()] = n;
            if n == 0 {
                ready.push(Reverse(id));
            }
        }
        let mut order = Vec::with_capacity(self.g.node_count());
        while let Some(Reverse(id)) = ready.pop() {
            order.push(id);
            for e in self.g.edges_directed(id, Direction::Outgoing) {
                let t = e.target();
                pending[t.index()] -= 1;
                if pending[t.index()] == 0 {
                    ready.push(Reverse(t));
                }
            }
        }
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
