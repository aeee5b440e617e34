//! smelt: a compute-graph compiler that runs Qwen3. This facade re-exports the crates:
//! [`ir`] (the tensor IR and its reference evaluator), [`runtime`] (weights, CPU backend) and
//! [`models`] (Qwen3, tokenizer, chat template, generation).

pub use smelt_codegen as codegen;
pub use smelt_ir as ir;
pub use smelt_models as models;
pub use smelt_passes as passes;
pub use smelt_runtime as runtime;
