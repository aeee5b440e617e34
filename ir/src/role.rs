//! What the graph's inputs and outputs are to whoever runs it, and what the model says about a
//! node: set by the model that declares the graph, read by the planners, the code generator and
//! the runtimes, which never look for a model's names.

use std::fmt;

/// The part a graph input or output plays. An input and an output of one name share it: a KV
/// cache is read as an input and written back as the output of the same name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Token ids, `i32[T]`: the runtime writes each step's tokens here.
    TokenIds,
    /// Positions, `i32[T]`: where each new token sits in its sequence.
    Positions,
    /// Logits, `f32[T or 1, vocab]`.
    Logits,
    /// The greedy next token, `i32[T or 1]`.
    NextToken,
    /// One layer's key or value cache, `[P, ...]`: state the runtime keeps between steps (in a
    /// paged pool) and feeds back as the input of the same name.
    KvCache { layer: u32, part: KvPart },
    /// Anything else: the caller feeds or reads it by name.
    #[default]
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KvPart {
    Key,
    Value,
}

impl Role {
    pub fn is_kv_cache(self) -> bool {
        matches!(self, Role::KvCache { .. })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::TokenIds => f.write_str("token ids"),
            Role::Positions => f.write_str("positions"),
            Role::Logits => f.write_str("logits"),
            Role::NextToken => f.write_str("next token"),
            Role::KvCache { layer, part: KvPart::Key } => write!(f, "layer {layer} key cache"),
            Role::KvCache { layer, part: KvPart::Value } => write!(f, "layer {layer} value cache"),
            Role::Other => f.write_str("other"),
        }
    }
}

/// What the model says about a node, for people, kernel names and the tensor-parallel layout.
/// Only the shard pass decides anything from it ([`Meta::split`]); passes carry it from the
/// nodes they replace to the node that replaces them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Meta {
    /// The decoder layer the node belongs to, if any.
    pub layer: Option<u32>,
    /// What the node computes, in the model's words (`qkv`, `lm_head`): a kernel rooted
    /// at the node is named after it. `Some("")` asks for the kernel kind alone.
    pub label: Option<String>,
    /// On a weight: how tensor parallelism may split it across ranks (Megatron's layout, said by
    /// the model); unsplit weights are replicated.
    pub split: Option<Split>,
}

/// How a weight `[rows, columns]` may be split across the ranks of a tensor-parallel group, in
/// whole groups of `unit` (a head's `head_dim` rows or columns, or single ones). When the
/// groups are fewer than the ranks, each group is held by `world / groups` ranks (replicated:
/// a KV head shared by the query heads of several ranks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// Along axis 0: a matmul's output features, an embedding's vocabulary.
    Rows { unit: usize },
    /// Along axis 1: a matmul's input features (its partial products are summed across ranks).
    Columns { unit: usize },
}

impl Split {
    pub fn axis(self) -> usize {
        match self {
            Split::Rows { .. } => 0,
            Split::Columns { .. } => 1,
        }
    }

    pub fn unit(self) -> usize {
        match self {
            Split::Rows { unit } | Split::Columns { unit } => unit,
        }
    }
}
