//! Tensor parallelism as a graph rewrite: [`shard`] gives each of `world` ranks its own graph,
//! Megatron's layout, from the split each weight's [`smelt_ir::Meta::split`] allows.
//!
//! The pass follows every value's layout across the ranks from the weights down: whole (every
//! rank holds it), split along an axis (rank `r` holds a range of it; ranges may repeat when
//! groups are replicated), or partial (every rank holds a summand). Each op keeps its operands'
//! layout where its meaning allows (elementwise ops and norms along an unsplit axis, a matmul by
//! a row-split weight, attention over whole heads), and otherwise first makes them whole: a
//! partial value by an all-reduce, a split one by an all-gather. So a column-parallel matmul
//! (q/k/v, gate/up) feeds the heads and the activation locally, a row-parallel one (o_proj,
//! down_proj) sums its partial products with one all-reduce before the residual add, a
//! row-split embedding is a partial gather summed the same way, and a row-split lm_head's
//! logits are all-gathered. Graph outputs are whole, except state (a KV cache), which each rank
//! keeps for its own heads. The rank graphs are verified; the fusion passes then run on each.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

mod build;

use smelt_ir::{Dim, Graph, IrError, Node, NodeId, Op, Shape, Split};

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("tensor parallelism over {world} ranks: {why}")]
    Layout { world: u32, why: String },
    #[error(transparent)]
    Ir(#[from] IrError),
}

/// How one value lies across the ranks.
#[derive(Clone, Debug)]
enum Layout {
    Whole,
    /// Rank `r` holds elements `parts[r]` of axis `axis`; `from` names the weight and its
    /// groups the split comes from (for errors).
    Split {
        axis: usize,
        parts: Vec<Range<usize>>,
        from: String,
    },
    Partial,
}

impl PartialEq for Layout {
    /// Where the values lie; not where a split came from.
    fn eq(&self, other: &Layout) -> bool {
        match (self, other) {
            (Layout::Split { axis: a, parts: p, .. }, Layout::Split { axis: b, parts: q, .. }) => a == b && p == q,
            (Layout::Whole, Layout::Whole) | (Layout::Partial, Layout::Partial) => true,
            _ => false,
        }
    }
}

/// Every rank's graph, rank 0 first. `world == 1` gives the graph back as it is.
pub fn shard(graph: &Graph, world: u32) -> Result<Vec<Graph>, ShardError> {
    if world == 0 {
        return Err(ShardError::Layout { world, why: "a group needs at least one rank".into() });
    }
    if world == 1 {
        return Ok(vec![graph.clone()]);
    }
    let plan = Plan::make(graph, world)?;
    (0..world).map(|r| plan.build(r)).collect()
}

struct Plan<'g> {
    graph: &'g Graph,
    world: u32,
    order: Vec<NodeId>,
    layout: HashMap<NodeId, Layout>,
    /// `(user, slot)`: the operand in that slot is made whole first.
    whole_at: HashSet<(NodeId, usize)>,
    /// Outputs made whole first.
    whole_outputs: HashSet<String>,
    /// Gathers from a row-split table: each rank gathers its part.
    partial_gathers: HashSet<NodeId>,
}

