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
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::cost::{parameter_count, weight_bytes_read};
    use crate::op::UnaryOp;
    use crate::shape;
    use crate::shape::Bindings;
    use crate::{eval, Builder, EvalError, Tensor};

    const T: Sym = Sym::NewTokens;

    fn node(op: Op, shape: Shape) -> Node {
        Node::new(op, DType::F32, shape)
    }

    fn neg(shape: Shape) -> Node {
        node(Op::Unary(UnaryOp::Neg), shape)
    }

    #[test]
    fn topo_order_is_operands_first_and_lowest_id_first() {
        let mut g = Graph::new();
        // Added out of dependency order: 0 = neg(1), 1 = add(2, 3), 2 and 3 inputs, 4 = neg(2).
        let (a, b, c, d) = (NodeId::new(0), NodeId::new(1), NodeId::new(2), NodeId::new(3));
        assert_eq!(g.add_node(node(Op::Input { name: "x".into() }, shape![2]), &[]), a);
        assert_eq!(g.add_node(node(Op::Input { name: "y".into() }, shape![2]), &[]), b);
        let add = g.add_node(node(Op::Binary(crate::op::BinaryOp::Add), shape![2]), &[b, a]);
        let n3 = g.add_node(neg(shape![2]), &[add]);
        let n4 = g.add_node(neg(shape![2]), &[a]);
        assert_eq!((add, n3, n4), (c, d, NodeId::new(4)));
        assert_eq!(g.operands(add), vec![b, a], "operands keep slot order");
        assert_eq!(g.users(a), vec![add, n4]);
        let order = g.topo_order().unwrap();
        assert_eq!(order, vec![a, b, add, n3, n4]);
        // Every operand precedes its user, and the order is a pure function of the graph.
        let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        for &id in &order {
            assert!(g.operands(id).iter().all(|x| pos[x] < pos[&id]));
        }
        assert_eq!(g.clone().topo_order().unwrap(), order);
        // A removed node's index is reused: the new user gets id 3, below its operand's 5.
        let late = g.add_node(node(Op::Input { name: "z".into() }, shape![2]), &[]);
        assert_eq!(late, NodeId::new(5));
        assert!(g.remove_node(n3).is_some());
        let user = g.add_node(neg(shape![2]), &[late]);
        assert_eq!(user, n3);
        // Graph inputs come first, then computing nodes by id once ready.
        assert_eq!(g.topo_order().unwrap(), vec![a, b, late, add, user, n4]);
    }

    /// Runtimes find what they feed and read by role: the input or output playing one, and the
    /// KV caches by layer, keys before values, whatever order they were declared in.
    #[test]
    fn inputs_and_outputs_are_found_by_role() {
        use crate::role::{KvPart, Role};
        let cache = |layer, part| Role::KvCache { layer, part };
        let mut b = Builder::new();
        let ids = b.input_as("ids", DType::I32, shape![T], Role::TokenIds);
        let x = b.input("x", DType::F32, shape![T, 4]);
        let mut caches = Vec::new();
        for (name, role) in
            [("v1", cache(1, KvPart::Value)), ("k1", cache(1, KvPart::Key)), ("k0", cache(0, KvPart::Key))]
        {
            let c = b.input_as(name, DType::F32, shape![Sym::CachedTokens, 4], role);
            b.output(name, c).unwrap();
            caches.push(c);
        }
        let y = b.unary("y", UnaryOp::Neg, x).unwrap();
        b.output_as("logits", y, Role::Logits).unwrap();
        b.output("other", y).unwrap();
        let mut g = b.finish().unwrap();
        assert_eq!(g.input_with(Role::TokenIds), Some(("ids".to_string(), ids)));
        assert_eq!(g.input_with(Role::Positions), None);
        assert_eq!(g.output_with(Role::Logits), Some(("logits".to_string(), y)));
        assert_eq!(g.output_with(Role::NextToken), None);
        let names: Vec<String> = g.kv_cache_inputs().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["k0", "k1", "v1"]);
        assert_eq!(g.kv_cache_inputs()[0].1, caches[2]);
        assert_eq!((g.role("x"), g.role("other"), g.role("k1")), (Role::Other, Role::Other, cache(1, KvPart::Key)));
        assert!(cache(0, KvPart::Value).is_kv_cache() && !Role::Logits.is_kv_cache() && !Role::Other.is_kv_cache());
        g.set_role("ids", Role::Other);
        assert_eq!((g.input_with(Role::TokenIds), g.roles().count()), (None, 4));
    }

    #[test]
    fn replace_all_uses_rewires_operands_and_outputs() {
        let mut b = Builder::new();
        let x = b.input("x", DType::F32, shape![T, 4]);
        let old = b.unary("old", UnaryOp::Exp, x).unwrap();
        let sq = b.binary("sq", crate::op::BinaryOp::Mul, old, old).unwrap();
        let other = b.unary("other", UnaryOp::Neg, old).unwrap();
        let new = b.unary("new", UnaryOp::Sigmoid, x).unwrap();
        b.output("old", old).unwrap();
        b.output("sq", sq).unwrap();
        let mut g = b.finish().unwrap();
        g.replace_all_uses(old, new);
        assert_eq!(g.operands(sq), vec![new, new], "both slots of a repeated operand move");
        assert_eq!(g.operands(other), vec![new]);
        assert_eq!(g.users(old), vec![]);
        assert_eq!(g.users(new), vec![sq, other]);
        assert_eq!(g.outputs(), &[("old".to_string(), new), ("sq".to_string(), sq)]);
        assert!(g.remove_node(old).is_some());
        crate::verify::verify(&g).unwrap();
        let inputs = HashMap::from([("x".to_string(), Tensor::from_f32(DType::F32, vec![1, 4], vec![0.0; 4]))]);
        let out = eval(&g, inputs, &HashMap::<String, Tensor>::new()).unwrap();
        assert_eq!(out["old"].f32s().unwrap(), &[0.5; 4]);
        assert_eq!(out["sq"].f32s().unwrap(), &[0.25; 4]);
    }

    #[test]
    fn eval_refuses_a_cycle() {
        let mut g = Graph::new();
        let x = g.add_node(node(Op::Input { name: "x".into() }, shape![2]), &[]);
        let a = g.add_node(neg(shape![2]), &[x]);
        let b = g.add_node(neg(shape![2]), &[a]);
        g.replace_all_uses(x, b);
        g.set_output("y", b);
        assert_eq!(g.topo_order(), None);
        let inputs = HashMap::from([("x".to_string(), Tensor::zeros(DType::F32, vec![2]))]);
        assert!(matches!(eval(&g, inputs, &HashMap::<String, Tensor>::new()), Err(EvalError::Cycle)));
    }

    #[test]
    fn pins_replace_and_sort() {
        let mut g = Graph::new();
        g.pin(Sym::CachedTokens, 4);
        g.pin(T, 2);
        g.pin(T, 1);
        assert_eq!(g.pins(), &[(T, 1), (Sym::CachedTokens, 4)]);
        assert_eq!(g.pinned(T), Some(1));
        assert_eq!(g.pinned(Sym::Batch), None);
    }

    /// `embed bf16[10, 4]` gathered by `ids i32[T]`; `tied` also makes it the lm head.
    fn embed_graph(tied: bool, second_gather: bool) -> Graph {
        let mut b = Builder::new();
        let ids = b.input("ids", DType::I32, shape![T]);
        let table = b.weight("embed", DType::BF16, shape![10, 4]).unwrap();
        let h = b.gather("embed", table, ids).unwrap();
        let norm = b.weight("norm", DType::F32, shape![4]).unwrap();
        let h = b.cast("h32", h, DType::F32).unwrap();
        let h = b.mul("scale", h, norm).unwrap();
        let h = b.cast("h16", h, DType::BF16).unwrap();
        if second_gather {
            let more = b.input("more", DType::I32, shape![2]);
            let extra = b.gather("extra", table, more).unwrap();
            b.output("extra", extra).unwrap();
        }
        let head = match tied {
            true => b.weight("embed", DType::BF16, shape![10, 4]).unwrap(),
            false => b.weight("lm_head", DType::BF16, shape![10, 4]).unwrap(),
        };
        let logits = b.matmul("lm_head", h, head).unwrap();
        b.output("logits", logits).unwrap();
        b.finish().unwrap()
    }

    #[test]
    fn weight_bytes_read_counts_gathered_rows_or_whole_tensors() {
        let bind = Bindings { batch: 1, new_tokens: 3, cached_tokens: 7 };
        // Untied: 3 rows of 4 bf16 + norm 4 f32 + lm_head 10x4 bf16.
        assert_eq!(weight_bytes_read(&embed_graph(false, false), &bind), Some(3 * 4 * 2 + 4 * 4 + 10 * 4 * 2));
        // Two gathers: their rows add up.
        assert_eq!(weight_bytes_read(&embed_graph(false, true), &bind), Some((3 + 2) * 4 * 2 + 4 * 4 + 10 * 4 * 2));
        // Tied: the matmul reads the whole table once; the gathers add nothing.
        for second in [false, true] {
            assert_eq!(weight_bytes_read(&embed_graph(true, second), &bind), Some(4 * 4 + 10 * 4 * 2));
        }
        let decode = Bindings { new_tokens: 1, ..bind };
        assert_eq!(weight_bytes_read(&embed_graph(false, false), &decode), Some(4 * 2 + 4 * 4 + 10 * 4 * 2));
        assert_eq!(parameter_count(&embed_graph(false, false)), Some(40 + 4 + 40));
        assert_eq!(parameter_count(&embed_graph(true, true)), Some(40 + 4), "tied weights count once");
    }
}
