//! The inference threads: they share the TensorFlow session, take requests from one bounded
//! queue, and each runs whatever arrived together as one batch (dynamic batching), so
//! concurrent requests share a session run instead of queueing behind each other one image at a
//! time.
//!
//! Why more than one (`--inference-threads`, one per core by default): two session runs at once
//! kept both cores busier than one run of a batch twice the size. On 2 cores, model only, batches
//! of 4: 210 img/s one run at a time, 257 two at a time; with a thread that is busy 1 ms in 7
//! beside them (a request's decode and HTTP), 183 and 235. One run spreads each operation over
//! both cores and waits for the slower half; two runs need no such rendezvous. The thread that
//! holds the queue gathers the next batch while the other runs its own.
//!
//! With `--lone-request-session` a second session, whose operations use every core, takes a
//! single image while no other run is under way ([`runs_alone`]).
//!
//! Why plain threads: `Session::run` blocks for milliseconds and uses TF's own thread pools; on
//! tokio's workers it would stall unrelated requests (TEI's `backends` does the same).
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use super::engine::{Engine, EngineError, INPUT_LEN};

/// How requests are grouped into session runs.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most images in session runs at once, split evenly between the threads: two runs of 4
    /// hold the activations of one run of 8 (peak RSS), and answered as fast on 2 cores.
    pub max_batch: usize,
    /// How long the first request of a batch may wait for company. Zero: batch only what is
    /// already queued, never delay a lone request.
    pub wait: Duration,
    /// Requests waiting beyond the running batches; when full, callers get `Overloaded` at once.
    pub queue_capacity: usize,
    /// Session runs at once: the inference threads.
    pub threads: usize,
}

impl Batching {
    /// Most images in one session run: `max_batch` split between the threads.
    pub fn per_run(&self) -> usize {
        self.max_batch.div_ceil(self.threads.max(1)).max(1)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("the inference queue is full")]
    Overloaded,
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the inference thread has stopped")]
    Stopped,
}

/// The softmax output for one image.
pub type Probabilities = Vec<f32>;

struct Job {
    input: Box<[f32]>,
    reply: oneshot::Sender<Result<Probabilities, String>>,
    span: tracing::Span,
}

/// Cheap-to-clone handle to the inference threads. Dropping the last handle closes the queue and
/// waits for the threads to finish their batches and free the session.
#[derive(Clone)]
pub struct InferenceHandle {
    queue: SyncSender<Job>,
    /// Declared after `queue`, so dropped after it: when the last `Arc` goes, every sender is
    /// gone, the threads' `recv` fails and the joins return.
    _threads: Arc<JoinOnDrop>,
}

struct JoinOnDrop(Vec<JoinHandle<()>>);

impl Drop for JoinOnDrop {
    fn drop(&mut self) {
        for thread in self.0.drain(..) {
            if thread.join().is_err() {
                tracing::error!("an inference thread panicked");
            }
        }
    }
}

/// The sessions the inference threads share, and how many runs are under way.
struct Engines {
    shared: Engine,
    /// `--lone-request-session`: a session whose operations use every core, for a request
    /// that runs alone (one thread per run keeps concurrent runs from waiting on each other,
    /// but leaves a lone request one core: 7.7 instead of 6.6 ms model-only).
    lone: Option<Engine>,
    running: AtomicUsize,
}

impl Engines {
    /// Runs `n` images on the session that suits them, counted as under way meanwhile.
    fn run(&self, inputs: &[f32], n: usize) -> Result<(Vec<f32>, usize), EngineError> {
        let others = self.running.fetch_add(1, Ordering::SeqCst);
        // Counted down even if the run panics, so the lone session is not lost with it.
        let _under_way = RunGuard(&self.running);
        match &self.lone {
            Some(lone) if runs_alone(n, others) => lone.run(inputs, n),
            _ => self.shared.run(inputs, n),
        }
    }
}

/// A single image with no other run under way takes the lone session. A run that starts
/// beside it takes the shared one: for as long as they overlap, three threads share two cores.
fn runs_alone(n: usize, other_runs: usize) -> bool {
    n == 1 && other_runs == 0
}

struct RunGuard<'a>(&'a AtomicUsize);

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl InferenceHandle {
    /// Moves `engine` (and the `lone` one, if any) onto `batching.threads` threads (at least
    /// one), which share them.
    pub fn spawn(
        engine: Engine,
        lone: Option<Engine>,
        batching: Batching,
    ) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::sync_channel(batching.queue_capacity);
        let engines = Arc::new(Engines {
            shared: engine,
            lone,
            running: AtomicUsize::new(0),
        });
        let jobs = Arc::new(Mutex::new(jobs));
        let mut threads = JoinOnDrop(Vec::new());
        for i in 0..batching.threads.max(1) {
            let (engines, jobs) = (Arc::clone(&engines), Arc::clone(&jobs));
            let thread = std::thread::Builder::new()
                .name(format!("inference-{i}"))
                .spawn(move || run_loop(&engines, &jobs, batching));
            match thread {
                Ok(thread) => threads.0.push(thread),
                Err(e) => {
                    // The queue first: the threads already started then see it closed, and
                    // dropping `threads` joins them instead of waiting forever.
                    drop(queue);
                    drop(threads);
                    return Err(e);
                }
            }
        }
        Ok(Self {
            queue,
            _threads: Arc::new(threads),
        })
    }

    /// Queues one preprocessed image (`INPUT_LEN` floats) and waits for its probabilities.
    pub async fn infer(&self, input: Box<[f32]>) -> Result<Probabilities, InferError> {
        debug_assert_eq!(input.len(), INPUT_LEN);
        let (reply, answer) = oneshot::channel();
        let job = Job {
            input,
            reply,
            span: tracing::Span::current(),
        };
        self.queue.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => InferError::Overloaded,
            TrySendError::Disconnected(_) => InferError::Stopped,
        })?;
        metrics::gauge!(crate::metrics::INFERENCE_QUEUE).increment(1.0);
        match answer.await {
            Ok(Ok(probs)) => Ok(probs),
            Ok(Err(message)) => Err(InferError::Engine(EngineError::Run(message))),
            Err(_) => Err(InferError::Stopped),
        }
    }
}

