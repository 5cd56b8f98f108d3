//! The access line, written into the log buffer without tracing: tracing's field visitors,
//! its formatter and the per-line allocation were a fifth of a cached hit's CPU in `perf`.
//! The line reads exactly as tracing-subscriber's own would (text or JSON, the fields in the
//! same order), so what reads our logs sees no difference; a test holds the two side by side.
//!
//! Written directly only when [`init`](super::init) installed the buffer, without colours
//! (a terminal), and `RUST_LOG` lets `classifier_api::access` through at INFO; otherwise
//! [`write`] logs the line through tracing (in-process tests, a terminal, another subscriber).
use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Duration;

use super::sink::LineSink;
use super::timestamp::write_now;
use crate::config::LogFormat;

/// The access line's tracing target (its `RUST_LOG` name).
pub const TARGET: &str = "classifier_api::access";

/// One request, as its access line reports it.
pub struct AccessLine<'a> {
    pub method: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub elapsed: Duration,
    pub request_id: &'a str,
    /// The derived client (behind trusted proxies, the one they forwarded for).
    pub client: Option<IpAddr>,
}

struct Direct {
    sink: LineSink,
    format: LogFormat,
}

static DIRECT: OnceLock<Direct> = OnceLock::new();

thread_local! {
    /// Each thread's line, reused: no allocation per request.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Access lines go to `sink` from now on, unless the filter turns them off.
pub(super) fn install(sink: LineSink, format: LogFormat) {
    if tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        let _ = DIRECT.set(Direct { sink, format });
    }
}

/// Logs the line: into the buffer directly, or through tracing (see the module).
pub fn write(line: &AccessLine<'_>) {
    let Some(direct) = DIRECT.get() else {
        return through_tracing(line);
    };
    LINE.with_borrow_mut(|text| {
        text.clear();
        // Writing to a String cannot fail.
        let _ = format(text, line, direct.format);
        direct.sink.append(text.as_bytes());
    });
}

/// The same line as a tracing event: what [`format`] must read like.
fn through_tracing(line: &AccessLine<'_>) {
    tracing::info!(
        target: TARGET,
        method = %line.method,
        // Display, not Debug: no quotes to escape character by character.
        route = %line.route,
        status = line.status,
        // From nanoseconds, so the number prints short (0.004663, not 0.0046630000000000005).
        duration_ms = line.elapsed.as_nanos() as f64 / 1e6,
        request_id = %line.request_id,
        client = line.client.map(tracing::field::display),
        "request"
    );
}

fn format(out: &mut String, line: &AccessLine<'_>, format: LogFormat) -> std::fmt::Result {
    match format {
        LogFormat::Text => {
            write_now(out)?;
            write!(
                out,
                "  INFO {TARGET}: request method={} route={} status={} duration_ms=",
                line.method, line.route, line.status
            )?;
            write_ms(out, line.elapsed, format)?;
            write!(out, " request_id={}", line.request_id)?;
            if let Some(client) = line.client {
                write!(out, " client={client}")?;
            }
        }
        LogFormat::Json => {
            out.push_str("{\"timestamp\":\"");
            write_now(out)?;
            out.push_str("\",\"level\":\"INFO\",\"message\":\"request\",\"method\":");
            json_string(out, line.method);
            out.push_str(",\"route\":");
            json_string(out, line.route);
            write!(out, ",\"status\":{},\"duration_ms\":", line.status)?;
            write_ms(out, line.elapsed, format)?;
            out.push_str(",\"request_id\":");
            json_string(out, line.request_id);
            if let Some(client) = line.client {
                write!(out, ",\"client\":\"{client}\"")?;
            }
            write!(out, ",\"target\":\"{TARGET}\"}}")?;
        }
    }
    out.push('\n');
    Ok(())
}

/// Milliseconds as tracing prints an `f64` (`0.002482`, `12.0`), from the nanoseconds in
/// integers: the float formatter was 1% of a cached hit.
fn write_ms(out: &mut String, elapsed: Duration, format: LogFormat) -> std::fmt::Result {
    let nanos = elapsed.as_nanos();
    // Below 0.0001 ms the two formats differ (`Debug`'s `4e-5`, serde_json's `0.00004`, and
    // both turn to exponents somewhere); never seen in practice.
    if nanos < 100 {
        let ms = nanos as f64 / 1e6;
        return match format {
            LogFormat::Text => write!(out, "{ms:?}"),
            LogFormat::Json => write!(out, "{}", serde_json::Value::from(ms)),
        };
    }
    let (whole, fraction) = (nanos / 1_000_000, nanos % 1_000_000);
    if fraction == 0 {
        return write!(out, "{whole}.0");
    }
    // Six digits, less the trailing zeros.
    let (mut digits, mut width) = (fraction, 6);
    while digits % 10 == 0 {
        digits /= 10;
        width -= 1;
    }
    write!(out, "{whole}.{digits:0width$}")
}

/// `value` as a JSON string, escaped as serde_json escapes it.
fn json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests;
