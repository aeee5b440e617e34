//! The KV-cache planner: sizes a paged KV cache from the graph itself, so the layout follows
//! whatever model was declared (layer count, KV heads, head dim, dtype) with no config lookup.
//!
//! Every op that appends to a cache (`kv_append`, or the fused `norm_rope` with `append`)
//! extends one cache (a layer's keys or its values) by some rows per token. The cache is cut into blocks of `block_tokens` tokens, each holding those tokens'
//! rows of every cache, as in vLLM's paged attention: a sequence owns a table of blocks, and
//! memory is handed out a block at a time instead of a maximum-length slab per sequence.

use smelt_ir::print::node_label;
use smelt_ir::{DType, Graph, Op};

/// vLLM's default block size: small enough that a sequence wastes under one block, large
/// enough that block tables stay short and a block's rows make long contiguous copies.
pub const DEFAULT_BLOCK_TOKENS: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KvPlan {
    /// The caches' element type, as the IR prints it (`"bf16"`).
    pub dtype: String,
    pub block_tokens: usize,
    /// The number of cache-appending ops, i.e. of caches: a layer's K and V count as two.
    pub caches: usize,
    /// Bytes one token takes across every cache.
    pub bytes_per_token: usize,
    /// `bytes_per_token * block_tokens`.
    pub bytes_per_block: usize,
    /// The budget the plan was made for.
    pub budget_bytes: usize,
    /// Whole blocks that fit in the budget.
    pub blocks: usize,
    /// `blocks * block_tokens`: tokens the cache holds across all sequences.
    pub capacity_tokens: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvPlanError {
    #[error("the graph appends to no cache (no kv_append): there is no KV cache to plan")]
    NoCache,
    #[error("the KV caches mix dtypes {0:?}: one paged layout needs one element type")]
    MixedDtypes(Vec<String>),
    #[error("a KV block must hold at least one token, got {0}")]
    BlockTokens(usize),
    #[error("a KV budget of {budget} bytes does not hold one block of {block_bytes} bytes")]
    BudgetTooSmall { budget: usize, block_bytes: usize },
    /// A cache whose per-token rows are not a fixed, non-empty size cannot be paged.
    #[error("cache append {node}: per-token shape {shape} is not fixed and non-empty")]
    TokenShape { node: String, shape: String },
}

/// Ops whose result is a cache `[P+T, ..]` extended by this step's rows.
pub(crate) fn appends_to_cache(op: &Op) -> bool {
    op.kv_cache_operand().is_some()
}

/// Plans a paged KV cache for `graph`: `block_tokens` tokens per block, as many blocks as fit
/// in `budget_bytes`.
pub fn plan_kv(graph: &Graph, block_tokens: usize, budget_bytes: usize) -> Result<KvPlan, KvPlanError> {
    if block_tokens == 0 {
        return Err(KvPlanError::BlockTokens(block_tokens));
    }
    let appends: Vec<_> = graph.node_ids().filter(|&id| appends_to_cache(&graph.node(id).op)).collect();
    let Some(&first) = appends.first() else {
        return Err(KvPlanError::NoCache);
    };
    let dtype = graph.node(first).dtype;
    let mut dtypes: Vec<DType> = appends.iter().map(|&id| graph.node(id).dtype).collect();
    dtypes.sort();
    dtypes.dedup();
    if dtypes.len() > 1 {
        return Err(KvPlanError::MixedDtypes(dtypes.iter().map(|d| d.name().to_string()).collect()));
    }
    let mut bytes_per_token: usize = 0;
    for &id in &appends {
        let shape = &graph.node(id).shape;
        // The first dim is the token axis (P+T); the rest is one token's rows.
        let row = shape.dims().get(1..).and_then(|rest| rest.iter().map(|d| d.fixed()).product::<Option<usize>>());
        match row.and_then(|r| r.checked_mul(dtype.size_bytes())) {
            Some(bytes) if bytes > 0 => bytes_per_token = bytes_per_token.saturating_add(bytes),
            _ => return Err(KvPlanError::TokenShape { node: node_label(graph, id), shape: shape.to_string() }),
        }
    }
    // A block too large to count fits in no budget: that is the error it gets.
    let Some(bytes_per_block) = bytes_per_token.checked_mul(block_tokens).filter(|&b| b <= budget_bytes) else {
        let block_bytes = bytes_per_token.saturating_mul(block_tokens);
        return Err(KvPlanError::BudgetTooSmall { budget: budget_bytes, block_bytes });
    };
    let blocks = budget_bytes / bytes_per_block;
    Ok(KvPlan {
        dtype: dtype.name().to_string(),
        block_tokens,
        caches: appends.len(),
        bytes_per_token,
        bytes_per_block,
        budget_bytes,
        blocks,
        // blocks * block_tokens <= budget / bytes_per_token: no overflow.
        capacity_tokens: blocks * block_tokens,
    })
}

#[cfg(test)]
mod tests {
    use smelt_ir::{shape, Builder, KvPart, Role, Sym};

    use super::*;
    use smelt_ir::FusedOp;

    const T: Sym = Sym::NewTokens;
    const P: Sym = Sym::CachedTokens;

    /// `layers` decoder layers' cache handling, each appending a K and a V of `[T, kvh, hd]`
    /// computed from the input to the layer's key and value caches (`kvNN.k`/`.v`) of `dtype`.
    fn graph(layers: usize, kvh: usize, hd: usize, dtype: DType) -> Graph {
        let mut b = Builder::new();
        let x = b.input("x", dtype, shape![T, kvh * hd]);
        for l in 0..layers {
            for (kind, part) in [("k", KvPart::Key), ("v", KvPart::Value)] {
                let name = format!("kv{l:02}.{kind}");
                let new = b.unary(&format!("{name}.new"), smelt_ir::UnaryOp::Neg, x).unwrap();
                let new = b.reshape(&format!("{name}.heads"), new, shape![T, kvh, hd]).unwrap();
                let role = Role::KvCache { layer: l as u32, part };
                let cache = b.input_as(&name, dtype, shape![P, kvh, hd], role);
                let all = b.op(&format!("{name}.append"), Op::KvAppend, &[cache, new]).unwrap();
                b.output(&name, all).unwrap();
            }
        }
        b.finish().unwrap()
    }

    #[test]
    fn bytes_per_token_sum_every_cache() {
        let plan = plan_kv(&graph(2, 8, 128, DType::BF16), DEFAULT_BLOCK_TOKENS, 1 << 30).unwrap();
        assert_eq!((plan.dtype.as_str(), plan.caches), ("bf16", 4));
        assert_eq!(plan.bytes_per_token, 2 * 2 * 8 * 128 * 2);
        let f32_plan = plan_kv(&graph(2, 8, 128, DType::F32), 16, 1 << 30).unwrap();
        assert_eq!(f32_plan.bytes_per_token, 2 * plan.bytes_per_token);
        let f16_plan = plan_kv(&graph(2, 8, 128, DType::F16), 16, 1 << 30).unwrap();
        assert_eq!((f16_plan.bytes_per_token, f16_plan.dtype.as_str()), (plan.bytes_per_token, "f16"));
    }

    #[test]
    fn qwen3_0_6b_shaped_caches_take_114688_bytes_per_token() {
        // 28 layers, 8 KV heads of 128 dims, K and V, bf16.
        let plan = plan_kv(&graph(28, 8, 128, DType::BF16), 16, 1 << 30).unwrap();
        assert_eq!((plan.caches, plan.bytes_per_token), (56, 28 * 2 * 8 * 128 * 2));
        assert_eq!(plan.bytes_per_token, 114_688);
        assert_eq!(plan.bytes_per_block, 114_688 * 16);
        assert_eq!(plan.blocks, (1 << 30) / (114_688 * 16));
    }

    #[test]
    fn blocks_and_capacity_follow_the_budget() {
        let g = graph(1, 2, 4, DType::BF16); // 2 caches * 8 elements * 2 bytes = 32 bytes/token.
        let plan = plan_kv(&g, 4, 1000).unwrap();
        assert_eq!((plan.bytes_per_token, plan.bytes_per_block), (32, 128));
        assert_eq!((plan.blocks, plan.capacity_tokens, plan.budget_bytes), (7, 28, 1000));
        let exact = plan_kv(&g, 4, 128).unwrap();
        assert_eq!((exact.blocks, exact.capacity_tokens), (1, 4));
        let one = plan_kv(&g, 1, 100).unwrap();
        assert_eq!((one.blocks, one.capacity_tokens), (3, 3));
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json["capacity_tokens"], 28);
    }

    #[test]
    fn fused_norm_rope_appends_count_as_caches() {
        let g = fused_graph();
        let plan = plan_kv(&g, 16, 1 << 20).unwrap();
        assert_eq!((plan.caches, plan.bytes_per_token), (1, 2 * 4 * 2));
        let arena = crate::memory::plan_memory(&g, &smelt_ir::Bindings { batch: 1, new_tokens: 3, cached_tokens: 9 });
        let labels: Vec<&str> = arena.buffers.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(labels, ["x", "positions", "attention"], "the fused append writes the cache, not the arena");
    }

    /// `norm_rope` with `append` (what fusion makes of rmsnorm, rope and kv_append) on a key cache.
    fn fused_graph() -> Graph {
        let mut b = Builder::new();
        let x = b.input("x", DType::BF16, shape![T, 2, 4]);
        let w = b.weight("norm", DType::BF16, shape![4]).unwrap();
        let positions = b.input("positions", DType::I32, shape![T]);
        let inv = b.constant("inv_freq", DType::F32, shape![2], vec![1.0, 0.01]).unwrap();
        let cache = b.input_as("cache", DType::BF16, shape![P, 2, 4], Role::KvCache { layer: 0, part: KvPart::Key });
        let op = Op::Fused(FusedOp::NormRope { eps: 1e-6, append: true });
        let all = b.op("k_append", op, &[x, w, positions, inv, cache]).unwrap();
        let o = b.op("attention", Op::Attention { scale: 0.5 }, &[x, all, all]).unwrap();
        b.output("cache", all).unwrap();
        b.output("o", o).unwrap();
        b.finish().unwrap()
    }

    #[test]
    fn errors() {
        let g = graph(1, 2, 4, DType::BF16);
        assert_eq!(plan_kv(&g, 0, 1000), Err(KvPlanError::BlockTokens(0)));
        assert_eq!(plan_kv(&g, 4, 127), Err(KvPlanError::BudgetTooSmall { budget: 127, block_bytes: 128 }));
        assert_eq!(
            plan_kv(&g, usize::MAX, usize::MAX).map(|p| p.blocks),
            Err(KvPlanError::BudgetTooSmall { budget: usize::MAX, block_bytes: usize::MAX })
        );
        assert_eq!(plan_kv(&Graph::new(), 16, 1000), Err(KvPlanError::NoCache));

        let mut b = Builder::new();
        for (name, dt) in [("a", DType::BF16), ("b", DType::F32)] {
            let x = b.input(&format!("{name}.new"), dt, shape![T, 2, 4]);
            let cache = b.input(name, dt, shape![P, 2, 4]);
            let all = b.op(&format!("{name}.append"), Op::KvAppend, &[cache, x]).unwrap();
            b.output(name, all).unwrap();
        }
        let mixed = plan_kv(&b.finish().unwrap(), 16, 1 << 20);
        assert_eq!(mixed, Err(KvPlanError::MixedDtypes(vec!["f32".into(), "bf16".into()])));

        // A cache whose token rows hold no bytes: refused (a zero block size would divide the
        // budget by zero).
        let mut b = Builder::new();
        let x = b.input("new", DType::BF16, shape![T, 0, 4]);
        let cache = b.input("c", DType::BF16, shape![P, 0, 4]);
        let all = b.op("append", Op::KvAppend, &[cache, x]).unwrap();
        b.output("c", all).unwrap();
        let err = plan_kv(&b.finish().unwrap(), 16, 1 << 20).unwrap_err();
        assert!(matches!(err, KvPlanError::TokenShape { .. }), "{err}");

        let mut b = Builder::new();
        let x = b.input("new", DType::BF16, shape![T, Sym::Batch, 4]);
        let cache = b.input("c", DType::BF16, shape![P, Sym::Batch, 4]);
        let all = b.op("append", Op::KvAppend, &[cache, x]).unwrap();
        b.output("c", all).unwrap();
        let err = plan_kv(&b.finish().unwrap(), 16, 1 << 20).unwrap_err();
        assert!(
            matches!(&err, KvPlanError::TokenShape { node, shape } if node.contains("append") && shape == "[P+T,B,4]")
        );
    }
}
