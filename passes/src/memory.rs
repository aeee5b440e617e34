//! The activation memory planner: gives every value a step computes an offset in one arena,
//! so that a runtime allocates once per graph and kernels write to fixed addresses.
//!
//! Weights and constants are not planned (they live in their own storage or in the kernels),
//! nor is the KV cache, which outlives a step and is laid out by [`crate::kv`]. A view
//! (`Op::is_view`: reshape, slice) names bytes of its operand, so it shares the operand's
//! buffer. Buffers whose live intervals do not intersect may share bytes; an elementwise op
//! whose operand dies at that op writes its result over the operand ("in place"). Offsets are
//! chosen greedily, largest buffer first, into the best-fitting gap among the buffers live at
//! the same time: the classic interval-colouring heuristic of TFLite's and XLA's buffer assignment.

use std::collections::HashSet;

use smelt_ir::{Bindings, FusedOp, Graph, NodeId, Op};

use crate::kv::appends_to_cache;

/// Alignment of every buffer's offset and size: enough for any vector load and for the
/// 256-byte alignment CUDA gives `cudaMalloc`'d pointers, so an arena slice is as good as one.
pub const ARENA_ALIGN: usize = 256;

/// One value's place in the arena.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Buffer {
    /// The node (`NodeId::index()`) that defines the value.
    pub node: usize,
    /// The node's name, or `%N` with N its topological position as the printer numbers it.
    pub label: String,
    pub offset: usize,
    /// Size in bytes, rounded up to [`ARENA_ALIGN`].
    pub bytes: usize,
    /// Live interval in topological positions, inclusive: from the definition to the last use
    /// (through any view of it); graph outputs live to the last position.
    pub start: usize,
    pub end: usize,
    /// The node whose buffer this one takes over in place, at this value's definition.
    pub reuses: Option<usize>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct MemoryPlan {
    /// In topological order of the defining nodes.
    pub buffers: Vec<Buffer>,
    /// The arena's size: the largest end offset of any buffer.
    pub arena_bytes: usize,
    /// The sum of all buffer sizes: what one allocation per value would take.
    pub naive_bytes: usize,
}

impl MemoryPlan {
    /// Whether a size overflowed `usize` while planning: sizes saturate, and so their sum.
    pub fn overflowed(&self) -> bool {
        self.naive_bytes == usize::MAX
    }
}

/// Where a node's value is stored, as the planner sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Home {
    /// Not in the arena: weights and constants, and views of them.
    Elsewhere,
    /// In the KV cache: KV-cache inputs (by their role), the appends that extend them, views of those.
    Kv,
    /// A buffer of its own in the arena.
    Arena,
    /// The arena buffer of another node (a view's root operand).
    Alias(NodeId),
}

/// Plans the arena for `graph` run under `bindings`. The graph's pins override `bindings`
/// (a decode graph means T = 1 whatever the caller passes). A graph with a cycle, which the
/// verifier rejects, has no order to plan over and gets an empty plan.
pub fn plan_memory(graph: &Graph, bindings: &Bindings) -> MemoryPlan {
    let Some(order) = graph.topo_order() else {
        return MemoryPlan { buffers: Vec::new(), arena_bytes: 0, naive_bytes: 0 };
    };
    let planner = Planner::new(graph, pinned(graph, bindings), order);
    let live = planner.liveness();
    let groups = planner.groups(&live);
    let offsets = assign_offsets(&groups.spans);
    let buffers: Vec<Buffer> = groups
        .defined
        .iter()
        .map(|&id| Buffer {
            node: id.index(),
            label: graph.node(id).name.clone().unwrap_or_else(|| format!("%{}", planner.pos[id.index()])),
            offset: offsets[groups.group[id.index()]],
            bytes: align(planner.raw(id)),
            start: live.start[id.index()],
            end: live.end[id.index()],
            reuses: groups.reuses[id.index()].map(|r| r.index()),
        })
        .collect();
    let arena_bytes = buffers.iter().map(|b| b.offset.saturating_add(b.bytes)).max().unwrap_or(0);
    let naive_bytes = buffers.iter().fold(0usize, |acc, b| acc.saturating_add(b.bytes));
    MemoryPlan { buffers, arena_bytes, naive_bytes }
}

