//! The planner on hand-built graphs: in-place reuse, aliasing views, liveness, outputs, the KV
//! cache, pins and sizes; and the helpers the memory tests share, among them a simulator of
//! the planned schedule.

use std::collections::HashMap;

use smelt_ir::{shape, Bindings, Bound, Builder, DType, Graph, KvPart, Node, NodeId, Op, ReduceOp, Role, Sym, UnaryOp};

use super::*;

pub(super) const T: Sym = Sym::NewTokens;
const P: Sym = Sym::CachedTokens;

pub(super) fn bind(t: usize) -> Bindings {
    Bindings { batch: 1, new_tokens: t, cached_tokens: 5 }
}

/// The buffer of the node named `name`, if it has one.
fn buf<'a>(plan: &'a MemoryPlan, name: &str) -> Option<&'a Buffer> {
    plan.buffers.iter().find(|b| b.label == name)
}

#[track_caller]
fn get<'a>(plan: &'a MemoryPlan, name: &str) -> &'a Buffer {
    buf(plan, name).unwrap_or_else(|| panic!("no buffer for {name} in {plan:#?}"))
}

fn disjoint(a: &Buffer, b: &Buffer) -> bool {
    a.offset + a.bytes <= b.offset || b.offset + b.bytes <= a.offset
}

/// A builder with the input `x: f32[T, 64]`.
pub(super) fn start() -> (Builder, NodeId) {
    let mut b = Builder::new();
    let x = b.input("x", DType::F32, shape![T, 64]);
    (b, x)
}

/// `g`'s plan at T = `t`, checked by `check_plan` and by [`simulate`].
#[track_caller]
pub(super) fn planned(g: &Graph, t: usize) -> MemoryPlan {
    let plan = plan_memory(g, &bind(t));
    check_plan(&plan).unwrap();
    simulate(g, &plan).unwrap();
    plan
}

/// Runs the plan's schedule on an arena of 256-byte slots, each owned by the last value
/// written there, and checks every operand and output still owns its bytes when read: an
/// oracle independent of `check_plan`'s pairwise rule.
pub(super) fn simulate(graph: &Graph, plan: &MemoryPlan) -> Result<(), String> {
    let by_node: HashMap<usize, &Buffer> = plan.buffers.iter().map(|b| (b.node, b)).collect();
    let root = |mut x: NodeId| {
        while graph.node(x).op.is_view() {
            x = graph.operands(x)[0];
        }
        x
    };
    let mut owner: Vec<Option<usize>> = vec![None; plan.arena_bytes / ARENA_ALIGN];
    let slots = |b: &Buffer| b.offset / ARENA_ALIGN..(b.offset + b.bytes) / ARENA_ALIGN;
    let check = |owner: &[Option<usize>], x: NodeId, when: &str| -> Result<(), String> {
        match by_node.get(&root(x).index()) {
            Some(b) if owner[slots(b)].iter().any(|o| *o != Some(b.node)) => {
                Err(format!("{} was overwritten before {when}", b.label))
            }
            _ => Ok(()),
        }
    };
    let order = graph.topo_order().ok_or("cycle")?;
    for b in plan.buffers.iter().filter(|b| matches!(graph.node(NodeId::new(b.node)).op, Op::Input { .. })) {
        owner[slots(b)].fill(Some(b.node));
    }
    for id in order {
        for x in graph.operands(id) {
            check(&owner, x, &format!("its use by {id:?}"))?;
        }
        if let Some(b) = by_node.get(&id.index()).filter(|_| !graph.node(id).op.is_leaf()) {
            owner[slots(b)].fill(Some(b.node));
        }
    }
    for (name, id) in graph.outputs() {
        check(&owner, *id, &format!("the end (output {name})"))?;
    }
    Ok(())
}

#[test]
fn elementwise_chain_reuses_one_buffer_in_place() {
    let (mut b, x) = start();
    let a = b.unary("a", UnaryOp::Exp, x).unwrap();
    let n = b.unary("b", UnaryOp::Neg, a).unwrap();
    let c = b.unary("c", UnaryOp::Sigmoid, n).unwrap();
    let d = b.cast("d", c, DType::F16).unwrap();
    b.output("d", d).unwrap();
    let g = b.finish().unwrap();
    let plan = planned(&g, 4);
    let (x, a, n, c, d) = (get(&plan, "x"), get(&plan, "a"), get(&plan, "b"), get(&plan, "c"), get(&plan, "d"));
    assert_eq!(x.reuses, None);
    assert_eq!(a.reuses, None, "inputs are the host's: never overwritten");
    assert_eq!((n.reuses, c.reuses), (Some(a.node), Some(n.node)));
    assert_eq!((a.offset, n.offset), (c.offset, c.offset));
    assert_eq!(d.reuses, None, "a cast to a narrower type is not in place");
    assert_eq!((x.bytes, d.bytes), (4 * 64 * 4, 4 * 64 * 2));
    // x and the chain overlap at `a`; d fits below the chain's buffer once x is dead.
    assert_eq!(plan.arena_bytes, 2 * 1024);
    assert_eq!(plan.naive_bytes, 4 * 1024 + 512);
}

