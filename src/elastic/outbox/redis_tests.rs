//! [`RedisOutbox`] against a real `redis-server` (the test binary's shared one, a prefix per
//! test; a server of its own where a test stops it; a three-master cluster once).
use std::time::Duration;

use super::{OutboxStore, RedisOutbox};
use crate::redis_conn::{RedisConn, RedisSpec};
use crate::storage::redis_server::{self, RedisServer};

const SECOND: Duration = Duration::from_secs(1);

fn on_shared(prefix: &str) -> OutboxStore {
    RedisOutbox::new(redis_server::shared().conn(), prefix, SECOND * 5).into()
}

fn fresh() -> OutboxStore {
    on_shared(&redis_server::unique_prefix())
}

async fn push(store: &OutboxStore, source: &str, max: usize) -> super::Pushed {
    store
        .push(source.to_owned(), max, |s| format!("id-{s}"))
        .await
        .unwrap()
}

fn ids(batch: &[super::Pending]) -> Vec<&str> {
    batch.iter().map(|p| p.id.as_str()).collect()
}

#[tokio::test]
async fn push_peek_settle_round_trip() {
    let store = fresh();
    assert_eq!(store.init().await.unwrap(), 0);
    for i in 0..4 {
        let p = push(&store, &format!("{{\"n\":{i}}}"), 10).await;
        assert_eq!((p.dropped, p.depth), (0, Some(i + 1)));
    }
    let peeked = store.peek(3).await.unwrap();
    assert_eq!(peeked.depth, Some(4));
    assert_eq!(ids(&peeked.batch), ["id-1", "id-2", "id-3"]);
    assert_eq!(peeked.batch[1].source, "{\"n\":1}");
    let seqs: Vec<u64> = peeked.batch.iter().map(|p| p.seq).collect();

    let refused = vec![(seqs[1], "mapper_parsing_exception: x:y".to_owned())];
    let s = store
        .settle(vec![seqs[0], seqs[2], 99], refused, 5, 10)
        .await
        .unwrap();
    assert_eq!(
        (s.removed, s.dead_lettered, s.dead_dropped, s.depth),
        (3, 1, 0, Some(1))
    );
    assert_eq!(ids(&store.pending(10).await), ["id-4"]);
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].id.as_str(), dead[0].source.as_str()),
        ("id-2", "{\"n\":1}")
    );
    assert_eq!(dead[0].reason, "mapper_parsing_exception: x:y");
    assert_eq!(dead[0].rejected_at, "1970-01-01T00:00:00.005Z");
    // Settling again (a retry after an unseen success) changes nothing.
    let again = store
        .settle(vec![seqs[0]], vec![(seqs[1], "x".into())], 6, 10)
        .await
        .unwrap();
    assert_eq!((again.removed, again.dead_lettered), (0, 0));
    assert_eq!(store.dead_letters(10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn bounds_drop_the_oldest_documents_and_dead_letters() {
    let store = fresh();
    let mut dropped = 0;
    for _ in 0..8 {
        dropped += push(&store, "{}", 5).await.dropped;
    }
    assert_eq!(dropped, 3);
    let batch = store.pending(100).await;
    assert_eq!(ids(&batch), ["id-4", "id-5", "id-6", "id-7", "id-8"]);
    let refused = batch.iter().map(|p| (p.seq, "r".to_owned())).collect();
    let s = store.settle(vec![], refused, 0, 2).await.unwrap();
    assert_eq!((s.removed, s.dead_lettered, s.dead_dropped), (5, 5, 3));
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(
        dead.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["id-7", "id-8"]
    );
}

/// The sequence is in Redis, shared and kept: a new outbox (a restart, another replica) never
/// hands out a number again, even with the outbox empty.
#[tokio::test]
async fn the_sequence_is_shared_and_survives_a_new_outbox() {
    let prefix = redis_server::unique_prefix();
    let (a, b) = (on_shared(&prefix), on_shared(&prefix));
    assert_eq!(push(&a, "{}", 10).await.id, "id-1");
    assert_eq!(push(&b, "{}", 10).await.id, "id-2");
    let waiting = a.pending(10).await;
    assert_eq!(ids(&waiting), ["id-1", "id-2"], "one outbox for both");
    let seqs = waiting.iter().map(|p| p.seq).collect();
    b.settle(seqs, vec![], 0, 10).await.unwrap();
    let restarted = on_shared(&prefix);
    assert_eq!(restarted.init().await.unwrap(), 0);
    assert_eq!(push(&restarted, "{}", 10).await.id, "id-3");
    // Another prefix is another deployment.
    assert_eq!(push(&fresh(), "{}", 10).await.id, "id-1");
}

/// `init` lifts a lost (evicted) counter above the stored documents, or the next push would
/// overwrite a waiting one.
#[tokio::test]
async fn init_repairs_a_lost_sequence() {
    let prefix = redis_server::unique_prefix();
    let store = on_shared(&prefix);
    for _ in 0..3 {
        push(&store, "{}", 10).await;
    }
    let mut conn = redis_server::shared().conn();
    redis::cmd("DEL")
        .arg(format!("{prefix}:{{es}}:seq"))
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert_eq!(store.init().await.unwrap(), 3);
    assert_eq!(push(&store, "{}", 10).await.id, "id-4");
    assert_eq!(store.pending(10).await.len(), 4);
}

#[tokio::test]
async fn one_sender_turn_at_a_time_released_only_by_its_owner() {
    let prefix = redis_server::unique_prefix();
    let (a, b) = (on_shared(&prefix), on_shared(&prefix));
    let ttl = Duration::from_millis(300);
    assert!(a.take_turn(ttl).await.unwrap());
    assert!(!b.take_turn(ttl).await.unwrap());
    // b giving up a turn it does not hold leaves a's in place.
    b.end_turn().await;
    assert!(!b.take_turn(ttl).await.unwrap());
    // Renewing keeps it past the first TTL.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.take_turn(ttl).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!b.take_turn(ttl).await.unwrap());
    a.end_turn().await;
    assert!(b.take_turn(ttl).await.unwrap());
    // An owner that is gone (never renews) loses it to the TTL.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(a.take_turn(ttl).await.unwrap());
}

/// Redis not answering is a typed error within the timeout, for enqueue and the sender's calls
/// alike; once it answers again the same outbox works, and nothing stored was lost.
#[tokio::test]
async fn a_stalled_redis_is_an_error_in_time_then_it_recovers() {
    let server = RedisServer::start();
    let timeout = Duration::from_millis(300);
    let conn = RedisConn::single(server.client(), timeout).unwrap();
    let store: OutboxStore = RedisOutbox::new(conn, "p", timeout).into();
    push(&store, "{\"before\":1}", 10).await;
    let stalled = Stalled::stop(&server);
    let started = std::time::Instant::now();
    let err = store
        .push("{}".to_owned(), 10, |s| s.to_string())
        .await
        .unwrap_err();
    assert!(
        matches!(err, crate::elastic::ElasticError::Redis(_)),
        "{err}"
    );
    assert!(started.elapsed() < SECOND * 2, "{:?}", started.elapsed());
    assert!(store.peek(10).await.is_err());
    assert!(store.take_turn(SECOND).await.is_err());
    drop(stalled);
    let mut back = None;
    for _ in 0..50 {
        if let Ok(peeked) = store.peek(10).await {
            back = Some(peeked.batch);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back = back.expect("answers again");
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].source, "{\"before\":1}");
}

/// A Redis Cluster: every key of the outbox has the `{es}` tag, so each script runs on one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_on_a_redis_cluster() {
    let cluster = redis_server::RedisCluster::start();
    let spec = RedisSpec::Cluster(cluster.urls());
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let conn = RedisConn::open(&spec, SECOND * 5).await.unwrap();
        replicas.push(OutboxStore::from(RedisOutbox::new(conn, "c", SECOND * 5)));
    }
    let (a, b) = (&replicas[0], &replicas[1]);
    assert_eq!(a.init().await.unwrap(), 0);
    push(a, "{}", 3).await;
    push(b, "{}", 3).await;
    assert!(a.take_turn(SECOND).await.unwrap());
    assert!(!b.take_turn(SECOND).await.unwrap());
    let batch = b.pending(10).await;
    assert_eq!(ids(&batch), ["id-1", "id-2"]);
    let s = a
        .settle(vec![batch[0].seq], vec![(batch[1].seq, "r".into())], 0, 3)
        .await
        .unwrap();
    assert_eq!((s.removed, s.dead_lettered, s.depth), (2, 1, Some(0)));
    assert_eq!(b.dead_letters(10).await.unwrap()[0].id, "id-2");
    a.end_turn().await;
    assert!(b.take_turn(SECOND).await.unwrap());
}

/// SIGSTOP on a test's own redis-server: it keeps its data and its port but answers nothing.
/// SIGCONT on drop, so a failing test does not leave it stopped.
pub(crate) struct Stalled(u32);

impl Stalled {
    pub(crate) fn stop(server: &RedisServer) -> Stalled {
        let pid = server_pid(server);
        signal(pid, "-STOP");
        Stalled(pid)
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

/// The server's own answer (`INFO server`), since the harness keeps its child private.
fn server_pid(server: &RedisServer) -> u32 {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &server.port.to_string(), "info", "server"])
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
        .expect("INFO server names the process")
}

fn signal(pid: u32, which: &str) {
    let ok = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {which} {pid}");
}
