//! Logging with tracing: text or JSON on standard error, at the configured level.

use anyhow::{Context as _, bail};
use tracing_subscriber::fmt::format::FmtSpan;

/// Installs the global subscriber. `level` is trace, debug, info, warn or error; `format` is
/// text or json.
///
/// # Errors
/// An unknown level or format.
pub fn init(level: &str, format: &str) -> anyhow::Result<()> {
    let level: tracing::Level = level.parse().ok().with_context(|| {
        format!("unknown log level {level:?}: use trace, debug, info, warn or error")
    })?;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_span_events(FmtSpan::NONE)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match format {
        "text" => builder.try_init(),
        "json" => builder.json().try_init(),
        other => bail!("unknown log format {other:?}: use text or json"),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
    Ok(())
}
