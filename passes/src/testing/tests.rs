use super::*;

/// The generator must actually produce what the passes look for, or their proptests
/// would pass vacuously.
#[test]
fn generator_covers_the_interesting_cases() {
    let mut n = [0usize; 6];
    for seed in 0..200 {
        let g = random_graph(seed);
        let live = smelt_ir::verify::live_nodes(&g);
        n[5] += g.node_ids().filter(|id| !live.contains(id)).count();
        for id in g.node_ids() {
            let node = g.node(id);
            let x = g.operands(id).first().map(|&x| g.node(x).clone());
            match (&node.op, x) {
                (Op::Cast { to }, Some(x)) if x.dtype == *to => n[0] += 1,
                (Op::Reshape { to }, Some(x)) if x.shape == *to => n[1] += 1,
                (Op::Reshape { .. }, Some(x)) if matches!(x.op, Op::Reshape { .. }) => n[2] += 1,
                (Op::Slice { .. }, Some(x)) if x.shape == node.shape => n[3] += 1,
                (Op::Concat { .. }, _) if g.operands(id).len() == 1 => n[4] += 1,
                _ => {}
            }
        }
        let (inputs, weights) = random_inputs(&g, 3, seed);
        eval(&g, inputs, &weights).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
    let what = ["same-dtype cast", "no-op reshape", "reshape chain", "whole slice", "single concat", "dead node"];
    for (what, n) in what.into_iter().zip(n) {
        assert!(n >= 10, "only {n} {what}s in 200 graphs");
    }
}

#[test]
fn same_eval_accepts_itself_and_catches_a_change() {
    let g = random_graph(7);
    assert_same_eval(&g, &g, 2, 1, 0.0);
    let mut b = Builder::new();
    let x = b.input("x", DType::F32, smelt_ir::shape![Sym::NewTokens, 3]);
    let y = b.unary("y", UnaryOp::Exp, x).unwrap();
    b.output("y", y).unwrap();
    let before = b.finish().unwrap();
    let mut after = before.clone();
    after.node_mut(y).op = Op::Unary(UnaryOp::Sin);
    let caught = std::panic::catch_unwind(|| assert_same_eval(&before, &after, 2, 1, 1e-3));
    assert!(caught.is_err(), "exp vs sin must differ");
}
