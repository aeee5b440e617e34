//! The verifier: re-infers every node's type from its operands and checks it against the
//! type the node records, so a pass that rewires a graph wrongly is caught by name.

use std::collections::HashSet;

use crate::error::IrError;
use crate::graph::{Graph, NodeId};
use crate::infer::infer;
use crate::op::Op;
use crate::print::node_label;
use crate::role::Role;
use crate::shape::{Dim, Sym};

pub fn verify(graph: &Graph) -> Result<(), IrError> {
    let order = graph.topo_order().ok_or(IrError::Cycle)?;
    let mut input_names = HashSet::new();
    for &id in &order {
        let node = graph.node(id);
        let err = |message: String| IrError::Node { node: node_label(graph, id), message };
        let operands = graph.operands(id);
        if let Some(n) = node.op.arity() {
            if operands.len() != n {
                return Err(err(format!("{} takes {n} operands, has {}", node.op.kind(), operands.len())));
            }
        }
        if let Op::Input { name } = &node.op {
            if !input_names.insert(name.clone()) {
                return Err(IrError::Duplicate { what: "input", name: name.clone() });
            }
        }
        if matches!(node.op, Op::KvAppend) {
            if let Some(&Dim::Fixed(n)) = operands.get(1).and_then(|&x| graph.node(x).shape.dims().first()) {
                if graph.pinned(Sym::NewTokens) != Some(n) {
                    return Err(err(format!("appends {n} fixed rows but the graph does not pin T={n}")));
                }
            }
        }
        if let Op::AllReduce { world } | Op::AllGather { world, .. } = node.op {
            if world != graph.world() {
                return Err(err(format!("a collective over {world} ranks in a graph of {}", graph.world())));
            }
        }
        if let Op::Constant { values } = &node.op {
            if node.shape.fixed_volume() != Some(values.len()) {
                return Err(err(format!("{} values for shape {}", values.len(), node.shape)));
            }
        }
        let tys: Vec<_> = operands.iter().map(|&x| (graph.node(x).dtype, &graph.node(x).shape)).collect();
        if let Some((dtype, shape)) = infer(&node.op, &tys).map_err(err)? {
            if dtype != node.dtype || shape != node.shape {
                return Err(err(format!("records {}{} but its operands give {dtype}{shape}", node.dtype, node.shape)));
            }
        }
    }
    for (name, id) in graph.outputs() {
        if !graph.contains(*id) {
            return Err(IrError::DanglingOutput { name: name.clone() });
        }
    }
    verify_roles(graph, &input_names)
}

/// Every role belongs to an input or output that exists, and on the right side: a KV cache is
/// both (read, then written back under its name); no role but `Other` is played twice.
fn verify_roles(graph: &Graph, inputs: &HashSet<String>) -> Result<(), IrError> {
    let mut seen = HashSet::new();
    for (name, role) in graph.roles() {
        let err = |message: &str| IrError::Role { name: name.to_string(), role, message: message.to_string() };
        let (is_input, is_output) = (inputs.contains(name), graph.outputs().iter().any(|(n, _)| n == name));
        let ok = match role {
            Role::TokenIds | Role::Positions => is_input,
            Role::Logits | Role::NextToken => is_output,
            Role::KvCache { .. } => is_input && is_output,
            Role::Other => true,
        };
        if !ok {
            let message = match role {
                Role::KvCache { .. } => "but is not both an input and an output",
                Role::TokenIds | Role::Positions => "but is not an input",
                _ => "but is not an output",
            };
            return Err(err(message));
        }
        if !seen.insert(role) {
            return Err(err("which another name plays too"));
        }
    }
    Ok(())
}

