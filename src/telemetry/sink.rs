//! Where every log line goes: one buffer that requests append whole lines to, and one thread
//! that writes what has gathered to stderr.
//!
//! Why not `tracing-appender`: it allocated a `Vec` per line and sent it over a channel, and
//! the access line, written here directly (see [`super::access`]), would then have cost an
//! allocation, a channel send and tracing's formatting per request. Here a line is one copy
//! into the buffer under a lock held for that copy.
//!
//! The writer thread writes what is there, then pauses [`PACE`] before it looks again: under
//! load, lines go out in one `write` per pause and a line waits at most that long. It sleeps
//! without a timeout when the buffer is empty, and only the line that finds the buffer empty
//! and the writer asleep wakes it, so a request pays a futex wake at most once per pause.
//!
//! Nothing is dropped: when [`MAX_PENDING`] bytes wait (stderr blocked, say), a line waits for
//! room.
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::sync::lock;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer thread gathers lines between two writes.
pub const PACE: Duration = Duration::from_millis(2);

/// Bytes that may wait for the writer before a line must wait for room.
pub const MAX_PENDING: usize = 4 << 20;

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// The writer waits for a line (it found nothing to write).
    writer_idle: bool,
    closed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    /// The writer waits here for lines, while the buffer is empty.
    has_lines: Condvar,
    /// Lines wait here for room, while [`MAX_PENDING`] bytes wait.
    has_room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        lock(&self.pending)
    }
}

/// A handle to the buffer; cheap to clone.
#[derive(Clone)]
pub struct LineSink {
    shared: Arc<Shared>,
}

/// Writes what is left and stops the writer when dropped: keep it for the life of the process.
pub struct SinkGuard {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl LineSink {
    /// The buffer and its writer thread, writing to `out`.
    pub fn start(
        out: impl Write + Send + 'static,
        pace: Duration,
    ) -> std::io::Result<(Self, SinkGuard)> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            has_lines: Condvar::new(),
            has_room: Condvar::new(),
        });
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || write_loop(&shared, out, pace))?
        };
        let guard = SinkGuard {
            shared: Arc::clone(&shared),
            writer: Some(writer),
        };
        Ok((Self { shared }, guard))
    }

    /// Appends `line` (one or more whole lines) for the writer.
    pub fn append(&self, line: &[u8]) {
        let mut pending = self.shared.lock();
        while pending.lines.len() >= MAX_PENDING && !pending.closed {
            pending = self
                .shared
                .has_room
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        pending.lines.extend_from_slice(line);
        if std::mem::take(&mut pending.writer_idle) {
            self.shared.has_lines.notify_one();
        }
    }
}

fn write_loop(shared: &Shared, mut out: impl Write, pace: Duration) {
    // Two buffers, swapped: lines gather in one while the other is written.
    let mut writing = Vec::new();
    loop {
        let closed = {
            let mut pending = shared.lock();
            while pending.lines.is_empty() && !pending.closed {
                pending.writer_idle = true;
                pending = shared
                    .has_lines
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            pending.writer_idle = false;
            std::mem::swap(&mut pending.lines, &mut writing);
            pending.closed
        };
        shared.has_room.notify_all();
        // Nowhere to report a failing stderr: the lines are dropped, the service goes on.
        let _ = out.write_all(&writing).and_then(|()| out.flush());
        writing.clear();
        if closed {
            return;
        }
        std::thread::sleep(pace);
    }
}

impl Drop for SinkGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.has_lines.notify_one();
        self.shared.has_room.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// tracing-subscriber's writer: it formats an event into a buffer of its own and writes it with
/// one `write_all`, so each call here is whole lines.
impl std::io::Write for &LineSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LineSink {
    type Writer = &'a LineSink;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A writer the test can read, and that can be made to block (a full pipe).
    #[derive(Clone, Default)]
    struct Capture {
        written: Arc<Mutex<Vec<u8>>>,
        writes: Arc<AtomicUsize>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_from_every_thread_arrives_whole_and_in_each_threads_order() {
        let capture = Capture::default();
        let (sink, guard) = LineSink::start(capture.clone(), PACE).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        sink.append(format!("thread {t} line {i}\n").as_bytes());
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(capture.written.lock().unwrap().clone()).unwrap();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let (t, i) = line
                .strip_prefix("thread ")
                .and_then(|l| l.split_once(" line "))
                .unwrap_or_else(|| panic!("torn line {line:?}"));
            let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(i, next[t], "thread {t} out of order");
            next[t] += 1;
        }
        assert_eq!(next, [5000; 4]);
        // Batched: far fewer writes than lines.
        assert!(capture.writes.load(Ordering::Relaxed) < 20_000 / 4);
    }

    #[test]
    fn a_blocked_writer_holds_lines_back_instead_of_dropping_them() {
        let capture = Capture::default();
        let gate = capture.gate.lock().unwrap();
        let (sink, guard) = LineSink::start(capture.clone(), Duration::ZERO).unwrap();
        let line = vec![b'x'; 1023]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        let appended = Arc::new(AtomicUsize::new(0));
        let producer = {
            let (sink, appended, line) = (sink.clone(), Arc::clone(&appended), line.clone());
            std::thread::spawn(move || {
                for _ in 0..3 * MAX_PENDING / line.len() {
                    sink.append(&line);
                    appended.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        // Held back: the buffer being written (blocked) and one full one, at most.
        let held = appended.load(Ordering::Relaxed);
        assert!(held <= 2 * (MAX_PENDING / line.len() + 1), "{held}");
        drop(gate);
        producer.join().unwrap();
        drop(guard);
        let written = capture.written.lock().unwrap().len();
        assert_eq!(written, 3 * MAX_PENDING / line.len() * line.len());
    }

    #[test]
    fn an_idle_writer_wakes_for_a_line_and_the_guard_writes_what_is_left() {
        let capture = Capture::default();
        let (sink, guard) = LineSink::start(capture.clone(), PACE).unwrap();
        sink.append(b"first\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while capture.written.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Idle again for a while, then a line, and the guard at once.
        std::thread::sleep(Duration::from_millis(20));
        sink.append(b"last\n");
        drop(guard);
        assert_eq!(&capture.written.lock().unwrap()[..], b"first\nlast\n");
    }
}
