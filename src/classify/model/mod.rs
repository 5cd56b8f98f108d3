//! MobileNet behind a handle: load (embedded or from disk), warm up, classify on the inference threads.
mod embedded;
mod engine;
mod identity;
mod labels;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

pub use engine::{Engine, EngineError, ModelSource, Threads, INPUT_LEN, LABELS_FILE};
pub use identity::{IdentityError, ModelFormat, ModelIdentity, PIPELINE_REVISION};
pub use labels::{Labels, LabelsError};
pub use worker::{Batching, InferError, InferenceHandle, Probabilities};

use crate::domain::{Classification, Prediction, MAX_TOP_K};

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub source: ModelSource,
    /// A labels file in `imagenet_class_index.json` form; `None` uses the one that comes with a
    /// model on disk ([`ModelSource::labels_beside`]), else the embedded one.
    pub labels: Option<PathBuf>,
    pub threads: Threads,
    /// `--lone-request-session`: the threads of a second session for a request that runs
    /// alone (see `worker.rs`); `None`, the default, loads only the shared one.
    pub lone: Option<Threads>,
    pub batching: Batching,
}

impl ModelConfig {
    /// The labels file this configuration reads (`None`: the embedded labels). The model
    /// identity hashes the same file.
    pub fn labels_path(&self) -> Option<PathBuf> {
        self.labels.clone().or_else(|| self.source.labels_beside())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("labels {path}: {source}")]
    Labels { path: String, source: LabelsError },
    #[error("reading labels {path}: {source}")]
    LabelsIo {
        path: String,
        source: std::io::Error,
    },
    #[error("the model has {classes} outputs but the labels file has {labels} entries")]
    LabelCount { classes: usize, labels: usize },
    #[error("starting the inference thread: {0}")]
    Thread(std::io::Error),
}

/// The model, warmed up and running on its own thread. Cheap to clone.
#[derive(Clone)]
pub struct Classifier {
    handle: InferenceHandle,
    labels: Arc<Labels>,
}

impl Classifier {
    /// Loads the model and labels, checks they agree, and runs the model once per batch size it
    /// will see first (TF's first run of a shape costs hundreds of ms), so the first user request
    /// is as fast as the rest. Blocking: call before serving.
    pub fn load(config: &ModelConfig) -> Result<Self, ModelError> {
        let started = Instant::now();
        // What the dynamic linker and TF's static initialisers touched is not needed to serve;
        // what loading and running the model needs faults back in (see `crate::rss`).
        crate::rss::drop_library_pages("libtensorflow");
        let engine = Engine::load(&config.source, config.threads)?;
        let labels_path = config.labels_path();
        let labels = read_labels(labels_path.as_ref())?;
        let loaded = started.elapsed();
        let max_batch = config.batching.per_run();
        warm_up(&engine, max_batch, labels.len())?;
        let lone = match config.lone {
            Some(threads) => {
                let lone = Engine::load(&config.source, threads)?;
                // It only ever runs one image.
                warm_up(&lone, 1, labels.len())?;
                Some(lone)
            }
            None => None,
        };
        // What the memory work above achieved, for operators sizing containers (0 off Linux).
        let (rss_kib, peak_rss_kib) = crate::rss::resident_kib().unwrap_or_default();
        tracing::info!(
            source = ?config.source,
            labels = %labels_path.as_ref().map_or("(embedded)".into(), |p| p.display().to_string()),
            classes = labels.len(),
            lone_request_session = lone.is_some(),
            load_ms = loaded.as_millis() as u64,
            warmup_ms = (started.elapsed() - loaded).as_millis() as u64,
            rss_kib,
            peak_rss_kib,
            "model ready"
        );
        let handle =
            InferenceHandle::spawn(engine, lone, config.batching).map_err(ModelError::Thread)?;
        Ok(Self {
            handle,
            labels: Arc::new(labels),
        })
    }

    /// The full softmax output for one preprocessed image.
    pub async fn probabilities(&self, input: Box<[f32]>) -> Result<Probabilities, InferError> {
        self.handle.infer(input).await
    }

    /// The most likely classes (up to [`MAX_TOP_K`]) and their probabilities.
    pub async fn classify(&self, input: Box<[f32]>) -> Result<Classification, InferError> {
        let probs = self.probabilities(input).await?;
        Ok(self.ranked(&probs))
    }

    /// The top [`MAX_TOP_K`] of a softmax output, highest first; ties keep the lower index first.
    pub fn ranked(&self, probs: &[f32]) -> Classification {
        let mut order: Vec<usize> = (0..probs.len()).collect();
        let by_probability = |a: &usize, b: &usize| probs[*b].total_cmp(&probs[*a]).then(a.cmp(b));
        if order.len() > MAX_TOP_K {
            // Partition first: a full sort of 1000 classes per image is wasted work.
            order.select_nth_unstable_by(MAX_TOP_K - 1, by_probability);
            order.truncate(MAX_TOP_K);
        }
        order.sort_unstable_by(by_probability);
        // Load checked the label count equals the output width.
        let label = |i: usize| self.labels.get(i).unwrap_or("unknown");
        let mut ranked = order.into_iter().map(|i| (label(i), probs[i]));
        let (top_label, confidence) = ranked.next().unwrap_or(("unknown", 0.0));
        Classification {
            label: Arc::from(top_label),
            confidence,
            runners_up: ranked
                .map(|(label, confidence)| Prediction {
                    label: Arc::from(label),
                    confidence,
                })
                .collect(),
        }
    }

    pub fn labels(&self) -> &Labels {
        &self.labels
    }
}

/// Runs `engine` at batch 1 and at `max_batch`, and checks its output width against the
/// labels.
fn warm_up(engine: &Engine, max_batch: usize, labels: usize) -> Result<(), ModelError> {
    let sizes: &[usize] = if max_batch > 1 { &[1, max_batch] } else { &[1] };
    for &n in sizes {
        let (_, classes) = engine.run(&vec![0.0; n * INPUT_LEN], n)?;
        if classes != labels {
            return Err(ModelError::LabelCount { classes, labels });
        }
        // The first run optimises the graph through copies of it (~100 MiB, then freed);
        // give that back before the larger batch grows TensorFlow's tensor pool.
        crate::rss::trim_heap();
    }
    Ok(())
}

fn read_labels(path: Option<&PathBuf>) -> Result<Labels, ModelError> {
    match path {
        None => Labels::from_json(embedded::labels_json()).map_err(|source| ModelError::Labels {
            path: "(embedded)".into(),
            source,
        }),
        Some(path) => {
            let shown = path.display().to_string();
            let bytes = std::fs::read(path).map_err(|source| ModelError::LabelsIo {
                path: shown.clone(),
                source,
            })?;
            Labels::from_json(&bytes).map_err(|source| ModelError::Labels {
                path: shown,
                source,
            })
        }
    }
}