/// Nodes reachable backwards from the outputs.
pub fn live_nodes(graph: &Graph) -> HashSet<NodeId> {
    let mut live = HashSet::new();
    let mut stack: Vec<NodeId> = graph.outputs().iter().map(|(_, id)| *id).collect();
    while let Some(id) = stack.pop() {
        if live.insert(id) {
            stack.extend(graph.operands(id));
        }
    }
    live
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::graph::Node;
    use crate::op::UnaryOp;
    use crate::shape;
    use crate::{Builder, DType, Shape};

    /// `%0 x: f32[T, 4]`, `%1 w: f32[3, 4]`, `%2 proj = matmul`, `%3 act = silu`, output "y".
    fn graph() -> (Graph, [NodeId; 4]) {
        let mut b = Builder::new();
        let x = b.input("x", DType::F32, shape![Sym::NewTokens, 4]);
        let w = b.weight("w", DType::F32, shape![3, 4]).unwrap();
        let proj = b.matmul("proj", x, w).unwrap();
        let act = b.unary("act", UnaryOp::Silu, proj).unwrap();
        b.output("y", act).unwrap();
        (b.finish().unwrap(), [x, w, proj, act])
    }

    #[track_caller]
    fn node_err(g: &Graph) -> (String, String) {
        match verify(g) {
            Err(IrError::Node { node, message }) => (node, message),
            other => panic!("expected a node error, got {other:?}"),
        }
    }

    #[test]
    fn corrupted_types_are_caught_by_name() {
        let (g, [x, w, proj, act]) = graph();
        assert_eq!(verify(&g), Ok(()));

        let mut bad = g.clone();
        bad.node_mut(act).shape = shape![Sym::NewTokens, 4];
        let (node, message) = node_err(&bad);
        assert_eq!(node, "%3 act");
        assert!(message.contains("records f32[T,4]") && message.contains("f32[T,3]"), "{message}");

        let mut bad = g.clone();
        bad.node_mut(proj).dtype = DType::BF16;
        assert_eq!(node_err(&bad).0, "%2 proj");

        // A leaf's type is taken as given; its user no longer checks.
        let mut bad = g.clone();
        bad.node_mut(w).shape = shape![3, 5];
        let (node, message) = node_err(&bad);
        assert_eq!(node, "%2 proj");
        assert!(message.contains("contraction"), "{message}");

        let mut bad = g.clone();
        bad.node_mut(x).dtype = DType::F16;
        assert_eq!(node_err(&bad).0, "%2 proj");

        let mut bad = g;
        bad.node_mut(act).op = Op::Constant { values: Arc::new(vec![1.0]) };
        assert!(node_err(&bad).1.contains("takes 0 operands"));
    }

    #[test]
    fn cycles_are_rejected() {
        let (mut g, [_, _, proj, act]) = graph();
        // neg = neg(act); then every use of proj (act's operand) becomes neg: act <-> neg.
        let node = Node::new(Op::Unary(UnaryOp::Neg), DType::F32, shape![Sym::NewTokens, 3]);
        let neg = g.add_node(node, &[act]);
        g.replace_all_uses(proj, neg);
        assert_eq!(g.operands(act), vec![neg]);
        assert_eq!(g.topo_order(), None);
        assert_eq!(verify(&g), Err(IrError::Cycle));
        // A self-loop: replacing x's uses by a user of x.
        let (mut g, [x, _, proj, _]) = graph();
        g.replace_all_uses(x, proj);
        assert_eq!(verify(&g), Err(IrError::Cycle));
    }

    #[test]
    fn dangling_output_after_remove() {
        let (mut g, [_, _, _, act]) = graph();
        assert!(g.remove_node(act).is_some());
        assert_eq!(verify(&g), Err(IrError::DanglingOutput { name: "y".into() }));
    }

    #[test]
    fn fixed_kv_append_needs_a_pin() {
        for pin in [None, Some(1), Some(2)] {
            let mut b = Builder::new();
            if let Some(v) = pin {
                b.pin(Sym::NewTokens, v);
            }
            let cache = b.input("cache", DType::F32, shape![Sym::CachedTokens, 2, 4]);
            let new = b.input("new", DType::F32, shape![1, 2, 4]);
            let kv = b.op("append", Op::KvAppend, &[cache, new]).unwrap();
            b.output("kv", kv).unwrap();
            match (pin, b.finish()) {
                (Some(1), r) => assert!(r.is_ok(), "{r:?}"),
                (_, Err(IrError::Node { node, message })) => {
                    assert_eq!(node, "%2 append");
                    assert!(message.contains("pin T=1"), "{message}");
                }
                (_, r) => panic!("pin {pin:?}: expected an error, got {r:?}"),
            }
        }
    }

    #[test]
    fn duplicate_inputs_and_bad_constants() {
        let mut b = Builder::new();
        let a = b.input("x", DType::F32, shape![2]);
        let c = b.input("x", DType::F32, shape![2]);
        let y = b.add("y", a, c).unwrap();
        b.output("y", y).unwrap();
        assert_eq!(b.finish().unwrap_err(), IrError::Duplicate { what: "input", name: "x".into() });

        let mut b = Builder::new();
        let k = b.constant("k", DType::F32, shape![2], vec![1.0, 2.0]).unwrap();
        b.output("k", k).unwrap();
        let mut g = b.finish().unwrap();
        g.node_mut(k).shape = Shape::scalar();
        let (node, message) = node_err(&g);
        assert_eq!(node, "%0 k");
        assert!(message.contains("2 values"), "{message}");
    }

    #[test]
    fn roles_sit_on_the_side_they_belong_to() {
        use crate::role::KvPart;
        let key = Role::KvCache { layer: 0, part: KvPart::Key };
        // (x's role, y's role, whether x is also written back as an output, the error's name
        // and message; None: valid)
        let cases = [
            (Role::TokenIds, Role::Logits, false, None),
            (key, Role::Other, true, None),
            (Role::Logits, Role::Other, false, Some(("x", "is not an output"))),
            (Role::Other, Role::TokenIds, false, Some(("y", "is not an input"))),
            (key, Role::Other, false, Some(("x", "not both an input and an output"))),
            (Role::Positions, Role::Positions, false, Some(("y", "is not an input"))),
        ];
        for (x_role, y_role, written_back, want) in cases {
            let mut b = Builder::new();
            let x = b.input_as("x", DType::F32, shape![Sym::CachedTokens, 4], x_role);
            let y = b.unary("neg", UnaryOp::Neg, x).unwrap();
            b.output_as("y", y, y_role).unwrap();
            if written_back {
                b.output("x", y).unwrap();
            }
            match (b.finish(), want) {
                (Ok(g), None) => assert_eq!((g.role("x"), g.role("y")), (x_role, y_role)),
                (Err(IrError::Role { name, message, .. }), Some((n, m))) => {
                    assert_eq!(name, n);
                    assert!(message.contains(m), "{message}");
                }
                (r, want) => panic!("{x_role:?} / {y_role:?}: {r:?}, wanted {want:?}"),
            }
        }
        // One role, two names.
        let mut b = Builder::new();
        let x = b.input_as("x", DType::F32, shape![4], Role::TokenIds);
        let z = b.input_as("z", DType::F32, shape![4], Role::TokenIds);
        let y = b.add("y", x, z).unwrap();
        b.output("y", y).unwrap();
        let err = b.finish().unwrap_err().to_string();
        assert!(err.contains("token ids, which another name plays too"), "{err}");
    }

    #[test]
    fn live_nodes_follow_outputs() {
        let (mut g, [x, w, proj, act]) = graph();
        let dead = g.add_node(g.node(act).clone(), &[proj]);
        let live = live_nodes(&g);
        assert_eq!(live, HashSet::from([x, w, proj, act]));
        assert!(!live.contains(&dead));
    }
}