#[test]
fn values_live_together_do_not_overlap() {
    let (mut b, x) = start();
    let a = b.unary("a", UnaryOp::Exp, x).unwrap();
    let n = b.unary("b", UnaryOp::Neg, x).unwrap();
    let c = b.add("c", a, n).unwrap();
    b.output("c", c).unwrap();
    let g = b.finish().unwrap();
    let plan = planned(&g, 3);
    let (x, a, n, c) = (get(&plan, "x"), get(&plan, "a"), get(&plan, "b"), get(&plan, "c"));
    assert!(disjoint(a, n) && disjoint(x, a) && disjoint(x, n));
    assert_eq!(c.reuses, Some(a.node), "c takes over its first operand, dead at c");
    assert_eq!(plan.arena_bytes, 3 * 768, "x, a and b are live at b; 3 x 64 f32 each");
}

#[test]
fn reshape_aliases_its_operand() {
    let (mut b, x) = start();
    let a = b.unary("a", UnaryOp::Exp, x).unwrap();
    let r = b.reshape("r", a, shape![T, 8, 8]).unwrap();
    let s = b.unary("s", UnaryOp::Sin, x).unwrap();
    let u = b.unary("u", UnaryOp::Neg, s).unwrap();
    let d = b.reduce("d", ReduceOp::Sum, r, 2).unwrap();
    b.output("u", u).unwrap();
    b.output("d", d).unwrap();
    let g = b.finish().unwrap();
    let plan = planned(&g, 2);
    assert!(buf(&plan, "r").is_none(), "a reshape has no buffer of its own");
    let order = g.topo_order().unwrap();
    let pos = |id: NodeId| order.iter().position(|&o| o == id).unwrap();
    let a = get(&plan, "a");
    assert_eq!(a.end, pos(d), "the reshape's use keeps its operand alive");
    assert!(disjoint(a, get(&plan, "s")) && disjoint(a, get(&plan, "u")));
}

#[test]
fn a_reshaped_value_still_used_is_not_overwritten() {
    // `neg(a)` is a's last direct use, but the reshape of `a` is read afterwards.
    let (mut b, x) = start();
    let a = b.unary("a", UnaryOp::Exp, x).unwrap();
    let r = b.reshape("r", a, shape![T, 8, 8]).unwrap();
    let n = b.unary("n", UnaryOp::Neg, a).unwrap();
    let d = b.reduce("d", ReduceOp::Sum, r, 2).unwrap();
    b.output("n", n).unwrap();
    b.output("d", d).unwrap();
    let g = b.finish().unwrap();
    let plan = planned(&g, 2);
    assert_eq!(get(&plan, "n").reuses, None);
    // Through the view, the last use does go in place.
    let (mut b, x) = start();
    let a = b.unary("a", UnaryOp::Exp, x).unwrap();
    let r = b.reshape("r", a, shape![T, 8, 8]).unwrap();
    let n = b.unary("n", UnaryOp::Neg, r).unwrap();
    b.output("n", n).unwrap();
    let g = b.finish().unwrap();
    let plan = planned(&g, 2);
    assert_eq!(get(&plan, "n").reuses, Some(get(&plan, "a").node));
}

#[test]
fn a_value_used_by_the_last_op_stays_live() {
    let (mut b, x) = start();
    let early = b.unary("early", UnaryOp::Exp, x).unwrap();
    let mut z = b.unary("z0", UnaryOp::Sin, x).unwrap();
    for i in 1..6 {
        z = b.unary(&format!("z{i}"), UnaryOp::Cos, z).unwrap();
        z = b.reduce(&format!("r{i}"), ReduceOp::Max, z, 1).unwrap();
        z = b.add(&format!("b{i}"), x, z).unwrap();
    }
    let last = b.add("last", z, early).unwrap();
    b.output("y", last).unwrap();
    let g = b.finish().unwrap();
    let plan = planned(&g, 3);
    let early = get(&plan, "early");
    assert_eq!(early.end, g.node_count() - 1);
    assert_eq!(get(&plan, "x").end, g.node_count() - 2, "x's last use is the last b");
    for other in plan.buffers.iter().filter(|o| o.node != early.node && o.label != "last") {
        assert!(disjoint(early, other), "{} overlaps early", other.label);
    }
}

