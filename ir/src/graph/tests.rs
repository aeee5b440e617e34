//! The graph's structure: topological order, inputs and outputs by role, rewiring, pins, and
//! the weight bytes a step reads.

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
    for (name, role) in [("v1", cache(1, KvPart::Value)), ("k1", cache(1, KvPart::Key)), ("k0", cache(0, KvPart::Key))]
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
