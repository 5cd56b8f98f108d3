//! The reporter on a Redis outbox, end to end: real `redis-server`, real osmem-server.
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::outbox::redis_tests::Stalled;
use super::test_support::{
    all_docs, enqueue_raw, es, free_port, local_url, test_config, wait_until, Osmem,
};
use super::*;
use crate::clock::SystemClock;
use crate::redis_conn::RedisConn;
use crate::storage::redis_server::{self, RedisServer};

const INDEX: &str = ElasticConfig::DEFAULT_INDEX;
const WAIT: Duration = Duration::from_secs(15);

/// A replica's reporter: its own connection, the given server and prefix, the same instance id
/// for all (the shared sequence alone must keep their ids apart).
async fn replica(conn: RedisConn, prefix: &str, url: url::Url) -> Reporter {
    let outbox = RedisOutbox::new(conn, prefix, Duration::from_millis(300));
    Reporter::start(outbox, Arc::new(SystemClock), test_config(url))
        .await
        .unwrap()
}

async fn enqueue(reporter: &Reporter, n: u64) -> Result<String, ElasticError> {
    enqueue_raw(reporter, None, &json!({"n": n})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_outbox_and_each_document_arrives_once() {
    let server = Osmem::start();
    let prefix = redis_server::unique_prefix();
    let conn = || redis_server::shared().conn();
    let a = replica(conn(), &prefix, server.url.clone()).await;
    let b = replica(conn(), &prefix, server.url.clone()).await;
    let mut ids = BTreeSet::new();
    for n in 0..10 {
        ids.insert(enqueue(if n % 2 == 0 { &a } else { &b }, n).await.unwrap());
    }
    assert_eq!(ids.len(), 10, "distinct ids: {ids:?}");
    wait_until("10 documents sent", WAIT, || {
        a.stats().sent + b.stats().sent == 10
    })
    .await;
    // The replica that did not send the last batch sees the depth at its next poll.
    wait_until("both see an empty outbox", WAIT, || {
        a.stats().outbox_depth == 0 && b.stats().outbox_depth == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let docs = all_docs(&es(&server.url), INDEX).await;
    let got: BTreeSet<String> = docs.into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, ids);
    // One sender at a time: nothing was sent twice, so nothing was counted twice.
    assert_eq!(a.stats().sent + b.stats().sent, 10);
}

/// A replica that stops with documents waiting (Elasticsearch was away) leaves them in Redis;
/// another replica delivers them without any enqueue of its own to wake it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_a_stopped_replica_left_behind_are_delivered_by_another() {
    let server = Osmem::start();
    let prefix = redis_server::unique_prefix();
    let survivor = replica(redis_server::shared().conn(), &prefix, server.url.clone()).await;
    let gone = replica(
        redis_server::shared().conn(),
        &prefix,
        local_url(free_port()),
    )
    .await;
    let mut ids = BTreeSet::new();
    for n in 0..3 {
        ids.insert(enqueue(&gone, n).await.unwrap());
    }
    assert_eq!(gone.shutdown(Instant::now()).await.sent, 0);
    drop(gone);
    wait_until("the survivor delivered them", WAIT, || {
        survivor.stats().sent == 3
    })
    .await;
    let docs = all_docs(&es(&server.url), INDEX).await;
    let got: BTreeSet<String> = docs.into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, ids);
}

/// Redis stops answering (SIGSTOP) while documents wait for Elasticsearch: enqueue fails with a
/// typed error in time, the sender backs off, and when Redis answers again it delivers what was
/// stored, once, by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_pauses_delivery_and_it_resumes_by_itself() {
    let redis = RedisServer::start();
    let port = free_port();
    let conn = RedisConn::single(redis.client(), Duration::from_millis(300)).unwrap();
    let reporter = replica(conn, "p", local_url(port)).await;
    let mut ids = BTreeSet::new();
    for n in 0..3 {
        ids.insert(enqueue(&reporter, n).await.unwrap());
    }
    let stalled = Stalled::stop(&redis);
    let server = Osmem::start_on(port);
    let started = std::time::Instant::now();
    let err = enqueue(&reporter, 99).await.unwrap_err();
    assert!(matches!(err, ElasticError::Redis(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Elasticsearch is up but the outbox is unreadable: nothing can go out.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reporter.stats().sent, 0);
    drop(stalled);
    wait_until("3 documents sent", WAIT, || reporter.stats().sent == 3).await;
    let docs = all_docs(&es(&server.url), INDEX).await;
    let got: BTreeSet<String> = docs.into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, ids);
    assert_eq!(
        reporter.shutdown(Instant::now() + WAIT).await.outbox_depth,
        0
    );
}
