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

    /// Each step's label, numbered from 1 in pipeline order as `--dump`'s `passes/` names its
    /// file: `01-canonicalize`, `03-dce`.
    pub fn step_labels(&self) -> Vec<String> {
        self.passes.iter().enumerate().map(|(i, p)| format!("{:02}-{}", i + 1, p.name())).collect()
    }

    /// The step (0-based) that `name` means: a pass that runs once by its name
    /// (`fuse_rmsnorm`), any step by its label (`05-dce`). A pass that runs more than once
    /// (`dce`) by its bare name is ambiguous, and an error lists the labels to choose from; so
    /// does an unknown name, with each pass named once.
    pub fn find_step(&self, name: &str) -> Result<usize, String> {
        let names = self.names();
        let labels = self.step_labels();
        if let Some(i) = labels.iter().position(|l| l == name) {
            return Ok(i);
        }
        // The labels of the steps that run `pass`.
        let steps_of = |pass: &str| -> Vec<&str> {
            labels.iter().zip(&names).filter(|(_, n)| **n == pass).map(|(l, _)| l.as_str()).collect()
        };
        match steps_of(name)[..] {
            [] => {}
            [_] => return names.iter().position(|n| *n == name).ok_or_else(String::new),
            ref steps => {
                return Err(format!("{name} runs {} times: name one step ({})", steps.len(), steps.join(", ")))
            }
        }
        let mut unique: Vec<&str> = Vec::new();
        for n in &names {
            if !unique.contains(n) {
                unique.push(n);
            }
        }
        let repeated: Vec<String> = unique
            .iter()
            .filter(|n| steps_of(n).len() > 1)
            .map(|n| format!("{n} runs as {}", steps_of(n).join(", ")))
            .collect();
        let mut listing = format!("no such pass (passes: {}", unique.join(", "));
        if !repeated.is_empty() {
            listing.push_str(&format!("; {}", repeated.join("; ")));
        }
        listing.push(')');
        Err(listing)
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

#[cfg(test)]
mod tests {
    use crate::pipeline::standard;

    #[test]
    fn a_pass_is_found_by_its_name_or_its_step_label() {
        let p = standard();
        assert_eq!(p.find_step("canonicalize"), Ok(0));
        assert_eq!(p.find_step("fuse_rmsnorm"), Ok(5));
        assert_eq!(p.find_step("06-fuse_rmsnorm"), Ok(5));
        assert_eq!(p.find_step("05-dce"), Ok(4));
        assert_eq!(p.find_step("15-dce"), Ok(14));
        assert_eq!(p.step_labels()[2], "03-dce");
    }

    #[test]
    fn a_repeated_or_unknown_pass_lists_each_pass_once_and_the_steps_of_a_repeated_one() {
        let p = standard();
        let steps = "03-dce, 05-dce, 07-dce, 09-dce, 11-dce, 13-dce, 15-dce";
        assert_eq!(p.find_step("dce"), Err(format!("dce runs 7 times: name one step ({steps})")));
        let err = p.find_step("no_such_pass").unwrap_err();
        assert_eq!(
            err,
            format!(
                "no such pass (passes: canonicalize, cse, dce, fuse_horizontal, fuse_rmsnorm, fuse_norm_rope, \
                 fuse_norm_prologue, fuse_elementwise, fuse_epilogue; dce runs as {steps})"
            )
        );
        assert_eq!(err.matches("dce").count(), 1 + 1 + 7, "in the list, saying it repeats, and per step");
        assert!(p.find_step("3-dce").is_err() && p.find_step("06-dce").is_err());
    }
}
