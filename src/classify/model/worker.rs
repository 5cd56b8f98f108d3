//! The inference thread: owns the TensorFlow session, takes requests from a bounded queue, and runs
//! whatever arrived together as one batch (dynamic batching), so concurrent requests share a session
//! run instead of queueing behind each other one image at a time.
//!
//! Why a plain thread: `Session::run` blocks for milliseconds and uses TF's own thread pools; on
//! tokio's workers it would stall unrelated requests (TEI's `backends` does the same).
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use super::engine::{Engine, EngineError, INPUT_LEN};

/// How requests are grouped into session runs.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most images in one session run.
    pub max_batch: usize,
    /// How long the first request of a batch may wait for company. Zero: batch only what is
    /// already queued, never delay a lone request.
    pub wait: Duration,
    /// Requests waiting beyond the running batch; when full, callers get `Overloaded` at once.
    pub queue_capacity: usize,
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

/// Cheap-to-clone handle to the inference thread. Dropping the last handle closes the queue and
/// waits for the thread to finish its batch and free the session.
#[derive(Clone)]
pub struct InferenceHandle {
    queue: SyncSender<Job>,
    /// Declared after `queue`, so dropped after it: when the last `Arc` goes, every sender is
    /// gone, the thread's `recv` fails and the join returns.
    _thread: Arc<JoinOnDrop>,
}

struct JoinOnDrop(Option<JoinHandle<()>>);

impl Drop for JoinOnDrop {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            if thread.join().is_err() {
                tracing::error!("the inference thread panicked");
            }
        }
    }
}

impl InferenceHandle {
    /// Moves `engine` onto its own thread.
    pub fn spawn(engine: Engine, batching: Batching) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::sync_channel(batching.queue_capacity);
        let thread = std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || run_loop(&engine, &jobs, batching))?;
        Ok(Self {
            queue,
            _thread: Arc::new(JoinOnDrop(Some(thread))),
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

fn run_loop(engine: &Engine, jobs: &mpsc::Receiver<Job>, batching: Batching) {
    let max_batch = batching.max_batch.max(1);
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    let mut inputs: Vec<f32> = Vec::with_capacity(max_batch * INPUT_LEN);
    // `recv` fails only when every handle is gone: the service is shutting down.
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        let deadline = Instant::now() + batching.wait;
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
        let result = engine.run(&inputs, n);
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