fn run_loop(engines: &Engines, jobs: &Mutex<mpsc::Receiver<Job>>, batching: Batching) {
    let max_batch = batching.per_run();
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    let mut inputs: Vec<f32> = Vec::with_capacity(max_batch * INPUT_LEN);
    loop {
        // The queue is unlocked at the end of this statement, before the batch runs, so
        // another thread gathers the next one meanwhile.
        let gathered = gather(
            &crate::sync::lock(jobs),
            &mut batch,
            max_batch,
            batching.wait,
        );
        // `gather` fails only when every handle is gone: the service is shutting down.
        if gathered.is_err() {
            return;
        }
        metrics::gauge!(crate::metrics::INFERENCE_QUEUE).decrement(batch.len() as f64);
        // A caller that gave up (request cancelled) need not be computed.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        inputs.clear();
        for job in &batch {
            inputs.extend_from_slice(&job.input);
        }
        let n = batch.len();
        metrics::histogram!(crate::metrics::INFERENCE_BATCH).record(n as f64);
        let started = Instant::now();
        let result = engines.run(&inputs, n);
        let elapsed = started.elapsed();
        match result {
            Ok((probs, classes)) => {
                for (job, row) in batch.drain(..).zip(probs.chunks_exact(classes)) {
                    job.span.in_scope(|| {
                        tracing::debug!(
                            batch = n,
                            inference_ms = elapsed.as_secs_f64() * 1e3,
                            "inference done"
                        );
                    });
                    let _ = job.reply.send(Ok(row.to_vec()));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(message.clone()));
                }
            }
        }
    }
}

/// Waits for a first job, then takes what else arrives within `wait` (or is queued already),
/// up to `max_batch`. Called with the queue locked: one thread gathers while others run.
fn gather(
    jobs: &mpsc::Receiver<Job>,
    batch: &mut Vec<Job>,
    max_batch: usize,
    wait: Duration,
) -> Result<(), mpsc::RecvError> {
    batch.push(jobs.recv()?);
    let deadline = Instant::now() + wait;
    while batch.len() < max_batch {
        let next = match deadline.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => jobs.recv_timeout(left),
            _ => jobs.try_recv().map_err(|_| RecvTimeoutError::Timeout),
        };
        match next {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batching(max_batch: usize, threads: usize) -> Batching {
        Batching {
            max_batch,
            wait: Duration::ZERO,
            queue_capacity: 1,
            threads,
        }
    }

    #[test]
    fn the_batch_limit_is_shared_between_the_threads() {
        assert_eq!(batching(8, 1).per_run(), 8);
        assert_eq!(batching(8, 2).per_run(), 4);
        assert_eq!(batching(8, 3).per_run(), 3);
        // Never zero, whatever is configured.
        assert_eq!(batching(1, 4).per_run(), 1);
        assert_eq!(batching(0, 0).per_run(), 1);
    }

    #[test]
    fn only_a_single_image_with_no_other_run_under_way_runs_alone() {
        assert!(runs_alone(1, 0));
        assert!(!runs_alone(1, 1), "another run holds a core");
        assert!(!runs_alone(2, 0), "a batch: requests are arriving together");
    }

    #[test]
    fn gather_takes_what_is_queued_up_to_the_limit_and_fails_once_closed() {
        let (queue, jobs) = mpsc::sync_channel(8);
        let mut answers = Vec::new();
        for _ in 0..5 {
            let (reply, answer) = oneshot::channel();
            answers.push(answer);
            let job = Job {
                input: Box::new([]),
                reply,
                span: tracing::Span::none(),
            };
            queue.send(job).unwrap();
        }
        let mut batch = Vec::new();
        gather(&jobs, &mut batch, 3, Duration::ZERO).unwrap();
        assert_eq!(batch.len(), 3);
        batch.clear();
        gather(&jobs, &mut batch, 3, Duration::ZERO).unwrap();
        assert_eq!(
            batch.len(),
            2,
            "only what was queued; a lone request is not held"
        );
        drop(queue);
        batch.clear();
        assert!(gather(&jobs, &mut batch, 3, Duration::ZERO).is_err());
    }
}