/// What planning one graph reads: its order, each node's position in it, and each node's home.
struct Planner<'g> {
    graph: &'g Graph,
    bindings: Bindings,
    order: Vec<NodeId>,
    /// Topological position, by node index.
    pos: Vec<usize>,
    homes: Vec<Home>,
}

/// Live intervals of the arena buffers, by node index (see [`Buffer::start`]).
struct Liveness {
    start: Vec<usize>,
    end: Vec<usize>,
    /// Whether the buffer holds a graph output (through any view of it).
    is_output: Vec<bool>,
}

/// The arena buffers in topological order (`defined`), each with the buffer it takes over in
/// place, if any, and its group: a hand-over chain, placed as one span.
struct Groups {
    reuses: Vec<Option<NodeId>>,
    group: Vec<usize>,
    spans: Vec<Span>,
    defined: Vec<NodeId>,
}

impl<'g> Planner<'g> {
    fn new(graph: &'g Graph, bindings: Bindings, order: Vec<NodeId>) -> Planner<'g> {
        let mut pos = vec![0; graph.node_bound()];
        for (i, &id) in order.iter().enumerate() {
            pos[id.index()] = i;
        }
        let homes = homes(graph, &order);
        Planner { graph, bindings, order, pos, homes }
    }

    /// The node whose arena buffer holds `x`'s value, if one does.
    fn root(&self, x: NodeId) -> Option<NodeId> {
        match self.homes[x.index()] {
            Home::Alias(r) => Some(r),
            Home::Arena => Some(x),
            Home::Elsewhere | Home::Kv => None,
        }
    }

    /// The size of `id`'s value in bytes, unaligned (saturating).
    fn raw(&self, id: NodeId) -> usize {
        let n = self.graph.node(id);
        n.shape.resolve(&self.bindings).iter().fold(n.dtype.size_bytes(), |acc, &d| acc.saturating_mul(d))
    }

    /// Liveness. Inputs are written by the host before the step starts, so they are live from
    /// position 0 whatever their place in the order.
    fn liveness(&self) -> Liveness {
        let (graph, pos, bound) = (self.graph, &self.pos, self.graph.node_bound());
        let last = self.order.len().saturating_sub(1);
        let mut start = vec![0; bound];
        let mut end = vec![0; bound];
        for &id in &self.order {
            if self.homes[id.index()] == Home::Arena {
                let is_input = matches!(graph.node(id).op, Op::Input { .. });
                start[id.index()] = if is_input { 0 } else { pos[id.index()] };
                end[id.index()] = pos[id.index()];
            }
            for x in graph.operands(id) {
                if let Some(r) = self.root(x) {
                    end[r.index()] = end[r.index()].max(pos[id.index()]);
                }
            }
        }
        let mut is_output = vec![false; bound];
        for (_, id) in graph.outputs() {
            if let Some(r) = self.root(*id) {
                end[r.index()] = last;
                is_output[r.index()] = true;
            }
        }
        Liveness { start, end, is_output }
    }

    /// Sizes, then in-place hand-overs; each hand-over chain becomes one group to place.
    fn groups(&self, live: &Liveness) -> Groups {
        let (graph, pos, bound) = (self.graph, &self.pos, self.graph.node_bound());
        let (start, end) = (&live.start, &live.end);
        let mut reuses: Vec<Option<NodeId>> = vec![None; bound];
        let mut group = vec![usize::MAX; bound];
        let mut spans: Vec<Span> = Vec::new();
        let mut defined: Vec<NodeId> = Vec::new();
        for &id in &self.order {
            if self.homes[id.index()] != Home::Arena {
                continue;
            }
            let bytes = align(self.raw(id));
            let (s, e) = (start[id.index()], end[id.index()]);
            let taken = in_place_operand(graph, id, &|x| self.root(x)).filter(|&r| {
                let at_last_use = end[r.index()] == pos[id.index()];
                let host_written = matches!(graph.node(r).op, Op::Input { .. });
                at_last_use && !live.is_output[r.index()] && !host_written && self.raw(r) == self.raw(id)
            });
            match taken {
                Some(r) => {
                    reuses[id.index()] = Some(r);
                    let g = group[r.index()];
                    group[id.index()] = g;
                    spans[g].end = spans[g].end.max(e);
                    spans[g].bytes = spans[g].bytes.max(bytes);
                }
                None => {
                    group[id.index()] = spans.len();
                    spans.push(Span { start: s, end: e, bytes });
                }
            }
            defined.push(id);
        }
        Groups { reuses, group, spans, defined }
    }
}

/// `bindings` with the graph's pinned symbols put in.
fn pinned(graph: &Graph, bindings: &Bindings) -> Bindings {
    let mut b = *bindings;
    for &(sym, v) in graph.pins() {
        match sym {
            smelt_ir::Sym::Batch => b.batch = v,
            smelt_ir::Sym::NewTokens => b.new_tokens = v,
            smelt_ir::Sym::CachedTokens => b.cached_tokens = v,
            // P+T is derived from the other two; a pin on it cannot be split between them.
            smelt_ir::Sym::TotalTokens => {}
        }
    }
    b
}

/// Decides every node's home, operands before users.
fn homes(graph: &Graph, order: &[NodeId]) -> Vec<Home> {
    // The appends that are (through views) a KV-cache output: the cache they build is the next
    // step's input, so it stays in the KV cache even if their cache operand were not one.
    let mut state_outputs: HashSet<NodeId> = HashSet::new();
    for (name, id) in graph.outputs() {
        if !graph.role(name).is_kv_cache() {
            continue;
        }
        let mut x = *id;
        while graph.node(x).op.is_view() {
            match graph.operands(x).first() {
                Some(&y) => x = y,
                None => break,
            }
        }
        state_outputs.insert(x);
    }
    let mut homes = vec![Home::Elsewhere; graph.node_bound()];
    for &id in order {
        let operands = graph.operands(id);
        let first = operands.first().map(|x| homes[x.index()]);
        let reads_cache = operands.iter().any(|x| homes[x.index()] == Home::Kv);
        homes[id.index()] = match &graph.node(id).op {
            Op::Input { name } if graph.role(name).is_kv_cache() => Home::Kv,
            Op::Input { .. } => Home::Arena,
            Op::Weight { .. } | Op::Constant { .. } => Home::Elsewhere,
            op if op.is_view() => match (first, operands.first()) {
                (Some(Home::Arena), Some(&x)) => Home::Alias(x),
                (Some(other), _) => other,
                (None, _) => Home::Elsewhere,
            },
            op if appends_to_cache(op) && (reads_cache || state_outputs.contains(&id)) => Home::Kv,
            _ => Home::Arena,
        };
    }
    homes
}

/// The arena buffer (root) that `id` could write over: its first operand's, when `id` is
/// elementwise with an output laid out exactly as that operand, so element `i` is read before
/// it is written and by nothing after. Another operand reading the same buffer through a
/// different view (a slice of it, say) would read clobbered elements: then not in place. The
/// caller checks liveness and sizes.
fn in_place_operand(graph: &Graph, id: NodeId, root: &impl Fn(NodeId) -> Option<NodeId>) -> Option<NodeId> {
    let node = graph.node(id);
    let operands = graph.operands(id);
    let &x = operands.first()?;
    let operand = graph.node(x);
    let elementwise = match &node.op {
        Op::Unary(_) => true,
        Op::Binary(_) | Op::Fused(FusedOp::Elementwise { .. }) => node.shape == operand.shape,
        Op::Cast { to } => to.size_bytes() == operand.dtype.size_bytes(),
        _ => false,
    };
    let r = root(x).filter(|_| elementwise)?;
    let aliased = operands[1..].iter().any(|&y| y != x && root(y) == Some(r));
    (!aliased).then_some(r)
}

fn align(bytes: usize) -> usize {
    bytes.div_ceil(ARENA_ALIGN).saturating_mul(ARENA_ALIGN)
}

/// A block to place: live from `start` to `end` inclusive, `bytes` long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
    bytes: usize,
}

