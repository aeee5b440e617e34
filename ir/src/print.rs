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

/// `%12 l03.attn.scores`: how errors name a node.
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
    to_text_with_notes(graph, title, &|_| None)
}

/// [`to_text`], with `note(node)`, where it says something, after the node's line's `#`
/// comment (`# l00.mlp.gate_up  => kernels/gate_up.cu`; a `#` of its own on an unnamed node).
pub fn to_text_with_notes(graph: &Graph, title: &str, note: &dyn Fn(NodeId) -> Option<String>) -> String {
    let (order, index) = numbering(graph);
    let mut s = String::new();
    let _ = writeln!(s, "graph {title} {{");
    for (sym, v) in graph.pins() {
        let _ = writeln!(s, "  pin {} = {v}", sym.name());
    }
    if let Some(r) = graph.rank() {
        let _ = writeln!(s, "  rank {} of {}", r.rank, r.world);
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
        let named = match (&n.name, &n.op) {
            (_, Op::Input { .. } | Op::Weight { .. }) | (None, _) => false,
            (Some(name), _) => {
                let _ = write!(s, "  # {name}");
                true
            }
        };
        if let Some(note) = note(id) {
            let _ = write!(s, "{}{note}", if named { "  " } else { "  # " });
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
        let _ = writeln!(s, "  n{} -> out_{};", index.get(id).copied().unwrap_or(usize::MAX), sanitize(name));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{Bound, ReduceOp, UnaryOp};
    use crate::shape;
    use crate::shape::Sym;
    use crate::{Builder, DType};

    /// One layer's worth of the model's shapes: RMSNorm, a projection, a RoPE-style rotate-half.
    fn layer() -> Graph {
        let mut b = Builder::new();
        let x = b.input("x", DType::BF16, shape![Sym::NewTokens, 8]);
        let y = b
            .scoped("l00", |b| {
                let w = b.weight("l00.norm.weight", DType::BF16, shape![8])?;
                let x32 = b.cast("to_f32", x, DType::F32)?;
                let sq = b.unary("square", UnaryOp::Square, x32)?;
                let var = b.reduce("mean", ReduceOp::Mean, sq, 1)?;
                let eps = b.scalar("eps", DType::F32, 1e-6)?;
                let var = b.add("add_eps", var, eps)?;
                let inv = b.unary("rsqrt", UnaryOp::Rsqrt, var)?;
                let y = b.mul("normalize", x32, inv)?;
                let y = b.cast("to_bf16", y, DType::BF16)?;
                let h = b.mul("scale", w, y)?;
                let wq = b.weight("l00.proj.weight", DType::BF16, shape![8, 8])?;
                let q = b.matmul("proj", h, wq)?;
                let q = b.reshape("heads", q, shape![Sym::NewTokens, 2, 4])?;
                let x1 = b.slice("x1", q, 2, Bound::FromStart(0), Bound::FromStart(2))?;
                let x2 = b.slice("x2", q, 2, Bound::FromStart(2), Bound::FromEnd(0))?;
                let neg = b.unary("neg_x2", UnaryOp::Neg, x2)?;
                b.concat("rotate_half", &[neg, x1], 2)
            })
            .unwrap();
        b.output("q", y).unwrap();
        b.finish().unwrap()
    }

    #[test]
    fn text_is_deterministic() {
        let (a, b) = (to_text(&layer(), "layer"), to_text(&layer(), "layer"));
        assert_eq!(a, b);
        assert_eq!(to_dot(&layer(), "layer"), to_dot(&layer(), "layer"));
        // Every value line carries a dtype and a shape.
        for line in a.lines().filter(|l| l.trim_start().starts_with('%')) {
            assert!(line.contains(" : bf16[") || line.contains(" : f32["), "{line}");
        }
    }

    #[test]
    fn text_snapshot() {
        insta::assert_snapshot!(to_text(&layer(), "layer"));
    }

    #[test]
    fn pins_and_constants_print() {
        let mut b = Builder::new();
        b.pin(Sym::NewTokens, 1);
        let x = b.input("x", DType::F32, shape![1, 4]);
        let c = b.constant("inv_freq", DType::F32, shape![4], vec![1.0, 0.5, 0.25, 0.125]).unwrap();
        let y = b.mul("freqs", x, c).unwrap();
        b.output("y", y).unwrap();
        let text = to_text(&b.finish().unwrap(), "decode");
        let want = "graph decode {\n  pin T = 1\n  %0 = input[\"x\"] : f32[1,4]\n  \
                    %1 = constant[[1.0, 0.5, 0.25, … 4 values]] : f32[4]  # inv_freq\n  \
                    %2 = mul(%0, %1) : f32[1,4]  # freqs\n  output \"y\" = %2\n}\n";
        assert_eq!(text, want);
    }

    #[test]
    fn notes_follow_a_line_s_comment_and_change_nothing_else() {
        let mut b = Builder::new();
        let x = b.input("x", DType::F32, shape![1, 4]);
        let y = b.unary("y", UnaryOp::Neg, x).unwrap();
        b.output("y", y).unwrap();
        let mut g = b.finish().unwrap();
        let text = to_text_with_notes(&g, "g", &|id| (id == y).then(|| "=> kernels/y.cu".to_string()));
        assert_eq!(text, to_text(&g, "g").replace("  # y\n", "  # y  => kernels/y.cu\n"));
        assert!(text.contains("%1 = neg(%0) : f32[1,4]  # y  => kernels/y.cu\n"), "{text}");
        // An unnamed node gets a comment of its own.
        g.node_mut(y).name = None;
        let text = to_text_with_notes(&g, "g", &|id| (id == y).then(|| "=> kernels/y.cu".to_string()));
        assert!(text.contains("%1 = neg(%0) : f32[1,4]  # => kernels/y.cu\n"), "{text}");
        assert_eq!(to_text_with_notes(&layer(), "layer", &|_| None), to_text(&layer(), "layer"));
    }

    #[test]
    fn dot_has_one_edge_per_operand() {
        let g = layer();
        let dot = to_dot(&g, "layer");
        assert!(dot.starts_with("digraph \"layer\" {\n"), "{dot}");
        assert!(dot.ends_with("}\n"));
        assert_eq!(dot.matches('{').count(), dot.matches('}').count());
        let operands: usize = g.node_ids().map(|id| g.operands(id).len()).sum();
        let edges: Vec<&str> = dot.lines().filter(|l| l.trim_start().starts_with('n') && l.contains(" -> n")).collect();
        assert_eq!(edges.len(), operands);
        assert_eq!(dot.matches(" -> out_q;").count(), 1);
        // The concat's two operands: %16 neg_x2 and %14 x1 (see the snapshot).
        assert!(edges.contains(&"  n16 -> n17;") && edges.contains(&"  n14 -> n17;"), "{edges:?}");
        for l in dot.lines().filter(|l| l.contains("[label=")) {
            assert_eq!((l.matches('"').count() - l.matches("\\\"").count()) % 2, 0, "unbalanced quotes: {l}");
        }
    }

    #[test]
    fn printers_survive_broken_graphs() {
        let mut g = layer();
        let out = g.outputs()[0].1;
        g.remove_node(out);
        assert!(to_text(&g, "broken").contains("output \"q\" = %"));
        let dot = to_dot(&g, "broken");
        assert!(dot.starts_with("digraph"));
    }

    #[test]
    fn labels_and_histogram() {
        let g = layer();
        let rsqrt = g.node_ids().find(|&id| g.node(id).name.as_deref() == Some("l00.rsqrt")).unwrap();
        assert_eq!(node_label(&g, rsqrt), "%6 l00.rsqrt");
        let h = op_histogram(&g);
        assert_eq!((h["weight"], h["slice"], h["cast"], h["mul"]), (2, 2, 2, 2));
        assert_eq!(h.values().sum::<usize>(), g.node_count());
    }
}
