//! The one connection to Redis that the storage backend and the shared rate limits use: a
//! single server through a reconnecting `ConnectionManager`, or a Redis Cluster
//! (`--redis-cluster`) through the crate's cluster connection, which routes each command (and
//! each script, by its first key) to the node that owns the slot.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::outage::Health;

/// Where Redis is: one URL, or a cluster's seed nodes.
#[derive(Clone)]
pub enum RedisSpec {
    Single(String),
    Cluster(Vec<String>),
}

#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// A single server, connected on first use; every reply and connect gives up after
    /// `timeout`, and a lost connection is made again by itself.
    pub fn single(client: redis::Client, timeout: Duration) -> RedisResult<Self> {
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout));
        ConnectionManager::new_lazy_with_config(client, config).map(Self::Single)
    }

    /// Connects (a cluster connection must learn the slot map first) and checks with `PING`.
    pub async fn open(spec: &RedisSpec, timeout: Duration) -> RedisResult<Self> {
        let mut conn = match spec {
            RedisSpec::Single(url) => Self::single(redis::Client::open(url.as_str())?, timeout)?,
            RedisSpec::Cluster(nodes) => Self::Cluster(
                ClusterClient::builder(nodes.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .build()?
                    .get_async_connection()
                    .await?,
            ),
        };
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(conn)
    }

    /// [`open`](Self::open), retried with backoff (100 ms doubling to 2 s) until `patience` is
    /// spent: replicas and Redis often start together. The last error is the answer.
    pub async fn open_patiently(
        spec: &RedisSpec,
        timeout: Duration,
        patience: Duration,
    ) -> RedisResult<Self> {
        let give_up = tokio::time::Instant::now() + patience;
        let mut pause = Duration::from_millis(100);
        loop {
            let attempt = tokio::time::timeout(
                timeout.max(Duration::from_secs(1)),
                Self::open(spec, timeout),
            );
            match attempt.await {
                Ok(Ok(conn)) => return Ok(conn),
                failed if tokio::time::Instant::now() + pause >= give_up => {
                    return Err(match failed {
                        Ok(Err(e)) => e,
                        _ => redis::RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no answer",
                        )),
                    })
                }
                failed => {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "no answer".to_owned(),
                    };
                    tracing::info!(error, retry_in = ?pause, "waiting for Redis");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Why a guarded call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("no answer from redis within {0:?}")]
    Timeout(Duration),
}

/// Runs one command or script on a clone of `conn` with a deadline (the connection's own
/// timeout covers the reply; this also covers a reconnect in progress), and tells `health` how
/// it went, so an outage is logged once however many calls fail.
pub async fn guarded<T, F>(
    conn: &RedisConn,
    timeout: Duration,
    health: &Health,
    call: impl FnOnce(RedisConn) -> F,
) -> Result<T, CallError>
where
    F: std::future::Future<Output = RedisResult<T>>,
{
    let result = match tokio::time::timeout(timeout, call(conn.clone())).await {
        Ok(result) => result.map_err(CallError::from),
        Err(_) => Err(CallError::Timeout(timeout)),
    };
    match &result {
        Ok(_) => health.up(),
        Err(e) => health.failed(e),
    }
    result
}

/// A name for one Redis-backed object of this process, `<process seed>-<n>`, and its `n`:
/// unique across processes (the seed) and within one (tests run several replicas in one).
pub(crate) fn instance_name() -> (u64, String) {
    static INSTANCES: AtomicU64 = AtomicU64::new(0);
    let instance = INSTANCES.fetch_add(1, Ordering::Relaxed);
    (
        instance,
        format!("{:016x}-{instance}", crate::clock::process_seed()),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn instance_names_differ_within_a_process_and_carry_its_seed() {
        let (a, name_a) = super::instance_name();
        let (b, name_b) = super::instance_name();
        assert_ne!(a, b);
        assert_ne!(name_a, name_b);
        let seed = format!("{:016x}-", crate::clock::process_seed());
        assert!(name_a.starts_with(&seed) && name_b.starts_with(&seed));
        assert!(name_b.ends_with(&format!("-{b}")), "{name_b}");
    }
}
