//! The CPU backend's ranks: one for a whole model, or one per rank of a tensor-parallel group,
//! each with its own graphs, weights (its slices) and KV caches (its heads). The ranks of a
//! step run on threads of their own and exchange through a [`ThreadGroup`] in a fixed order,
//! so every rank computes the same bits and the result does not depend on thread timing.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use smelt_ir::{Collective, Graph, Tensor, ThreadGroup};
use smelt_runtime::{CpuState, HostWeights, PagedKv};

use crate::blueprint::Graphs;
use crate::engine::ModelError;

pub(crate) struct RankCpu {
    pub(crate) graphs: Graphs,
    pub(crate) run: RankRun,
}

/// What a rank runs its graphs with: its weights and its KV state.
pub(crate) struct RankRun {
    pub(crate) weights: HostWeights,
    pub(crate) state: CpuState,
    /// The batch engine's KV pool, this rank's heads.
    pub(crate) paged: Option<PagedKv>,
}

impl RankCpu {
    pub(crate) fn new(graphs: Graphs, weights: HostWeights) -> RankCpu {
        RankCpu { graphs, run: RankRun { weights, state: CpuState::new(), paged: None } }
    }
}

/// What one rank runs in a step: its graph (picked from its graphs), its inputs, and its
/// state, weights and the group.
pub(crate) type RankStep<'a> = dyn Fn(
        &mut RankRun,
        &Graph,
        HashMap<String, Tensor>,
        Option<&dyn Collective>,
    ) -> Result<HashMap<String, Tensor>, ModelError>
    + Sync
    + 'a;

/// Runs `step` on every rank with the same `inputs`; returns rank 0's outputs (every rank's
/// graph outputs are whole, hence equal). One rank runs on the calling thread; a group runs a
/// thread per rank, and a rank that fails or panics ends the others' exchanges.
pub(crate) fn run_ranks(
    ranks: &mut [RankCpu],
    pick: fn(&Graphs) -> &Graph,
    inputs: HashMap<String, Tensor>,
    step: &RankStep<'_>,
) -> Result<HashMap<String, Tensor>, ModelError> {
    if let [RankCpu { graphs, run }] = ranks {
        return step(run, pick(graphs), inputs, None);
    }
    let group = ThreadGroup::new(ranks.len());
    let results: Vec<Result<HashMap<String, Tensor>, ModelError>> = std::thread::scope(|s| {
        let handles: Vec<_> = ranks
            .iter_mut()
            .enumerate()
            .map(|(r, RankCpu { graphs, run })| {
                let (inputs, group) = (inputs.clone(), &group);
                s.spawn(move || {
                    let graph = pick(graphs);
                    let result = catch_unwind(AssertUnwindSafe(|| step(run, graph, inputs, Some(group))))
                        .unwrap_or_else(|_| Err(ModelError::Internal(format!("tensor-parallel rank {r} panicked"))));
                    if let Err(e) = &result {
                        group.abort(format!("rank {r}: {e}"));
                    }
                    result
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(ModelError::Internal("a rank panicked".into()))))
            .collect()
    });
    let (outputs, errors): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    let mut errors = errors.into_iter().filter_map(Result::err);
    // The error to report is the one a rank met, not the others' "another rank failed".
    match errors.next() {
        None => outputs.into_iter().next().unwrap_or_else(|| Err(ModelError::Internal("no rank ran".into()))),
        Some(first) if is_abort(&first) => Err(errors.find(|e| !is_abort(e)).unwrap_or(first)),
        Some(first) => Err(first),
    }
}

fn is_abort(e: &ModelError) -> bool {
    e.to_string().contains("another rank failed")
}

/// [`RankStep`] for one sequence's KV state (`Qwen3Cpu::forward`).
pub(crate) fn sequence_step(
    rank: &mut RankRun,
    graph: &Graph,
    inputs: HashMap<String, Tensor>,
    group: Option<&dyn Collective>,
    after_node: &mut dyn FnMut(),
) -> Result<HashMap<String, Tensor>, ModelError> {
    Ok(rank.state.run_rank(graph, &rank.weights, inputs, group, after_node)?)
}
