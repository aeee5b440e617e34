//! The `Pass` trait and the `PassManager` that runs an ordered pipeline, timing each pass and
//! keeping the graph text after each one for dumps.

use std::time::{Duration, Instant};

use smelt_ir::print::to_text;
use smelt_ir::{Graph, IrError};

/// What a pass did. A pass that matched nothing says so: `matched == 0` is a fact to report,
/// not a silent no-op.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Pattern roots the pass matched.
    pub matched: usize,
    /// Nodes added, rewired or removed as a result.
    pub changed: usize,
    /// Short human-readable notes (`"fused 28 RMSNorm chains"`).
    pub notes: Vec<String>,
}

impl Report {
    pub fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }
}

/// A graph-to-graph rewrite. It must preserve the graph's meaning as `ir::eval` defines it.
pub trait Pass {
    /// A stable, short, kebab-free name (`"cse"`, `"fuse_rmsnorm"`): used in dump file names.
    fn name(&self) -> &'static str;
    fn run(&self, graph: &mut Graph) -> Result<Report, IrError>;
}

/// One pass's outcome in a pipeline run.
#[derive(Clone, Debug)]
pub struct PassRun {
    pub name: &'static str,
    pub report: Report,
    pub elapsed: Duration,
    /// Node count after the pass.
    pub nodes: usize,
    /// The graph's text after the pass, when dumps were asked for.
    pub text: Option<String>,
}

/// An ordered pipeline of passes. Verifies the graph after every pass, so a broken rewrite is
/// caught at the pass that made it.
pub struct PassManager {
    passes: Vec<Box<dyn Pass>>,
    keep_text: bool,
}

impl PassManager {
    pub fn new(passes: Vec<Box<dyn Pass>>) -> PassManager {
        PassManager { passes, keep_text: false }
    }

    /// Keep the graph text after each pass (for `--dump`).
    pub fn keep_text(mut self, keep: bool) -> PassManager {
        self.keep_text = keep;
        self
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.passes.iter().map(|p| p.name()).collect()
    }

    /// Runs every pass in order on `graph`; `title` heads the dumped text.
    pub fn run(&self, graph: &mut Graph, title: &str) -> Result<Vec<PassRun>, PassError> {
        let mut runs = Vec::with_capacity(self.passes.len());
        for pass in &self.passes {
            let t0 = Instant::now();
            let report = pass.run(graph).map_err(|source| PassError { pass: pass.name(), source })?;
            let elapsed = t0.elapsed();
            smelt_ir::verify::verify(graph).map_err(|source| PassError { pass: pass.name(), source })?;
            let text = self.keep_text.then(|| to_text(graph, title));
            runs.push(PassRun { name: pass.name(), report, elapsed, nodes: graph.node_count(), text });
        }
        Ok(runs)
    }
}

/// A pass failed, or left a graph the verifier rejects.
#[derive(Debug, thiserror::Error)]
#[error("pass {pass}: {source}")]
pub struct PassError {
    pub pass: &'static str,
    pub source: IrError,
}
