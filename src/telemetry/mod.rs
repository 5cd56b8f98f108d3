//! Logging. Logs go to stderr so that `classifier-api classify` can print its JSON on stdout.
//!
//! Every line goes through one buffer and one writer thread ([`sink`]): a request never waits
//! for a write to stderr (one `write` per request was a tenth of a cached hit's time in `perf`),
//! and nothing is dropped. The access line, one per request, skips tracing's formatting and is
//! written into that buffer directly ([`access`]), in the same format.
pub mod access;
mod sink;
mod timestamp;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
pub use sink::{LineSink, SinkGuard};

/// Writes the queued lines and stops the writer when dropped: keep it until the process is done
/// logging.
#[must_use = "dropping the guard stops the log writer; keep it for the life of the process"]
pub struct LogGuard {
    _writer: Option<SinkGuard>,
}

/// Installs the global subscriber; `RUST_LOG` filters (default `info`). Colours only on a
/// terminal. Safe to call twice (tests): the second call installs nothing.
pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let Ok((sink, guard)) = LineSink::start(std::io::stderr(), sink::PACE) else {
        eprintln!("warning: cannot start the log writer thread; logging to stderr directly");
        let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
        return LogGuard { _writer: None };
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_timer(timestamp::Rfc3339Micros)
        .with_writer(sink.clone());
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if installed.is_err() {
        return LogGuard { _writer: None };
    }
    // Coloured lines (a terminal) stay tracing's to write.
    if !ansi {
        access::install(sink, format);
    }
    LogGuard {
        _writer: Some(guard),
    }
}
