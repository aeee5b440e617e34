//! Errors of graph construction and verification.

/// A graph that is not well-formed. `node` names the offending node as the printer shows it
/// (`%12 l03.attn.scores`).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IrError {
    #[error("node {node}: {message}")]
    Node { node: String, message: String },
    #[error("graph has a cycle")]
    Cycle,
    #[error("output {name:?} refers to a node that is not in the graph")]
    DanglingOutput { name: String },
    #[error("duplicate {what} name {name:?}")]
    Duplicate { what: &'static str, name: String },
    #[error("{name:?} plays the role {role}, {message}")]
    Role { name: String, role: crate::Role, message: String },
}
