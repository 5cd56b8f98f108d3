//! The outbox on Redis (`--redis-url`): one outbox for every replica on the same server and
//! prefix, so a replica keeps nothing on disk and a document queued by a replica that is gone is
//! delivered by another.
//!
//! Keys, under `--redis-prefix` `P`, all with the hash tag `{es}` so that every script's keys
//! share one Redis Cluster slot:
//!
//! | key               | type       | content                                                   |
//! |-------------------|------------|-----------------------------------------------------------|
//! | `P:{es}:seq`      | string     | last sequence number handed out (`INCR`)                  |
//! | `P:{es}:queue`    | sorted set | member = score = sequence of each waiting document        |
//! | `P:{es}:docs`     | hash       | sequence -> `frame(id) frame(source)`                     |
//! | `P:{es}:dead:queue` | sorted set | as `queue`, for the dead letters                        |
//! | `P:{es}:dead:docs`  | hash     | sequence -> `frame(ms) frame(reason) frame(id) frame(source)` |
//! | `P:{es}:sender`   | string     | the sender turn's owner token, with a TTL                 |
//!
//! `frame(s)` is `<byte length>:<s>`: any id or reason fits, and Lua can build a dead letter by
//! prefixing the stored document without parsing it. The sorted set gives the order (oldest
//! first, `ZPOPMIN` for the bound); the hash holds the text. Scores are sequence numbers, exact
//! in a double up to 2^53.
//!
//! **Ids never repeat**: the sequence is one `INCR` shared by all replicas and kept across their
//! restarts, and the id is fixed when the document is stored (`<instance>-<millis>-<seq>`), so
//! two replicas with the same instance id still make distinct ids. `init` lifts the counter
//! above every stored sequence in case the counter key alone was lost (evicted).
//!
//! **One sender at a time**: a replica sends only while it holds the turn, a lease
//! (`SET NX PX` with this outbox's own token, renewed before every batch, released by a script
//! only by its owner, and when its outbox is empty). Without it, every replica would send the
//! same oldest batch: still one document each in the index (`create` + 409 is "delivered"), but
//! N times the bulk traffic right when a recovering cluster can least take it, and `sent`
//! counted N times. The lease is an optimisation, not the guarantee: a holder stalled past its
//! TTL may overlap the next one, and then `create` with the fixed id keeps the index exact.
//! Replicas without the turn look again every [`IDLE_POLL`].
//!
//! Redis down: every call gives up after the timeout with [`RedisOutboxError`]; the outage is
//! logged once when it starts and once when it ends ([`Health`]). The connection reconnects by
//! itself.
use std::future::Future;
use std::time::Duration;

use redis::{RedisResult, Script, Value};

use super::{Peeked, Pending, Pushed, Settled};
use crate::outage::Health;
use crate::redis_conn::{guarded, CallError, RedisConn};

/// How often a sender without work (or without the turn) looks at the shared outbox again.
pub(crate) const IDLE_POLL: Duration = Duration::from_secs(2);

/// Why a Redis outbox call failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisOutboxError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("unreadable outbox entry: {0}")]
    Corrupt(String),
}

/// Pops the oldest members beyond `max` from a queue and their texts from its hash. Prepended
/// to the scripts that bound a queue.
const TRIM: &str = r#"
local function trim(queue, docs, max)
  local over = redis.call("ZCARD", queue) - max
  if over <= 0 then return 0 end
  local gone = redis.call("ZPOPMIN", queue, over)
  for i = 1, #gone, 2 do redis.call("HDEL", docs, gone[i]) end
  return over
end
"#;

/// KEYS: seq, queue, dead queue. Lifts seq to the highest stored sequence; returns the depth.
const INIT: &str = r#"
local floor = 0
for _, queue in ipairs({KEYS[2], KEYS[3]}) do
  local last = redis.call("ZRANGE", queue, -1, -1, "WITHSCORES")
  if last[2] and tonumber(last[2]) > floor then floor = tonumber(last[2]) end
