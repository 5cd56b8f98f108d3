use super::*;
use std::sync::{Arc, Mutex};

/// What a subscriber wrote, shared with the test.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The line tracing-subscriber writes for `line`, set up as `telemetry::init` sets it up.
fn from_tracing(line: &AccessLine<'_>, format: LogFormat) -> String {
    let capture = Capture::default();
    let writer = capture.clone();
    let builder = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_timer(super::super::timestamp::Rfc3339Micros)
        .with_writer(move || writer.clone());
    match format {
        LogFormat::Text => {
            tracing::subscriber::with_default(builder.finish(), || through_tracing(line))
        }
        LogFormat::Json => {
            tracing::subscriber::with_default(builder.json().flatten_event(true).finish(), || {
                through_tracing(line)
            })
        }
    }
    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    text
}

fn direct(line: &AccessLine<'_>, format: LogFormat) -> String {
    let mut text = String::new();
    super::format(&mut text, line, format).unwrap();
    text
}

/// The line with its 27-character timestamp, found at `at`, blanked.
fn untimed(line: &str, at: usize) -> String {
    assert!(line.len() > at + 27, "{line}");
    format!("{}<time>{}", &line[..at], &line[at + 27..])
}

#[test]
fn direct_lines_read_exactly_as_tracings_own() {
    let lines = [
        AccessLine {
            method: "POST",
            route: "/classify-image",
            status: 200,
            elapsed: Duration::from_nanos(2_482),
            request_id: "364a5d3f941fb5b8-2ade83",
            client: Some("127.0.0.1".parse().unwrap()),
        },
        AccessLine {
            method: "GET",
            route: "other",
            status: 404,
            elapsed: Duration::from_millis(1_250),
            request_id: r#"a"b\c{}=x"#,
            client: None,
        },
        AccessLine {
            method: "PROPFIND",
            route: "/report",
            status: 503,
            elapsed: Duration::from_nanos(40),
            request_id: "id",
            client: Some("2001:db8::1".parse().unwrap()),
        },
    ];
    for line in &lines {
        let (ours, theirs) = (
            direct(line, LogFormat::Text),
            from_tracing(line, LogFormat::Text),
        );
        assert_eq!(untimed(&ours, 0), untimed(&theirs, 0));
        let (ours, theirs) = (
            direct(line, LogFormat::Json),
            from_tracing(line, LogFormat::Json),
        );
        let at = "{\"timestamp\":\"".len();
        assert_eq!(untimed(&ours, at), untimed(&theirs, at));
        let parsed: serde_json::Value = serde_json::from_str(&ours).unwrap();
        assert_eq!(parsed["request_id"], line.request_id);
    }
}

#[test]
fn milliseconds_print_as_each_format_prints_the_float() {
    let mut nanos: Vec<u64> = vec![
        0, 1, 99, 100, 101, 999, 1_000, 1_000_000, 1_000_001, 10_000_000,
    ];
    // A spread of magnitudes, from a fixed seed.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for shift in 0..44 {
        for _ in 0..50 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            nanos.push(x % (1 << shift).max(1) + (1 << shift));
        }
    }
    for n in nanos {
        let (mut text, mut json) = (String::new(), String::new());
        write_ms(&mut text, Duration::from_nanos(n), LogFormat::Text).unwrap();
        assert_eq!(text, format!("{:?}", n as f64 / 1e6), "{n} ns");
        write_ms(&mut json, Duration::from_nanos(n), LogFormat::Json).unwrap();
        assert_eq!(
            json,
            serde_json::to_string(&(n as f64 / 1e6)).unwrap(),
            "{n} ns"
        );
    }
}

#[test]
fn json_strings_escape_as_serde_does() {
    for s in [
        "plain",
        "quote\" back\\slash",
        "tab\tnew\nline\r",
        "\u{1}\u{1f}\u{8}\u{c}",
        "é✓",
    ] {
        let mut ours = String::new();
        json_string(&mut ours, s);
        assert_eq!(ours, serde_json::to_string(s).unwrap());
    }
}
