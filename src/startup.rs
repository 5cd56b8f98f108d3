//! Building the application from `Settings`: load the model, bind the listener, serve until told
//! to stop. Tests build it on `127.0.0.1:0` exactly as `main` does.
use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

use crate::auth::{Auth, AuthStore, RedisAuth};
use crate::classify::fetch::{FetchConfig, Fetcher};
use crate::classify::image::{DecodeLimits, PreprocessOptions};
use crate::classify::model::{
    Batching, Classifier, ModelConfig, ModelIdentity, ModelSource, Threads,
};
use crate::classify::pipeline::Pipeline;
use crate::classify::{ClassifyService, SingleFlight};
use crate::clock::{Clock, SystemClock};
use crate::config::{ExifOrientation, ModelFormat, OpsAuth, Settings};
use crate::elastic::{ElasticAuth, ElasticConfig, Reporter};
use crate::history::History;
use crate::http::{ModelInfo, Ops, OpsGate, Services};
use crate::localdb::LocalDb;
use crate::ratelimit::{RateLimits, SharedBuckets};
use crate::redis_conn::RedisConn;
use crate::report::ReportService;
use crate::storage::{BackendKind, RedisTarget, Storage, StorageConfig};

/// Inference requests that may wait behind the running batch before callers get `overloaded`.
const INFERENCE_QUEUE: usize = 64;
/// How long shutdown may spend delivering queued Elasticsearch documents; the rest stays in the
/// outbox for the next start.
const ES_DRAIN: Duration = Duration::from_secs(5);
/// A lease on computing a URL outlives the download's own timeout by this much (decode and
/// inference), so it expires only when its holder is gone, not while it is still working.
const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// How often refilled rate-limit buckets are dropped.
const RATE_LIMIT_SWEEP: Duration = Duration::from_secs(10);

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    services: Services,
    storage: Storage,
    shutdown_timeout: Duration,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// As `build`, with the clock cache expiry is judged by (tests move it forward).
    pub async fn build_with_clock(
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        // Where the state lives first: a bad data dir or an absent Redis should fail before
        // seconds of model loading.
        let home = StateHome::open(&settings).await?;
        let identity = model_identity(&settings).await?;
        let kind = storage_kind(&settings, &home);
        let storage =
            crate::storage::open(kind, clock.clone(), storage_config(&settings, &identity))
                .await
                .context("starting the storage layer")?;
        let auth = build_auth(&settings, auth_store(&settings, &home), clock.clone()).await?;
        let (reporter, history) = build_monitoring(&settings, &identity, &home, clock).await?;
        let history = fleet_history(&storage, history);
        let fetch_timeout: Duration = settings.fetch_timeout.into();
        let pipeline = build_pipeline(&settings).await?;
        let model = ModelInfo::new(&identity, pipeline.classifier.labels().len());
        let classify = ClassifyService::new(
            pipeline,
            SingleFlight::new(storage.cache().clone(), fetch_timeout + LEASE_MARGIN),
            storage.stats().clone(),
            history.clone(),
            settings.max_concurrent_requests,
        );
        let metrics = install_metrics(&settings, &identity);
        let ops_gate = ops_gate(&settings, &auth);
        let services = Services {
            classify,
            model,
            report: ReportService::new(storage.stats().clone(), reporter.clone()),
            history,
            auth,
            ops: Ops {
                ready: Arc::new(AtomicBool::new(false)),
                metrics,
                reporter,
            },
            ops_gate,
            cors: settings.cors_origins.clone(),
            trusted_proxies: settings.trusted_proxies.clone(),
            rate_limits: build_rate_limits(&settings, home.redis()),
        };
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let addr = listener.local_addr()?;
        Ok(Self {
            listener,
            addr,
            services,
            storage,
            shutdown_timeout: settings.shutdown_timeout.into(),
        })
    }

    /// The address actually bound (the port is chosen by the OS when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let routes = crate::http::routes(self.services.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = warp::serve(routes)
            .incoming(self.listener)
            .graceful(async {
                let _ = stop_rx.await;
            })
            .run();
        // Everything is loaded, warmed and open: ready before we say so.
        self.services.ops.ready.store(true, Ordering::Release);
        tracing::info!(addr = %self.addr, "ready, listening on http://{}", self.addr);
        let mut server = std::pin::pin!(server);
        tokio::select! {
            () = &mut server => {}
            () = shutdown => {
                // Load balancers polling /readyz stop sending while in-flight requests finish.
                self.services.ops.ready.store(false, Ordering::Release);
                let _ = stop_tx.send(());
                let grace = self.shutdown_timeout;
                if tokio::time::timeout(grace, server).await.is_err() {
                    tracing::warn!("requests still running after {grace:?}; stopping anyway");
                }
            }
        }
        if let Some(reporter) = &self.services.ops.reporter {
            let left = reporter
                .shutdown(tokio::time::Instant::now() + ES_DRAIN)
                .await;
            if left.outbox_depth > 0 {
                tracing::info!(
                    documents = left.outbox_depth,
                    "Elasticsearch documents kept for the next start"
                );
            }
        }
        // Handlers may still hold service clones; the final apply covers all they recorded.
        drop(self.services);
        self.storage
            .shutdown()
            .await
            .context("final commit of statistics and cache")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The per-client limits, and the sweep that drops refilled buckets (memory follows the
/// clients of the last few seconds, not every client ever seen).
/// With `--redis-url` the buckets are shared there; this process's stay as the fallback.
fn build_rate_limits(settings: &Settings, redis: Option<RedisConn>) -> RateLimits {
    let mut limits = RateLimits::new(settings.rate_limits());
    if !limits.enabled() {
        return limits;
    }
    if let Some(conn) = redis {
        let shared =
            SharedBuckets::new(conn, &settings.redis_prefix, settings.redis_timeout.into());
        limits = limits.shared(shared);
    }
    // The task ends with the runtime.
    drop(limits.spawn_sweeper(RATE_LIMIT_SWEEP));
    tracing::info!(
        config = ?settings.rate_limits(),
        shared = settings.redis_url.is_some(),
        "rate limits on"
    );
    limits
}

/// Where every piece of state lives (results, statistics, users, the Elasticsearch outbox):
/// this replica's redb file, or, with `--redis-url`, the Redis every replica shares. In Redis
/// mode the data dir is not opened at all: replicas are stateless.
enum StateHome {
    Local(LocalDb),
    Redis(RedisConn),
}

impl StateHome {
    async fn open(settings: &Settings) -> anyhow::Result<StateHome> {
        if let Some(conn) = connect_redis(settings).await? {
            return Ok(StateHome::Redis(conn));
        }
        let db = LocalDb::open_async(&settings.data_dir)
            .await
            .with_context(|| format!("opening the database in {}", settings.data_dir.display()))?;
        Ok(StateHome::Local(db))
    }

    fn redis(&self) -> Option<RedisConn> {
        match self {
            StateHome::Redis(conn) => Some(conn.clone()),
            StateHome::Local(_) => None,
        }
    }
}

fn storage_kind(settings: &Settings, home: &StateHome) -> BackendKind {
    match home {
        StateHome::Redis(conn) => BackendKind::Redis(Box::new(RedisTarget {
            conn: conn.clone(),
            prefix: settings.redis_prefix.clone(),
            timeout: settings.redis_timeout.into(),
        })),
        StateHome::Local(db) => BackendKind::Redb(db.clone()),
    }
}

/// Who may read the operator endpoints (`--ops-auth`).
fn ops_gate(settings: &Settings, auth: &Auth) -> OpsGate {
    match settings.ops_auth {
        OpsAuth::None => OpsGate::open(),
        OpsAuth::Token => OpsGate::token(auth.clone()),
    }
}

/// With `--redis-url`: the one connection storage and rate limits share, once Redis answers
/// (start-up waits up to `--redis-connect-timeout` for it).
pub async fn connect_redis(settings: &Settings) -> anyhow::Result<Option<RedisConn>> {
    let Some(url) = &settings.redis_url else {
        return Ok(None);
    };
    let spec = url
        .spec(settings.redis_cluster)
        .map_err(anyhow::Error::msg)
        .context("--redis-url")?;
    let conn = RedisConn::open_patiently(
        &spec,
        settings.redis_timeout.into(),
        settings.redis_connect_timeout.into(),
    )
    .await
    .with_context(|| format!("connecting to Redis at {url:?}"))?;
    Ok(Some(conn))
}

/// The Prometheus recorder (`None` with `--disable-metrics`), with the model's info gauge set.
fn install_metrics(settings: &Settings, identity: &ModelIdentity) -> Option<PrometheusHandle> {
    if settings.disable_metrics {
        return None;
    }
    let handle = crate::metrics::install();
    metrics::gauge!(
        crate::metrics::MODEL_INFO,
        "sha256" => identity.sha256.clone(),
        "name" => identity.name.clone(),
        "format" => identity.format.as_str(),
        "resize_filter" => identity.preprocessing.filter.to_string(),
    )
    .set(1.0);
    if settings.redis_url.is_some() {
        // Redis answered during start-up; the backend lowers it during an outage.
        metrics::gauge!(crate::metrics::STORAGE_UP).set(1.0);
    }
    handle
}

/// Fetcher + model + preprocessing settings: all `serve` and `classify` share.
pub async fn build_pipeline(settings: &Settings) -> anyhow::Result<Pipeline> {
    let fetch_timeout: Duration = settings.fetch_timeout.into();
    let fetcher = Fetcher::new(FetchConfig {
        allow_private_networks: settings.allow_private_networks,
        max_bytes: settings.max_image_bytes,
        timeout: fetch_timeout,
        connect_timeout: fetch_timeout.min(Duration::from_secs(5)),
        max_redirects: 5,
    })
    .context("building the HTTP client")?;
    let model = model_config(settings);
    let classifier = tokio::task::spawn_blocking(move || Classifier::load(&model))
        .await?
        .context("loading the model")?;
    Ok(Pipeline {
        fetcher,
        classifier,
        limits: DecodeLimits {
            max_pixels: settings.max_image_pixels,
            // Room for the largest allowed image at 16 bits per channel with alpha.
            max_alloc_bytes: settings.max_image_pixels.saturating_mul(8),
        },
        options: preprocess_options(settings),
    })
}

fn preprocess_options(settings: &Settings) -> PreprocessOptions {
    PreprocessOptions {
        filter: settings.resize_filter,
        jpeg_dct_scaling: settings.jpeg_dct_scaling,
        apply_exif_orientation: settings.exif_orientation == ExifOrientation::Apply,
    }
}

/// What cached results are filed under (see `classify::model::identity`). Hashing a model on
/// disk reads it once, so off the async workers; a missing model fails here, before the
/// storage layer starts.
async fn model_identity(settings: &Settings) -> anyhow::Result<ModelIdentity> {
    let (model, options) = (model_config(settings), preprocess_options(settings));
    tokio::task::spawn_blocking(move || {
        ModelIdentity::of(&model.source, model.labels_path().as_deref(), options)
    })
    .await?
    .context("loading the model")
}

async fn build_auth(
    settings: &Settings,
    store: AuthStore,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Auth> {
    let root = settings.root_key(&store).await?;
    Ok(Auth::new(store, root, settings.token_ttl.into(), clock))
}

fn auth_store(settings: &Settings, home: &StateHome) -> AuthStore {
    match home {
        StateHome::Redis(conn) => redis_auth_store(settings, conn),
        StateHome::Local(db) => AuthStore::Redb(db.clone()),
    }
}

/// The users and tokens of the deployment on this Redis (`--redis-prefix`).
pub fn redis_auth_store(settings: &Settings, conn: &RedisConn) -> AuthStore {
    AuthStore::Redis(RedisAuth::new(
        conn.clone(),
        &settings.redis_prefix,
        settings.redis_timeout.into(),
    ))
}

fn elastic_config(
    settings: &Settings,
    identity: &ModelIdentity,
) -> anyhow::Result<Option<ElasticConfig>> {
    let Some(url) = settings.elasticsearch_url.clone() else {
        return Ok(None);
    };
    let instance = settings.instance_id.clone().unwrap_or_else(host_name);
    let mut config = ElasticConfig::new(url, instance);
    config.index.clone_from(&settings.elasticsearch_index);
    config.model_sha256 = Some(identity.sha256.clone());
    config.outbox_max = settings.elasticsearch_outbox_max.max(1);
    config.auth = match (
        &settings.elasticsearch_api_key,
        &settings.elasticsearch_username,
        &settings.elasticsearch_password,
    ) {
        (Some(key), _, _) => ElasticAuth::ApiKey(key.clone()),
        (None, Some(username), Some(password)) => ElasticAuth::Basic {
            username: username.clone(),
            password: password.clone(),
        },
        (None, Some(_), None) | (None, None, Some(_)) => {
            anyhow::bail!("Elasticsearch basic auth needs both a username and a password")
        }
        (None, None, None) => ElasticAuth::None,
    };
    Ok(Some(config))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "classifier-api".to_owned())
}

/// The Elasticsearch reporter when configured, and the history it backs (else the in-memory ring).
/// Its outbox is in Redis when `--redis-url` is set (one for all replicas, no disk), else in
/// this replica's database.
async fn build_monitoring(
    settings: &Settings,
    identity: &ModelIdentity,
    home: &StateHome,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<(Option<Reporter>, History)> {
    let reporter = match elastic_config(settings, identity)? {
        Some(config) => {
            let outbox: crate::elastic::OutboxStore = match home {
                StateHome::Redis(conn) => crate::elastic::RedisOutbox::new(
                    conn.clone(),
                    &settings.redis_prefix,
                    settings.redis_timeout.into(),
                )
                .into(),
                StateHome::Local(db) => db.clone().into(),
            };
            Some(
                Reporter::start(outbox, clock.clone(), config)
                    .await
                    .context("starting the Elasticsearch reporter")?,
            )
        }
        None => None,
    };
    let history = match &reporter {
        Some(reporter) => History::with_source(clock, Arc::new(reporter.clone())),
        None => History::in_memory(clock),
    };
    Ok((reporter, history))
}

/// With `--redis-url`, `/report/history` answers for the whole fleet from Redis, ahead of
/// Elasticsearch and the ring (each knows only this replica); during an outage it answers 503.
fn fleet_history(storage: &Storage, local: History) -> History {
    storage.shared_history().map_or(local, History::shared)
}

fn storage_config(settings: &Settings, identity: &ModelIdentity) -> StorageConfig {
    StorageConfig {
        cache_scope: identity.cache_scope(),
        cache_ttl: settings.cache_ttl.into(),
        cache_capacity: settings.cache_capacity.max(1),
        flush_interval: settings.stats_flush_interval.into(),
        ..StorageConfig::default()
    }
}

fn model_config(settings: &Settings) -> ModelConfig {
    let source = match (&settings.model_dir, settings.model_format) {
        (Some(dir), format) => {
            ModelSource::from_dir(dir.clone(), format == ModelFormat::SavedModel)
        }
        (None, ModelFormat::FrozenGraph) => ModelSource::EmbeddedFrozenGraph,
        (None, ModelFormat::SavedModel) => ModelSource::EmbeddedSavedModel,
    };
    let inference_threads = match settings.inference_threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    // With one inference thread every run is alone already.
    let lone_session = settings.lone_request_session && inference_threads > 1;
    ModelConfig {
        source,
        labels: settings.labels.clone(),
        threads: Threads {
            // Cold c=8 on 2 cores: 158 img/s with TensorFlow's default, 200 with one thread
            // per run; a lone request 9.3 -> 9.9 ms (2026-12-02, readme's Performance).
            intra_op: settings
                .intra_op_threads
                .unwrap_or(if inference_threads > 1 { 1 } else { 0 }),
            inter_op: settings.inter_op_threads,
            own_pools: lone_session,
        },
        lone: lone_session.then_some(Threads {
            intra_op: 0,
            inter_op: settings.inter_op_threads,
            own_pools: true,
        }),
        batching: Batching {
            max_batch: settings.max_batch.max(1),
            wait: settings.batch_wait.into(),
            queue_capacity: INFERENCE_QUEUE,
            threads: inference_threads,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn a_lone_request_session_only_beside_several_inference_threads() {
        let lone = |args: &[&str]| {
            let cli =
                crate::cli::Cli::try_parse_from([&["classifier-api"], args].concat()).unwrap();
            let config = model_config(&cli.settings);
            (config.threads.own_pools, config.lone)
        };
        assert_eq!(lone(&["--inference-threads", "2"]), (false, None));
        let every_core = Threads {
            intra_op: 0,
            inter_op: 0,
            own_pools: true,
        };
        assert_eq!(
            lone(&["--inference-threads", "2", "--lone-request-session"]),
            (true, Some(every_core))
        );
        assert_eq!(
            lone(&["--inference-threads", "1", "--lone-request-session"]),
            (false, None)
        );
    }

    fn threads(args: &[&str]) -> (u32, usize) {
        let cli = crate::cli::Cli::try_parse_from([&["classifier-api"], args].concat()).unwrap();
        let config = model_config(&cli.settings);
        (config.threads.intra_op, config.batching.threads)
    }

    #[test]
    fn several_inference_threads_run_one_intra_op_thread_each_unless_told() {
        assert_eq!(threads(&["--inference-threads", "2"]), (1, 2));
        // One run at a time: TensorFlow's default spreads it over the cores.
        assert_eq!(threads(&["--inference-threads", "1"]), (0, 1));
        assert_eq!(
            threads(&["--inference-threads", "2", "--intra-op-threads", "0"]),
            (0, 2)
        );
        assert_eq!(
            threads(&["--inference-threads", "3", "--intra-op-threads", "2"]),
            (2, 3)
        );
    }
}
