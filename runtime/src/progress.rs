//! Progress of long work (loading weights, compiling kernels, running a prompt) for whatever
//! shows it: the library reports, an application installs a [`Sink`] (the CLI draws a bar on a
//! terminal). Without a sink a report costs one atomic load. The work is sequential, so one
//! task is current at a time.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    /// Kernels, tokens: counted.
    Items,
    /// Steps of work that mean nothing counted (a graph's nodes): shown as a percentage.
    Fraction,
}

/// Where progress goes.
pub trait Sink: Send + Sync {
    fn begin(&self, task: &str, total: u64, unit: Unit);
    fn advance(&self, n: u64);
    fn end(&self);
}

static SINK: OnceLock<Box<dyn Sink>> = OnceLock::new();

/// Installs the process's sink; false (and `sink` unused) when one already is.
pub fn install(sink: Box<dyn Sink>) -> bool {
    SINK.set(sink).is_ok()
}

/// One piece of long work, `total` units of it; it ends when dropped (an early error return
/// included).
pub struct Task {
    sink: Option<&'static dyn Sink>,
}

impl Task {
    pub fn begin(task: &str, total: u64, unit: Unit) -> Task {
        let sink = SINK.get().map(|s| s.as_ref());
        if let Some(s) = sink {
            s.begin(task, total, unit);
        }
        Task { sink }
    }

    pub fn advance(&self, n: u64) {
        if let Some(s) = self.sink {
            s.advance(n);
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(s) = self.sink {
            s.end();
        }
    }
}
