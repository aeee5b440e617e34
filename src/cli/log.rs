//! Diagnostics on stderr through `tracing`: progress and timings at `info`, problems that do
//! not stop the command at `warn`, and what the crates below report at `debug` (module-cache
//! hits, NVRTC compiles, weight loading). `SMELT_LOG` picks what is shown, in `tracing`'s
//! filter syntax: `SMELT_LOG=warn` keeps only warnings, `SMELT_LOG=debug` shows everything,
//! `SMELT_LOG=smelt_codegen=debug` one crate. The default is `info`.
//!
//! Lines read as they did when they were plain prints: `warning: ...` for a warning, the
//! message alone for progress; only `debug` and `trace` lines name the module they come from.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The environment variable that sets the filter.
pub const ENV: &str = "SMELT_LOG";

/// Installs the stderr subscriber (`quiet`: warnings and errors only, unless `SMELT_LOG` says
/// otherwise). A `SMELT_LOG` that does not parse is an error naming it, not a silently
/// ignored setting.
pub fn init(quiet: bool) -> anyhow::Result<()> {
    let filter = match std::env::var(ENV) {
        Ok(spec) => EnvFilter::builder()
            .parse(&spec)
            .map_err(|e| anyhow::anyhow!("{ENV}={spec:?} is not a log filter (try info, warn or debug): {e}"))?,
        Err(_) => EnvFilter::new(if quiet { "warn" } else { "info" }),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| super::progress::LogWriter)
        .event_format(Plain)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}

/// `warning: message`, `error: message`, `message`, or `debug smelt_codegen::cache: message`.
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        match *meta.level() {
            Level::ERROR => write!(writer, "error: ")?,
            Level::WARN => write!(writer, "warning: ")?,
            Level::INFO => {}
            Level::DEBUG => write!(writer, "debug {}: ", meta.target())?,
            Level::TRACE => write!(writer, "trace {}: ", meta.target())?,
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
