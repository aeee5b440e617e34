//! Printers: a stable, diff-friendly text form and Graphviz DOT.
//!
//! Values are numbered `%0, %1, …` in the graph's deterministic topological order, so two
//! dumps of the same graph are byte-identical and a change shows as a local diff.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use crate::graph::{Graph, NodeId};
use crate::op::Op;

fn numbering(graph: &Graph) -> (Vec<NodeId>, HashMap<NodeId, usize>) {
    // A graph with a cycle still prints (in id order) so that the verifier's error can be read
    // next to the dump.
    let order = graph.topo_order().unwrap_or_else(|| graph.node_ids().collect());
    let index = order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    (order, index)
}

/// `%12 l03.attn.q_proj`: how errors name a node.
pub fn node_label(graph: &Graph, id: NodeId) -> String {
    let (_, index) = numbering(graph);
    let n = graph.node(id);
    match &n.name {
        Some(name) => format!("%{} {name}", index[&id]),
        None => format!("%{}", index[&id]),
    }
}

/// The text form: one line per value, `%N = kind[attrs](operands) : dtype[shape]  # name`.
pub fn to_text(graph: &Graph, title: &str) -> String {
    let (order, index) = numbering(graph);
    let mut s = String::new();
    let _ = writeln!(s, "graph {title} {{");
    for (sym, v) in graph.pins() {
        let _ = writeln!(s, "  pin {} = {v}", sym.name());
    }
    for &id in &order {
        let n = graph.node(id);
        let ops: Vec<String> = graph.operands(id).iter().map(|x| format!("%{}", index[x])).collect();
        let attrs = n.op.attrs();
        let _ = write!(s, "  %{} = {}", index[&id], n.op.kind());
        if !attrs.is_empty() {
            let _ = write!(s, "[{attrs}]");
        }
        if !ops.is_empty() {
            let _ = write!(s, "({})", ops.join(", "));
        }
        let _ = write!(s, " : {}{}", n.dtype, n.shape);
        match (&n.name, &n.op) {
            (_, Op::Input { .. } | Op::Weight { .. }) | (None, _) => {}
            (Some(name), _) => {
                let _ = write!(s, "  # {name}");
            }
        }
        s.push('\n');
    }
    for (name, id) in graph.outputs() {
        let _ = writeln!(s, "  output {name:?} = %{}", index.get(id).copied().unwrap_or(usize::MAX));
    }
    s.push_str("}\n");
    s
}

/// Graphviz DOT: one box per op labelled with its kind and type; weights and constants dimmed.
pub fn to_dot(graph: &Graph, title: &str) -> String {
    let (order, index) = numbering(graph);
    let mut s = String::new();
    let _ = writeln!(s, "digraph {:?} {{", title);
    s.push_str("  node [shape=box, fontname=\"monospace\", fontsize=10];\n");
    for &id in &order {
        let n = graph.node(id);
        let mut label = format!("%{} {}", index[&id], n.op.kind());
        let attrs = n.op.attrs();
        if !attrs.is_empty() {
            let _ = write!(label, " {attrs}");
        }
        let _ = write!(label, "\\n{}{}", n.dtype, n.shape);
        let style = match n.op {
            Op::Weight { .. } | Op::Constant { .. } => ", style=filled, fillcolor=\"#eeeeee\"",
            Op::Input { .. } => ", style=filled, fillcolor=\"#d0e8ff\"",
            _ => "",
        };
        let _ = writeln!(s, "  n{} [label=\"{}\"{style}];", index[&id], label.replace('"', "\\\""));
    }
    for &id in &order {
        for x in graph.operands(id) {
            let _ = writeln!(s, "  n{} -> n{};", index[&x], index[&id]);
        }
    }
    for (name, id) in graph.outputs() {
        let _ = writeln!(s, "  out_{} [label={:?}, shape=ellipse];", sanitize(name), name);
        let _ = writeln!(s, "  n{} -> out_{};", index[id], sanitize(name));
    }
    s.push_str("}\n");
    s
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// Count of ops by kind, leaves included, sorted by kind.
pub fn op_histogram(graph: &Graph) -> BTreeMap<&'static str, usize> {
    let mut h = BTreeMap::new();
    for id in graph.node_ids() {
        *h.entry(graph.node(id).op.kind()).or_insert(0) += 1;
    }
    h
}