#[test]
fn outputs_live_to_the_end_and_are_never_overwritten() {
    let (mut b, x) = start();
    let a = b.unary("a", UnaryOp::Exp, x).unwrap();
    let n = b.unary("n", UnaryOp::Neg, a).unwrap();
    let m = b.unary("m", UnaryOp::Neg, n).unwrap();
    b.output("a", a).unwrap();
    b.output("m", m).unwrap();
    let g = b.finish().unwrap();
    let plan = planned(&g, 1);
    assert_eq!(get(&plan, "a").end, 3);
    assert_eq!(get(&plan, "n").reuses, None);
    assert_eq!(get(&plan, "m").reuses, Some(get(&plan, "n").node));
}

#[test]
fn an_op_reading_its_operand_through_another_view_is_not_in_place() {
    // y[t, i] = x[t, i] * x[t, 0]: written over x, y[t, 1] would read a clobbered x[t, 0].
    let (mut b, x) = start();
    let e = b.unary("e", UnaryOp::Exp, x).unwrap();
    let first = b.slice("first", e, 1, Bound::FromStart(0), Bound::FromStart(1)).unwrap();
    let y = b.mul("y", e, first).unwrap();
    let whole = b.slice("whole", y, 1, Bound::FromStart(0), Bound::FromEnd(0)).unwrap();
    let z = b.mul("z", whole, whole).unwrap();
    b.output("z", z).unwrap();
    let g = b.finish().unwrap();
    let plan = planned(&g, 2);
    assert!(buf(&plan, "first").is_none() && buf(&plan, "whole").is_none(), "slices are views");
    assert_eq!(get(&plan, "y").reuses, None);
    assert_eq!(get(&plan, "z").reuses, Some(get(&plan, "y").node), "one view read twice is fine");
}

#[test]
fn binary_broadcasting_its_first_operand_is_not_in_place() {
    let (mut b, x) = start();
    let e = b.unary("e", UnaryOp::Exp, x).unwrap();
    let r = b.reduce("r", ReduceOp::Sum, e, 1).unwrap();
    let y = b.add("y", r, e).unwrap();
    b.output("y", y).unwrap();
    let g = b.finish().unwrap();
    let plan = planned(&g, 2);
    assert_eq!(get(&plan, "y").reuses, None);
    assert_eq!(get(&plan, "r").bytes, ARENA_ALIGN, "2 f32s round up to one alignment unit");
}

const KEY_CACHE: Role = Role::KvCache { layer: 0, part: KvPart::Key };

/// One attention layer's cache handling: `cache` in and out, a computed `k` appended.
fn kv_graph() -> Graph {
    let mut b = Builder::new();
    let ids = b.input("token_ids", DType::I32, shape![T]);
    let table = b.weight("embed", DType::BF16, shape![100, 8]).unwrap();
    let h = b.gather("h", table, ids).unwrap();
    let w = b.weight("w", DType::BF16, shape![8, 8]).unwrap();
    let k = b.matmul("k_proj", h, w).unwrap();
    let k = b.reshape("k_heads", k, shape![T, 2, 4]).unwrap();
    let cache = b.input_as("cache", DType::BF16, shape![P, 2, 4], KEY_CACHE);
    let all = b.op("append", Op::KvAppend, &[cache, k]).unwrap();
    let o = b.op("attention", Op::Attention { scale: 0.5 }, &[k, all, all]).unwrap();
    b.output("cache", all).unwrap();
    b.output("o", o).unwrap();
    b.finish().unwrap()
}

#[test]
fn kv_state_weights_and_constants_are_not_in_the_arena() {
    let plan = planned(&kv_graph(), 3);
    let labels: Vec<&str> = plan.buffers.iter().map(|b| b.label.as_str()).collect();
    assert_eq!(labels, ["token_ids", "h", "k_proj", "attention"]);
    assert_eq!(get(&plan, "k_proj").end, 8, "k is read by attention, the last op, through its reshape");
}