impl Span {
    fn meets(&self, other: &Span) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

/// Greedy by size: largest first (ties: earliest start, then index, so plans are stable), each
/// into the smallest gap among the already placed spans it is live with, or above them all.
fn assign_offsets(spans: &[Span]) -> Vec<usize> {
    let mut by_size: Vec<usize> = (0..spans.len()).collect();
    by_size.sort_by_key(|&i| (std::cmp::Reverse(spans[i].bytes), spans[i].start, i));
    let mut offsets = vec![0usize; spans.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(spans.len());
    for i in by_size {
        let want = spans[i].bytes;
        let mut live: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| spans[j].meets(&spans[i]))
            .map(|&j| (offsets[j], offsets[j].saturating_add(spans[j].bytes)))
            .collect();
        live.sort();
        let (mut best, mut best_gap, mut top) = (None, usize::MAX, 0);
        for (lo, hi) in live {
            let gap = lo.saturating_sub(top);
            if gap >= want && gap < best_gap {
                (best, best_gap) = (Some(top), gap);
            }
            top = top.max(hi);
        }
        offsets[i] = best.unwrap_or(top);
        placed.push(i);
    }
    offsets
}

/// Checks that no two buffers live at the same time share a byte, except an in-place pair at
/// its hand-over point (the later one `reuses` the earlier, at the same offset, starting where
/// the earlier ends); also that offsets are aligned and every buffer fits in the arena.
/// Returns a description of the first violation.
pub fn check_plan(plan: &MemoryPlan) -> Result<(), String> {
    for b in &plan.buffers {
        if b.offset % ARENA_ALIGN != 0 {
            return Err(format!("{} (node {}): offset {} is not {ARENA_ALIGN}-aligned", b.label, b.node, b.offset));
        }
        if b.start > b.end {
            return Err(format!("{} (node {}): live interval {}..={} is empty", b.label, b.node, b.start, b.end));
        }
        if b.offset.checked_add(b.bytes).is_none_or(|e| e > plan.arena_bytes) {
            let what = format!("{}+{} bytes", b.offset, b.bytes);
            return Err(format!("{} (node {}): {what} ends past the arena of {}", b.label, b.node, plan.arena_bytes));
        }
        if let Some(r) = b.reuses {
            let Some(prev) = plan.buffers.iter().find(|p| p.node == r) else {
                return Err(format!("{} reuses node {r}, which has no buffer", b.label));
            };
            if prev.offset != b.offset || prev.end != b.start {
                let m = format!("at offset {}, live {}..={}", prev.offset, prev.start, prev.end);
                return Err(format!("{} (offset {}, from {}) reuses {} {m}", b.label, b.offset, b.start, prev.label));
            }
        }
    }
    for (i, a) in plan.buffers.iter().enumerate() {
        for b in &plan.buffers[i + 1..] {
            let live = a.start <= b.end && b.start <= a.end;
            // Empty buffers (a dim bound to 0) hold no bytes to share.
            let bytes = a.bytes > 0
                && b.bytes > 0
                && a.offset < b.offset.saturating_add(b.bytes)
                && b.offset < a.offset.saturating_add(a.bytes);
            let hand_over = |x: &Buffer, y: &Buffer| y.reuses == Some(x.node) && x.end == y.start;
            if live && bytes && !hand_over(a, b) && !hand_over(b, a) {
                return Err(format!(
                    "{} [{}..{}) live {}..={} overlaps {} [{}..{}) live {}..={}",
                    a.label,
                    a.offset,
                    a.offset + a.bytes,
                    a.start,
                    a.end,
                    b.label,
                    b.offset,
                    b.offset + b.bytes,
                    b.start,
                    b.end
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod check_tests;
#[cfg(test)]
mod tests;