impl<'g> Plan<'g> {
    fn make(graph: &'g Graph, world: u32) -> Result<Plan<'g>, ShardError> {
        let order = graph.topo_order().ok_or(IrError::Cycle)?;
        let mut plan = Plan {
            graph,
            world,
            order: order.clone(),
            layout: HashMap::new(),
            whole_at: HashSet::new(),
            whole_outputs: HashSet::new(),
            partial_gathers: HashSet::new(),
        };
        plan.check_weights()?;
        for id in order {
            let layout = plan.rule(id)?;
            plan.layout.insert(id, layout);
        }
        for (name, x) in graph.outputs() {
            let state = graph.role(name).is_kv_cache();
            match plan.layout[x] {
                Layout::Whole => {}
                Layout::Split { .. } if state => {}
                _ => {
                    plan.check_can_make_whole(*x, &format!("output {name:?}"))?;
                    plan.whole_outputs.insert(name.clone());
                }
            }
        }
        Ok(plan)
    }

    /// Every weight the world cannot split, reported together (once per shape of split): the
    /// head counts are named even when the vocabulary fails too.
    fn check_weights(&self) -> Result<(), ShardError> {
        let mut seen = HashSet::new();
        let mut failures = Vec::new();
        for (name, id) in self.graph.weights() {
            let node = self.graph.node(id);
            let Some(split) = node.meta.split else { continue };
            let len = node.shape.dims().get(split.axis()).and_then(|d| d.fixed());
            if let (Some(len), Err(why)) =
                (len, len.map_or(Ok(Vec::new()), |l| parts(l, split.unit(), self.world as usize)))
            {
                if seen.insert((split, len)) {
                    failures.push(format!("weight {name}: its {} {why}", what_splits(split, len)));
                }
            }
        }
        match failures.is_empty() {
            true => Ok(()),
            false => Err(self.err(failures.join("; "))),
        }
    }

    fn err(&self, why: String) -> ShardError {
        ShardError::Layout { world: self.world, why }
    }

    fn label(&self, id: NodeId) -> String {
        smelt_ir::print::node_label(self.graph, id)
    }

    /// The layout of node `id` from its operands', marking operands it needs whole.
    fn rule(&mut self, id: NodeId) -> Result<Layout, ShardError> {
        let g = self.graph;
        let node = g.node(id);
        let operands = g.operands(id);
        let ls: Vec<Layout> = operands.iter().map(|x| self.layout[x].clone()).collect();
        let split = |l: &Layout| match l {
            Layout::Split { axis, parts, .. } => Some((*axis, parts.clone())),
            _ => None,
        };
        match &node.op {
            Op::Input { .. } | Op::Constant { .. } => return Ok(Layout::Whole),
            Op::Weight { name } => return self.weight(node, name),
            Op::Fused(_) | Op::AllReduce { .. } | Op::AllGather { .. } | Op::PartialGather { .. } => {
                let why = format!("{}: shard a model's primitive graph, before fusion", self.label(id));
                return Err(self.err(why));
            }
            _ => {}
        }
        if ls.iter().all(|l| *l == Layout::Whole) {
            return Ok(Layout::Whole);
        }
        let rank = node.shape.rank();
        let kept = match (&node.op, ls.as_slice()) {
            (Op::Unary(_) | Op::Cast { .. }, [l @ Layout::Split { .. }]) => Some(l.clone()),
            (Op::Reshape { .. }, [Layout::Partial]) => Some(Layout::Partial),
            (Op::Slice { .. }, [Layout::Partial]) => Some(Layout::Partial),
            (Op::Reshape { to }, [l]) => split(l).and_then(|(a, p)| self.reshaped(id, a, &p, to)),
            (Op::Slice { axis, .. }, [l]) => split(l).filter(|(a, _)| a != axis).map(|_| l.clone()),
            (Op::Reduce { axis, .. }, [l]) => split(l).filter(|(a, _)| a != axis).map(|_| l.clone()),
            (Op::ArgMax { axis }, [l @ Layout::Split { from, .. }]) => split(l)
                .filter(|(a, _)| a != axis)
                .map(|(a, parts)| Layout::Split { axis: a - usize::from(a > *axis), parts, from: from.clone() }),
            (Op::Binary(_), _) => self.elementwise(id, &ls, rank),
            (Op::Concat { axis }, [first, ..]) => {
                (ls.iter().all(|l| l == first) && split(first).is_some_and(|(a, _)| a != *axis)).then(|| first.clone())
            }
            (Op::MatMul, [x, w]) => match (x, split(x), split(w)) {
                (Layout::Whole, _, Some((0, parts))) => {
                    let from = match w {
                        Layout::Split { from, .. } => from.clone(),
                        _ => String::new(),
                    };
                    Some(Layout::Split { axis: rank - 1, parts, from })
                }
                (_, Some((a, px)), Some((1, pw))) if a + 1 == rank && px == pw && self.is_partition(&px) => {
                    Some(Layout::Partial)
                }
                (_, Some((a, _)), None) if a + 1 < rank => Some(x.clone()),
                _ => None,
            },
            (Op::Gather, [table, Layout::Whole]) => match split(table) {
                Some((0, parts)) if self.is_partition(&parts) => {
                    self.partial_gathers.insert(id);
                    Some(Layout::Partial)
                }
                _ => None,
            },
            (Op::KvAppend, [_, new @ Layout::Split { .. }]) => {
                // The cache (an input: state the runtime keeps) is laid out as what it holds.
                let cache = operands[0];
                let is_state = matches!(&g.node(cache).op, Op::Input { name } if g.role(name).is_kv_cache());
                if is_state {
                    self.layout.insert(cache, new.clone());
                    Some(new.clone())
                } else {
                    (ls[0] == *new).then(|| new.clone())
                }
            }
            (Op::Attention { .. }, [q, k, v]) => match (split(q), split(k)) {
                (Some((1, pq)), Some((1, pk))) if k == v && self.heads_meet(g, id, &pq, &pk) => Some(q.clone()),
                _ => None,
            },
            _ => None,
        };
        match kept {
            Some(layout) => Ok(layout),
            None => {
                for (slot, (x, l)) in operands.iter().zip(&ls).enumerate() {
                    if *l != Layout::Whole {
                        self.check_can_make_whole(*x, &self.label(id))?;
                        self.whole_at.insert((id, slot));
                    }
                }
                Ok(Layout::Whole)
            }
        }
    }

    /// A weight's layout from the split its metadata allows.
    fn weight(&self, node: &Node, name: &str) -> Result<Layout, ShardError> {
        let Some(split) = node.meta.split else { return Ok(Layout::Whole) };
        let axis = split.axis();
        let Some(len) = node.shape.dims().get(axis).and_then(|d| d.fixed()) else {
            return Err(self.err(format!("weight {name}: no fixed axis {axis} to split")));
        };
        let parts = parts(len, split.unit(), self.world as usize)
            .map_err(|why| self.err(format!("weight {name}: its {} {why}", what_splits(split, len))))?;
        let from = format!("{name}: {}", what_splits(split, len));
        Ok(Layout::Split { axis, parts, from })
    }

    /// Elementwise with broadcasting: every split operand split alike, every whole one
    /// broadcast along the split axis.
    fn elementwise(&self, id: NodeId, ls: &[Layout], rank: usize) -> Option<Layout> {
        let operands = self.graph.operands(id);
        let mut kept: Option<(usize, &Layout)> = None;
        for (x, l) in operands.iter().zip(ls) {
            if let Layout::Split { axis, .. } = l {
                let at = axis + rank - self.graph.node(*x).shape.rank();
                match kept {
                    Some((a, k)) if a != at || k != l => return None,
                    _ => kept = Some((at, l)),
                }
            }
        }
        let (at, layout) = kept?;
        let broadcast_along = |x: &NodeId| {
            let dims = self.graph.node(*x).shape.dims();
            match (at + dims.len()).checked_sub(rank) {
                None => true,
                Some(i) => dims[i] == Dim::Fixed(1),
            }
        };
        let fits = operands.iter().zip(ls).all(|(x, l)| match l {
            Layout::Whole => broadcast_along(x),
            Layout::Split { .. } => true,
            Layout::Partial => false,
        });
        fits.then(|| layout.clone())
    }

    /// A reshape that splits or merges the split axis with the axes after it keeps the split
    /// when every rank's range falls on whole elements of the new axis.
    fn reshaped(&self, id: NodeId, axis: usize, parts: &[Range<usize>], to: &Shape) -> Option<Layout> {
        let from = &self.graph.node(self.graph.operands(id)[0]).shape;
        if from.dims().get(..axis) != to.dims().get(..axis) {
            return None;
        }
        let inner = |s: &Shape| s.dims().get(axis + 1..).and_then(|d| Shape(d.to_vec()).fixed_volume());
        let (inner_from, inner_to) = (inner(from)?, inner(to)?);
        let map = |i: usize| (i * inner_from % inner_to == 0).then_some(i * inner_from / inner_to);
        let parts = parts.iter().map(|p| Some(map(p.start)?..map(p.end)?)).collect::<Option<Vec<_>>>()?;
        let origin = match &self.layout[&self.graph.operands(id)[0]] {
            Layout::Split { from, .. } => from.clone(),
            _ => String::new(),
        };
        Some(Layout::Split { axis, parts, from: origin })
    }

    /// Each rank's query heads read only KV heads the rank holds, in the same grouping as the
    /// whole attention (query head `h` reads KV head `h / (H / KVH)`).
    fn heads_meet(&self, g: &Graph, id: NodeId, pq: &[Range<usize>], pk: &[Range<usize>]) -> bool {
        let heads = |x: NodeId| g.node(x).shape.dims().get(1).and_then(|d| d.fixed());
        let ops = g.operands(id);
        let (Some(h), Some(kvh)) = (heads(ops[0]), heads(ops[1])) else { return false };
        let group = h / kvh.max(1);
        pq.iter().zip(pk).all(|(q, k)| {
            let local_group = q.len() / k.len().max(1);
            local_group > 0 && q.clone().enumerate().all(|(i, head)| k.start + i / local_group == head / group)
        })
    }

    /// Parts that tile the axis in rank order without overlap (an all-gather's or a partial
    /// sum's).
    fn is_partition(&self, parts: &[Range<usize>]) -> bool {
        parts.windows(2).all(|w| w[0].end == w[1].start) && parts.first().is_some_and(|p| p.start == 0)
    }

    fn check_can_make_whole(&self, x: NodeId, user: &str) -> Result<(), ShardError> {
        match &self.layout[&x] {
            Layout::Split { parts, from, .. } if !self.is_partition(parts) => Err(self.err(format!(
                "{user} needs {} whole, but ranks hold overlapping parts of it (from {from}): use a world that divides the groups",
                self.label(x)
            ))),
            _ => Ok(()),
        }
    }
}

/// `2048 rows in 16 groups of 128` (whole heads), or `151936 rows`.
fn what_splits(split: Split, len: usize) -> String {
    let what = match split {
        Split::Rows { .. } => "rows",
        Split::Columns { .. } => "columns",
    };
    match split.unit() {
        1 => format!("{len} {what}"),
        unit => format!("{len} {what} in {} groups of {unit}", len / unit),
    }
}

/// Rank `r`'s range of an axis of `len` split in groups of `unit`: `groups / world` whole groups
/// each, or one group held by `world / groups` ranks each.
fn parts(len: usize, unit: usize, world: usize) -> Result<Vec<Range<usize>>, String> {
    if unit == 0 || len % unit != 0 {
        return Err(format!("are not a whole number of groups of {unit}"));
    }
    let groups = len / unit;
    if groups % world == 0 {
        let per = groups / world * unit;
        Ok((0..world).map(|r| r * per..(r + 1) * per).collect())
    } else if world % groups == 0 {
        let share = world / groups;
        Ok((0..world).map(|r| (r / share) * unit..(r / share + 1) * unit).collect())
    } else {
        Err(format!("do not split over {world} ranks, evenly or by replication"))
    }
}
