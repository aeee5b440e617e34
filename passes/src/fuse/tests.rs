//! Every fusion pass, on random graphs (which hold Qwen3's RMSNorm and norm+RoPE chains and
//! near misses of them): the graph still verifies, evaluates to the same results, and, over
//! many graphs, the pass finds work to do.
//!
//! Tolerance: none, every output to the bit (held over 1,500 cases once, 96 a run). Fused ops evaluate as the very kernels of the
//! chain they replace, and eval's matmul sums a row in the same order however its columns
//! are grouped, so a horizontally fused matmul gives its parts' bits.

use proptest::prelude::*;

use super::*;
use crate::dce::Dce;
use crate::pass::Pass;
use crate::testing::{assert_same_eval, graph_strategy, random_graph, run_verified};

const TOL: f64 = 0.0;

/// Runs `pass` then `Dce` (fusion leaves the replaced chain dead until then).
fn fuse(pass: &dyn Pass, g: &smelt_ir::Graph) -> (smelt_ir::Graph, crate::Report) {
    let (g, report) = run_verified(pass, g);
    (run_verified(&Dce, &g).0, report)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn each_fusion_pass_preserves_eval(rg in graph_strategy()) {
        for pass in super::fusions() {
            let (after, _) = fuse(pass.as_ref(), &rg.graph);
            for t in [1, 3] {
                assert_same_eval(&rg.graph, &after, t, rg.seed, TOL);
            }
        }
    }

    /// The passes in pipeline order, each on the previous one's result.
    #[test]
    fn fusion_passes_compose(rg in graph_strategy()) {
        let mut g = rg.graph.clone();
        for pass in super::fusions() {
            g = fuse(pass.as_ref(), &g).0;
        }
        assert_same_eval(&rg.graph, &g, 2, rg.seed, TOL);
    }
}

#[test]
fn random_graphs_give_every_fusion_work() {
    let (mut horizontal, mut elementwise, mut epilogue, mut norms, mut ropes) = (0, 0, 0, 0, 0);
    for seed in 0..200 {
        let g = random_graph(seed);
        let (g, r) = fuse(&FuseHorizontal, &g);
        horizontal += r.matched;
        let (g, r) = fuse(&FuseRmsNorm, &g);
        norms += r.matched;
        let (g, r) = fuse(&FuseNormRope::default(), &g);
        ropes += r.matched;
        let (g, r) = fuse(&FuseElementwise, &g);
        elementwise += r.matched;
        epilogue += fuse(&FuseEpilogue, &g).1.matched;
    }
    eprintln!(
        "over 200 random graphs: {horizontal} horizontal, {norms} RMSNorm, {ropes} norm+RoPE, {elementwise} \
         elementwise, {epilogue} epilogue fusions"
    );
    assert!(horizontal > 0 && elementwise > 0 && epilogue > 0);
    // The generator writes each chain into about a third of the graphs, half
    // of them exact (a norm+RoPE chain holds an RMSNorm of its own).
    assert!(norms >= 50 && ropes >= 20, "{norms} RMSNorm and {ropes} norm+RoPE fusions");
}