end
if tonumber(redis.call("GET", KEYS[1]) or "0") < floor then redis.call("SET", KEYS[1], floor) end
return redis.call("ZCARD", KEYS[2])
"#;

/// KEYS: queue, docs. ARGV: seq, text, max. Returns {dropped, depth}.
const PUSH: &str = r#"
redis.call("HSET", KEYS[2], ARGV[1], ARGV[2])
redis.call("ZADD", KEYS[1], ARGV[1], ARGV[1])
local dropped = trim(KEYS[1], KEYS[2], tonumber(ARGV[3]))
return {dropped, redis.call("ZCARD", KEYS[1])}
"#;

/// KEYS: queue, docs. ARGV: limit. Returns depth, then seq/text pairs, oldest first.
const PEEK: &str = r#"
local out = {redis.call("ZCARD", KEYS[1])}
for _, seq in ipairs(redis.call("ZRANGE", KEYS[1], 0, tonumber(ARGV[1]) - 1)) do
  local text = redis.call("HGET", KEYS[2], seq)
  if text then table.insert(out, seq); table.insert(out, text) end
end
return out
"#;

/// KEYS: queue, docs, dead queue, dead docs. ARGV: now_ms, max_dead, number of delivered, the
/// delivered seqs, then refused seq/reason pairs. Returns {removed, dead, dead_dropped, depth}.
const SETTLE: &str = r#"
local function frame(s) return #s .. ":" .. s end
local delivered = tonumber(ARGV[3])
local removed, dead = 0, 0
for i = 4, 3 + delivered do
  if redis.call("ZREM", KEYS[1], ARGV[i]) == 1 then
    redis.call("HDEL", KEYS[2], ARGV[i])
    removed = removed + 1
  end
end
for i = 4 + delivered, #ARGV, 2 do
  local seq = ARGV[i]
  if redis.call("ZREM", KEYS[1], seq) == 1 then
    local text = redis.call("HGET", KEYS[2], seq) or ""
    redis.call("HDEL", KEYS[2], seq)
    redis.call("HSET", KEYS[4], seq, frame(ARGV[1]) .. frame(ARGV[i + 1]) .. text)
    redis.call("ZADD", KEYS[3], seq, seq)
    removed, dead = removed + 1, dead + 1
  end
end
local dead_dropped = trim(KEYS[3], KEYS[4], tonumber(ARGV[2]))
return {removed, dead, dead_dropped, redis.call("ZCARD", KEYS[1])}
"#;

/// KEYS: turn. ARGV: token, ttl_ms. Renews the caller's turn or takes a free one; 1 if held.
const TURN: &str = r#"
local owner = redis.call("GET", KEYS[1])
if owner == ARGV[1] then redis.call("PEXPIRE", KEYS[1], ARGV[2]) return 1 end
if not owner then redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2]) return 1 end
return 0
"#;

/// KEYS: turn. ARGV: token. Deletes the turn only if it is still the caller's.
const RELEASE: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0
"#;

struct Scripts {
    init: Script,
    push: Script,
    peek: Script,
    settle: Script,
    turn: Script,
    release: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            init: Script::new(INIT),
            push: Script::new(&format!("{TRIM}{PUSH}")),
            peek: Script::new(PEEK),
            settle: Script::new(&format!("{TRIM}{SETTLE}")),
            turn: Script::new(TURN),
            release: Script::new(RELEASE),
        }
    }
}

/// The outbox of every replica on one Redis and prefix. See the module doc for the data model.
pub struct RedisOutbox {
    conn: RedisConn,
    /// `P:{es}:`; every key starts with it.
    base: String,
    timeout: Duration,
    /// This outbox's name as the sender turn's owner.
    token: String,
    scripts: Scripts,
    health: Health,
}

