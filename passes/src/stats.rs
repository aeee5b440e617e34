//! Counting the ops that become kernels: every op that computes, i.e. not a leaf (input,
//! weight, constant) and not a view (reshape, slice), which kernels absorb as addressing.
//! Ops are assigned to a decoder layer by their name's `lNN.` scope.

use std::collections::BTreeMap;

use serde::Serialize;
use smelt_ir::Graph;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OpCounts {
    /// Kernel ops in the whole graph.
    pub ops: usize,
    /// The most kernel ops in any one layer.
    pub ops_per_layer: usize,
    /// Kernel ops outside every layer (embedding, final norm, head, sampling).
    pub ops_outside_layers: usize,
    /// Kernel ops per layer index.
    #[serde(skip)]
    pub by_layer: BTreeMap<usize, usize>,
    /// Kernel ops by kind.
    pub by_kind: BTreeMap<&'static str, usize>,
}

/// The layer a node name belongs to: `l07.attn.q_proj` -> 7.
pub fn layer_of(name: &str) -> Option<usize> {
    let scope = name.split('.').next()?;
    let digits = scope.strip_prefix('l')?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

pub fn op_counts(graph: &Graph) -> OpCounts {
    let mut c = OpCounts::default();
    for id in graph.node_ids() {
        let node = graph.node(id);
        if node.op.is_leaf() || node.op.is_view() {
            continue;
        }
        c.ops += 1;
        *c.by_kind.entry(node.op.kind()).or_insert(0) += 1;
        match node.name.as_deref().and_then(layer_of) {
            Some(l) => *c.by_layer.entry(l).or_insert(0) += 1,
            None => c.ops_outside_layers += 1,
        }
    }
    c.ops_per_layer = c.by_layer.values().copied().max().unwrap_or(0);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names() {
        assert_eq!(layer_of("l07.attn.q_proj"), Some(7));
        assert_eq!(layer_of("l12"), Some(12));
        assert_eq!(layer_of("lm_head"), None);
        assert_eq!(layer_of("logits_f32"), None);
        assert_eq!(layer_of("l.x"), None);
    }
}
