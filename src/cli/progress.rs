//! Progress bars for long work (weights loading, kernels compiling, a long prompt on the GPU),
//! on a terminal only: quiet in pipes, under CI and with `--quiet`. Log lines are written above
//! the bar (see [`LogWriter`]) so the two do not garble each other.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use smelt::runtime::progress::{self, Sink, Unit};

/// The bar being drawn, if any.
static CURRENT: Mutex<Option<ProgressBar>> = Mutex::new(None);

struct Bars;

impl Sink for Bars {
    fn begin(&self, task: &str, total: u64, unit: Unit) {
        let counts = match unit {
            Unit::Bytes => "{bytes}/{total_bytes}",
            Unit::Items => "{pos}/{len}",
            Unit::Fraction => "{percent}%",
        };
        let template = format!("{{msg}} [{{bar:30}}] {counts} ({{elapsed}}, {{eta}} left)");
        let style = ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar());
        let bar = ProgressBar::new(total).with_style(style.progress_chars("=> ")).with_message(task.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        if let Ok(mut current) = CURRENT.lock() {
            *current = Some(bar);
        }
    }

    fn advance(&self, n: u64) {
        if let Ok(Some(bar)) = CURRENT.lock().as_deref() {
            bar.inc(n);
        }
    }

    fn end(&self) {
        if let Ok(mut current) = CURRENT.lock() {
            if let Some(bar) = current.take() {
                bar.finish_and_clear();
            }
        }
    }
}

/// Draws progress bars when stderr is a terminal, not under CI (`CI` set) and not `quiet`.
pub fn install(quiet: bool) {
    if !quiet && std::io::stderr().is_terminal() && std::env::var_os("CI").is_none() {
        progress::install(Box::new(Bars));
    }
}

/// stderr for log lines: the bar, if one is drawn, is cleared while a line is written and
/// drawn again below it.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = CURRENT.lock().ok().and_then(|current| current.clone());
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf)).map(|()| buf.len()),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