impl std::fmt::Debug for RedisOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOutbox")
            .field("base", &self.base)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl RedisOutbox {
    /// On `conn` (which reconnects by itself), under `prefix`; every call gives up after
    /// `timeout`.
    pub fn new(conn: RedisConn, prefix: &str, timeout: Duration) -> Self {
        Self {
            conn,
            base: format!("{prefix}:{{es}}:"),
            timeout,
            token: crate::redis_conn::instance_name().1,
            scripts: Scripts::new(),
            health: Health::new("redis (elasticsearch outbox)", None),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.base)
    }

    /// One call with `--redis-timeout`, the outage logged once (see `redis_conn::guarded`).
    async fn run<T, F>(&self, call: impl FnOnce(RedisConn) -> F) -> Result<T, RedisOutboxError>
    where
        F: Future<Output = RedisResult<T>>,
    {
        Ok(guarded(&self.conn, self.timeout, &self.health, call).await?)
    }

    pub(crate) async fn init(&self) -> Result<u64, RedisOutboxError> {
        let keys = [self.key("seq"), self.key("queue"), self.key("dead:queue")];
        let script = &self.scripts.init;
        self.run(|mut c| async move { script.key(&keys[..]).invoke_async(&mut c).await })
            .await
    }

    /// Two round trips: the sequence first, because the id is made from it in Rust. A failure
    /// between them only skips a number.
    pub(crate) async fn push(
        &self,
        source: &str,
        max: usize,
        make_id: impl FnOnce(u64) -> String,
    ) -> Result<Pushed, RedisOutboxError> {
        let seq_key = self.key("seq");
        let seq: u64 = self
            .run(|mut c| async move { redis::cmd("INCR").arg(&seq_key).query_async(&mut c).await })
            .await?;
        let id = make_id(seq);
        let text = format!("{}{}", frame(&id), frame(source));
        let mut call = self.scripts.push.prepare_invoke();
        call.key(self.key("queue"))
            .key(self.key("docs"))
            .arg(seq)
            .arg(text)
            .arg(max);
        let (dropped, depth): (u64, u64) = self
            .run(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        Ok(Pushed {
            id,
            dropped,
            depth: Some(depth),
        })
    }

    pub(crate) async fn peek(&self, limit: usize) -> Result<Peeked, RedisOutboxError> {
        let mut call = self.scripts.peek.prepare_invoke();
        call.key(self.key("queue"))
            .key(self.key("docs"))
            .arg(limit.max(1));
        let reply: Vec<Value> = self
            .run(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        let (depth, rows) = reply
            .split_first()
            .ok_or_else(|| RedisOutboxError::Corrupt("empty peek reply".into()))?;
        let mut batch = Vec::with_capacity(rows.len() / 2);
        for pair in rows.chunks(2) {
            let [seq, text] = pair else {
                return Err(RedisOutboxError::Corrupt("odd peek reply".into()));
            };
            let seq: u64 = value(seq)?;
            let text: String = value(text)?;
            let [id, source] = frames::<2>(&text)?;
            batch.push(Pending {
                seq,
                id: id.to_owned(),
                source: source.to_owned(),
            });
        }
        batch.truncate(limit);
        Ok(Peeked {
            batch,
            depth: Some(value(depth)?),
        })
    }

    pub(crate) async fn settle(
        &self,
        delivered: &[u64],
        refused: &[(u64, String)],
        now_ms: u64,
        max_dead: usize,
    ) -> Result<Settled, RedisOutboxError> {
        let mut call = self.scripts.settle.prepare_invoke();
        for name in ["queue", "docs", "dead:queue", "dead:docs"] {
            call.key(self.key(name));
        }
        call.arg(now_ms).arg(max_dead).arg(delivered.len());
        for seq in delivered {
            call.arg(seq);
        }
        for (seq, reason) in refused {
            call.arg(seq).arg(reason);
        }
        let (removed, dead_lettered, dead_dropped, depth): (u64, u64, u64, u64) = self
            .run(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        Ok(Settled {
            removed,
            dead_lettered,
            dead_dropped,
            depth: Some(depth),
        })
    }

    pub(crate) async fn take_turn(&self, ttl: Duration) -> Result<bool, RedisOutboxError> {
        let mut call = self.scripts.turn.prepare_invoke();
        call.key(self.key("sender"))
            .arg(&self.token)
            .arg((ttl.as_millis() as u64).max(1));
        let held: i64 = self
            .run(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        Ok(held == 1)
    }

    pub(crate) async fn end_turn(&self) -> Result<(), RedisOutboxError> {
        let mut call = self.scripts.release.prepare_invoke();
        call.key(self.key("sender")).arg(&self.token);
        self.run(|mut c| async move { call.invoke_async::<i64>(&mut c).await })
            .await
            .map(|_| ())
    }

    /// The oldest `limit` dead letters (two reads: tests only, nothing writes meanwhile).
    #[cfg(test)]
    pub(crate) async fn dead_letters(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::elastic::test_support::DeadLetter>, RedisOutboxError> {
        let (queue, docs) = (self.key("dead:queue"), self.key("dead:docs"));
        let last = limit.max(1) - 1;
        let seqs: Vec<u64> = self
            .run(|mut c| async move {
                redis::cmd("ZRANGE")
                    .arg(&queue)
                    .arg(0)
                    .arg(last)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let docs = docs.clone();
            let text: String = self
                .run(|mut c| async move {
                    redis::cmd("HGET")
                        .arg(&docs)
                        .arg(seq)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            out.push(dead_letter(&text)?);
        }
        Ok(out)
    }
}

/// `<byte length>:<s>`.
fn frame(s: &str) -> String {
    format!("{}:{s}", s.len())
}

/// Exactly `N` frames, in order.
fn frames<const N: usize>(whole: &str) -> Result<[&str; N], RedisOutboxError> {
    let corrupt = || RedisOutboxError::Corrupt(format!("bad framing in {whole:.80?}"));
    let mut text = whole;
    let mut out = [""; N];
    for slot in &mut out {
        let (len, rest) = text.split_once(':').ok_or_else(corrupt)?;
        let len: usize = len.parse().map_err(|_| corrupt())?;
        if !rest.is_char_boundary(len) {
            return Err(corrupt());
        }
        (*slot, text) = rest.split_at(len);
    }
    if text.is_empty() {
        Ok(out)
    } else {
        Err(corrupt())
    }
}

fn value<T: redis::FromRedisValue>(v: &Value) -> Result<T, RedisOutboxError> {
    redis::from_redis_value_ref(v).map_err(|e| RedisOutboxError::Corrupt(e.to_string()))
}

#[cfg(test)]
fn dead_letter(text: &str) -> Result<crate::elastic::test_support::DeadLetter, RedisOutboxError> {
    let [ms, reason, id, source] = frames::<4>(text)?;
    let ms: u64 = ms
        .parse()
        .map_err(|_| RedisOutboxError::Corrupt(format!("bad dead-letter time {ms:?}")))?;
    Ok(crate::elastic::test_support::DeadLetter {
        id: id.to_owned(),
        source: source.to_owned(),
        reason: reason.to_owned(),
        rejected_at: crate::elastic::document::rfc3339_millis(
            std::time::UNIX_EPOCH + Duration::from_millis(ms),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_any_text() {
        let text = format!("{}{}", frame("a:b-1"), frame("{\"é\":\"x:y\"}"));
        assert_eq!(frames::<2>(&text).unwrap(), ["a:b-1", "{\"é\":\"x:y\"}"]);
        assert_eq!(frames::<1>("0:").unwrap(), [""]);
        for bad in ["", "3:ab", "x:ab", "1:ab", "1:é"] {
            assert!(frames::<1>(bad).is_err(), "{bad:?}");
        }
    }
}
