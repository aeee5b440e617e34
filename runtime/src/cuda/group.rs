//! What a tensor-parallel group's rank programs share when one device runs them all in turn
//! (the emulator, or one GPU in `check-kernels --tensor-parallel`): every rank exchanges the
//! same values in the same order, each exchange is a kernel in place of NCCL
//! (`smelt_codegen::kernels::exchange`: one launch per rank, reading every rank's part), and
//! its output is checked against the evaluator's collective over the parts.

use std::ops::Range;

use smelt_codegen::kernels::exchange::{all_gather, all_reduce};
use smelt_codegen::{Exchange, Kernel, Program};
use smelt_ir::eval::{gather_in_rank_order, sum_in_rank_order};
use smelt_ir::{Graph, Op, Tensor};

use super::layout::label;
use super::CudaError;

/// The launches of `program` (`launches` in all) after exchange `k - 1` and before exchange
/// `k`; `k = exchanges.len()` gives those after the last.
pub(crate) fn segment(program: &Program, launches: usize, k: usize) -> Range<usize> {
    let start = k.checked_sub(1).map_or(0, |j| program.exchanges[j].after);
    start..program.exchanges.get(k).map_or(launches, |x| x.after)
}

/// Checks that every rank's program exchanges the values rank 0's does, in the same order, as
/// sharding makes them.
pub(crate) fn same_exchanges<'a>(ranks: impl IntoIterator<Item = (&'a Graph, &'a Program)>) -> Result<(), CudaError> {
    let mut ranks = ranks.into_iter().enumerate().peekable();
    let Some(&(_, (first_graph, first))) = ranks.peek() else {
        return Err(CudaError::Layout("a group of no ranks".into()));
    };
    for (r, (g, p)) in ranks {
        let same = p.exchanges.len() == first.exchanges.len()
            && p.exchanges
                .iter()
                .zip(&first.exchanges)
                .all(|(a, b)| a.op == b.op && g.node(a.operand_id).shape == first_graph.node(b.operand_id).shape);
        if !same {
            let message = format!("rank {r} does not exchange the values rank 0 does, in the same order");
            return Err(CudaError::Layout(message));
        }
    }
    Ok(())
}

/// The kernel that does exchange `x` of a rank's program over `g`.
pub(crate) fn exchange_kernel(g: &Graph, x: &Exchange) -> Result<Kernel, CudaError> {
    let part = g.node(x.operand_id);
    match g.node(x.node_id).op {
        Op::AllReduce { world } => Ok(all_reduce(world, part.dtype, &part.shape)),
        Op::AllGather { axis, world } => Ok(all_gather(world, part.dtype, &part.shape, axis)),
        ref op => Err(CudaError::Layout(format!("{} is not an exchange", op.kind()))),
    }
}

/// What exchange `x` of `g` must leave on every rank, given the ranks' parts in rank order.
pub(crate) fn exchange_reference(g: &Graph, x: &Exchange, parts: &[Tensor]) -> Result<Tensor, CudaError> {
    match g.node(x.node_id).op {
        Op::AllReduce { .. } => sum_in_rank_order(parts),
        Op::AllGather { axis, .. } => gather_in_rank_order(parts, axis),
        ref op => Err(format!("{} is not an exchange", op.kind())),
    }
    .map_err(|e| CudaError::Layout(format!("{}: {e}", label(g, x.node_id))))
}