#[test]
fn pins_override_bindings_and_sizes_round_up() {
    let mut b = Builder::new();
    b.pin(T, 1);
    let x = b.input("x", DType::F32, shape![T, 64]);
    let y = b.input("y", DType::F32, shape![T, 3]);
    let e = b.unary("e", UnaryOp::Exp, x).unwrap();
    b.output("e", e).unwrap();
    // Not "y": an input and an output of one name are state, which lives in the KV cache.
    b.output("y_out", y).unwrap();
    let g = b.finish().unwrap();
    let plan = planned(&g, 7);
    assert_eq!(get(&plan, "x").bytes, 256, "T is pinned to 1: 64 f32s");
    assert_eq!(get(&plan, "y").bytes, 256, "12 bytes round up");
    assert_eq!(plan.arena_bytes, 3 * 256);
}

#[test]
fn a_cycle_gets_an_empty_plan() {
    let mut g = Graph::new();
    let node = |op| Node::new(op, DType::F32, shape![2]);
    let x = g.add_node(node(Op::Input { name: "x".into() }), &[]);
    let a = g.add_node(node(Op::Unary(UnaryOp::Neg)), &[x]);
    let c = g.add_node(node(Op::Unary(UnaryOp::Neg)), &[a]);
    g.replace_all_uses(x, c);
    let plan = plan_memory(&g, &bind(1));
    assert!(plan.buffers.is_empty() && plan.arena_bytes == 0);
}

#[test]
fn a_cast_to_a_type_of_the_same_width_is_in_place() {
    let (mut b, x) = start();
    let a = b.unary("a", UnaryOp::Exp, x).unwrap();
    let c = b.cast("c", a, DType::I32).unwrap();
    b.output("c", c).unwrap();
    let plan = planned(&b.finish().unwrap(), 4);
    assert_eq!(get(&plan, "c").reuses, Some(get(&plan, "a").node), "f32 to i32: 4 bytes each");
}

/// Where a KV append lives: in the KV cache when it extends a state cache or is one; in the
/// arena when it extends a value the step computed and is no state.
#[test]
fn an_append_lives_in_the_kv_cache_only_when_it_extends_or_is_a_state() {
    let appended = |state_input: bool, state_output: bool| {
        let mut b = Builder::new();
        let new = b.input("new", DType::F32, shape![T, 2, 4]);
        let cache = b.input_as("c", DType::F32, shape![P, 2, 4], KEY_CACHE);
        // A cache operand computed by the step (not the state input itself) when asked.
        let base = if state_input { cache } else { b.unary("copy", UnaryOp::Neg, cache).unwrap() };
        let all = b.op("append", Op::KvAppend, &[base, new]).unwrap();
        let y = b.reduce("sum", ReduceOp::Sum, all, 0).unwrap();
        b.output("y", y).unwrap();
        // `c`, a KV cache, is written back: the append, or the input unchanged.
        b.output("c", if state_output { all } else { cache }).unwrap();
        let plan = plan_memory(&b.finish().unwrap(), &bind(3));
        check_plan(&plan).unwrap();
        buf(&plan, "append").is_some()
    };
    assert!(!appended(true, true), "extends the state cache and is the state: KV");
    assert!(!appended(true, false), "extends the state cache, read by the step only: KV");
    assert!(!appended(false, true), "is the state output: KV");
    assert!(appended(false, false), "neither: an arena buffer");
}

/// Best fit breaks a tie between equal gaps by the lower offset, so plans are reproducible.
#[test]
fn equal_gaps_go_to_the_lower_offset() {
    let span = |start, end| Span { start, end, bytes: 256 };
    // Four spans stacked from 0; the fifth is live with the second and fourth only, so the
    // first and third leave two gaps of 256 bytes, at 0 and at 512.
    let spans = [span(0, 1), span(0, 3), span(0, 1), span(0, 3), span(2, 3)];
    assert_eq!(assign_offsets(&spans), [0, 256, 512, 768, 0]);
}

/// Sizes that do not fit 64 bits saturate, and the plan says it overflowed (a real plan never
/// does: its sizes are far from it).
#[test]
fn a_plan_too_large_to_count_says_it_overflowed() {
    let (mut b, x) = start();
    let y = b.unary("y", UnaryOp::Exp, x).unwrap();
    b.output("y", y).unwrap();
    let g = b.finish().unwrap();
    assert!(!plan_memory(&g, &bind(1 << 20)).overflowed());
    let huge = plan_memory(&g, &bind(1 << 60));
    assert!(huge.overflowed(), "{} bytes", huge.naive_bytes);
}
