//! Logging. Logs go to stderr so that `classifier-api classify` can print its JSON on stdout.
//!
//! Lines are written by a thread of their own (`tracing-appender`): a request formats its
//! access-log line and queues it, and never waits for a write to stderr (one `write` per request
//! was a tenth of a cached hit's time in `perf`). Nothing is dropped: when 128 000 lines are
//! queued, loggers wait (`lossy(false)`).
//!
//! The writer thread writes what it has queued, then pauses [`PACE`] before it looks again
//! ([`Paced`]). Without the pause it woke for nearly every line, and each wake was a futex call
//! in the request that queued the line and a context switch: under load, lines now go out in one
//! `write` per pause, and a line waits at most that long.
use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::{BufWriter, IsTerminal, Stderr, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Flushes the queued lines when dropped: keep it until the process is done logging.
#[must_use = "dropping the guard stops the log writer; keep it for the life of the process"]
pub struct LogGuard {
    _writer: Option<WorkerGuard>,
}

/// Installs the global subscriber; `RUST_LOG` filters (default `info`). Colours only on a
/// terminal. Safe to call twice (tests): the second call installs nothing.
pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(Paced(BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        )));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_timer(Rfc3339Micros)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    LogGuard {
        _writer: installed.is_ok().then_some(guard),
    }
}

/// How long the writer thread gathers lines between two writes.
const PACE: Duration = Duration::from_millis(2);

/// stderr through a buffer, flushed by the writer thread each time its queue is empty, followed
/// by a [`PACE`] of sleep.
struct Paced(BufWriter<Stderr>);

impl Write for Paced {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.0.write(line)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let flushed = self.0.flush();
        std::thread::sleep(PACE);
        flushed
    }
}

/// Timestamps as tracing-subscriber writes them (`2026-12-02T09:56:02.119812Z`), with the part
/// down to the second formatted once per second per thread: the calendar arithmetic and six
/// numbers per line were 2% of a cached hit in `perf`.
struct Rfc3339Micros;

thread_local! {
    /// The second last formatted, and its text up to the seconds.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl FormatTime for Rfc3339Micros {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let secs = now.as_secs();
        SECOND.with_borrow_mut(|(second, text)| {
            if *second != secs {
                *second = secs;
                text.clear();
                let t = i64::try_from(secs)
                    .ok()
                    .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
                write!(
                    text,
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                    t.year(),
                    u8::from(t.month()),
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second()
                )?;
            }
            write!(w, "{text}.{:06}Z", now.subsec_micros())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_read_as_rfc3339_with_microseconds() {
        let mut line = String::new();
        Rfc3339Micros
            .format_time(&mut Writer::new(&mut line))
            .unwrap();
        // 2026-12-02T09:56:02.119812Z
        assert_eq!(line.len(), 27, "{line}");
        let (date, rest) = line.split_once('T').unwrap();
        assert_eq!(date.split('-').count(), 3, "{line}");
        assert!(rest.ends_with('Z') && rest.as_bytes()[8] == b'.', "{line}");
        let expected = time::OffsetDateTime::now_utc();
        assert!(
            line.starts_with(&format!("{:04}-", expected.year())),
            "{line}"
        );
    }
}
