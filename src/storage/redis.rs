//! A backend on Redis, shared by every replica that names the same server and prefix: results,
//! leases (single flight across replicas) and statistics.
//!
//! Keys, under `--redis-prefix` (`classifier`):
//! - `P:cache:<key>`: a result as JSON with its absolute expiry; Redis's own expiry (set to the
//!   same moment) only collects garbage, the caller's clock judges freshness.
//! - `P:lease:<key>`: the owner's token, with the lease's TTL; released by a script that
//!   deletes it only if the token is still the caller's.
//! - `P:{stats}:rows` (hash URL -> "count min max sum"), `P:{stats}:top` (sorted set, score
//!   -count: ascending order is count descending, then URL ascending, as the report wants),
//!   `P:{stats}:totals`, `P:{stats}:seq:<replica>`, and `P:{stats}:minute:<unix minute>` (the
//!   fleet's requests answered in that minute, a row like the others, for `/report/history`;
//!   expires 25 h after its last write): one hash tag, so the scripts that touch them together
//!   stay in one Redis Cluster slot, and a batch's minutes are applied exactly once with it.
//!
//! Each replica numbers its own batches (`replica` is random per process), so a batch retried
//! after an unseen success is recognised as applied, whoever else applied theirs meanwhile.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::{Script, Value};
use serde::{Deserialize, Serialize};

use super::agg::{Agg, StatsBatch};
use super::backend::{
    CacheStore, CachedResult, Lease, MinuteSnapshot, StatsStore, StorageBackend, TopSnapshot,
};
use super::StorageError;
use crate::clock::{unix_millis, Clock};
use crate::domain::Prediction;
use crate::history::MAX_MINUTES;
use crate::metrics::STORAGE_UP;
use crate::outage::Health;
use crate::redis_conn::{guarded, RedisConn};

/// Adds a batch if its sequence number is new for this replica. KEYS: seq, rows, top, totals,
/// then one key per minute of the batch. ARGV: seq, totals ("" if none), the minutes' expiry in
/// seconds, one "count min max sum" row per minute key, then URL, row pairs.
const APPLY: &str = r#"
local function parse(s)
  local c, mn, mx, sm = string.match(s, "^(%S+) (%S+) (%S+) (%S+)$")
  return tonumber(c), tonumber(mn), tonumber(mx), tonumber(sm)
end
local function merge(old, new)
  local c, mn, mx, sm = parse(new)
  if old then
    local oc, omn, omx, osm = parse(old)
    c, mn, mx, sm = c + oc, math.min(mn, omn), math.max(mx, omx), sm + osm
  end
  return c, string.format("%.17g %.17g %.17g %.17g", c, mn, mx, sm)
end
local seq = tonumber(ARGV[1])
if seq <= tonumber(redis.call("GET", KEYS[1]) or "0") then return 0 end
local minutes = #KEYS - 4
for i = 1, minutes do
  local _, row = merge(redis.call("GET", KEYS[4 + i]), ARGV[3 + i])
  redis.call("SET", KEYS[4 + i], row, "EX", ARGV[3])
end
for i = 4 + minutes, #ARGV, 2 do
  local count, row = merge(redis.call("HGET", KEYS[2], ARGV[i]), ARGV[i + 1])
  redis.call("HSET", KEYS[2], ARGV[i], row)
  redis.call("ZADD", KEYS[3], -count, ARGV[i])
end
if ARGV[2] ~= "" then
  local _, row = merge(redis.call("GET", KEYS[4]), ARGV[2])
  redis.call("SET", KEYS[4], row)
end
-- A replica that is gone leaves its counter behind for a day, not forever.
redis.call("SET", KEYS[1], seq, "EX", 86400)
return 1
"#;

/// One consistent read: KEYS seq, rows, top; ARGV n, then named URLs. Returns seq, the number
/// of top rows, URL/row pairs for them, then one row (or "") per named URL.
const TOP: &str = r#"
local urls = redis.call("ZRANGE", KEYS[3], 0, tonumber(ARGV[1]) - 1)
local out = { redis.call("GET", KEYS[1]) or "0", tostring(#urls) }
for _, url in ipairs(urls) do
  table.insert(out, url)
  table.insert(out, redis.call("HGET", KEYS[2], url) or "")
end
for i = 2, #ARGV do
  table.insert(out, redis.call("HGET", KEYS[2], ARGV[i]) or "")
end
return out
"#;

/// Deletes a lease only if it still holds the caller's token. KEYS: lease; ARGV: token.
const RELEASE: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0
"#;

const MAX_TTL_MS: u64 = 365 * 24 * 3600 * 1000;

/// A minute's figures outlive the longest window `/report/history` asks for by an hour, which
/// covers replicas whose clocks run a little ahead; then Redis drops them.
const MINUTE_TTL_SECS: u64 = (MAX_MINUTES as u64 + 60) * 60;

/// A cached result as stored: short names, since there is one per image.
#[derive(Serialize, Deserialize)]
struct Stored {
    l: String,
    c: f32,
    e: u64,
    r: Vec<(String, f32)>,
}

pub struct RedisBackend {
    conn: RedisConn,
    prefix: String,
    /// This process's name in the batch counters.
    replica: String,
    clock: Arc<dyn Clock>,
    timeout: Duration,
    next_token: AtomicU64,
    apply: Script,
    top: Script,
    release: Script,
    health: Health,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// On `conn` (which reconnects by itself); every command gives up after `timeout`.
    pub fn new(conn: RedisConn, prefix: &str, clock: Arc<dyn Clock>, timeout: Duration) -> Self {
        let (instance, replica) = crate::redis_conn::instance_name();
        let seed = crate::clock::process_seed();
        Self {
            conn,
            prefix: prefix.to_owned(),
            replica,
            clock,
            timeout,
            // Tokens from different backends start far apart (2^40 leases each).
            next_token: AtomicU64::new(seed.wrapping_add(instance << 40)),
            apply: Script::new(APPLY),
            top: Script::new(TOP),
            release: Script::new(RELEASE),
            health: Health::new("redis (results, leases, statistics)", Some(STORAGE_UP)),
        }
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.prefix)
    }

    fn stats_key(&self, name: &str) -> String {
        format!("{}:{{stats}}:{name}", self.prefix)
    }

    fn minute_key(&self, minute: u64) -> String {
        self.stats_key(&format!("minute:{minute}"))
    }

    fn seq_key(&self) -> String {
        self.stats_key(&format!("seq:{}", self.replica))
    }

    async fn run<T, F>(&self, call: impl FnOnce(RedisConn) -> F) -> Result<T, StorageError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        guarded(&self.conn, self.timeout, &self.health, call)
            .await
            .map_err(|e| StorageError::Redis(e.to_string()))
    }
}

fn agg_text(a: &Agg) -> String {
    format!("{} {:?} {:?} {:?}", a.count, a.min, a.max, a.sum)
}

fn parse_agg(text: &str) -> Result<Agg, StorageError> {
    let bad = || StorageError::Redis(format!("unreadable statistics row {text:?}"));
    let mut fields = text.split(' ');
    let mut next = || {
        fields
            .next()
            .and_then(|f| f.parse::<f64>().ok())
            .ok_or_else(bad)
    };
    Ok(Agg {
        count: next()? as u64,
        min: next()?,
        max: next()?,
        sum: next()?,
    })
}

fn text(value: &Value) -> Result<String, StorageError> {
    redis::from_redis_value_ref(value).map_err(|e| StorageError::Redis(e.to_string()))
}

impl CacheStore for RedisBackend {
    async fn get(&self, key: &str) -> Result<Option<CachedResult>, StorageError> {
        let key = self.key("cache", key);
        let found: Option<Vec<u8>> = self
            .run(|mut c| async move { redis::cmd("GET").arg(&key).query_async(&mut c).await })
            .await?;
        let Some(bytes) = found else { return Ok(None) };
        let stored: Stored = serde_json::from_slice(&bytes)
            .map_err(|e| StorageError::Redis(format!("unreadable cached result: {e}")))?;
        Ok(Some(CachedResult {
            label: Arc::from(stored.l),
            confidence: stored.c,
            runners_up: stored
                .r
                .into_iter()
                .map(|(label, confidence)| Prediction {
                    label: Arc::from(label),
                    confidence,
                })
                .collect(),
            expires_at_ms: stored.e,
        }))
    }

    async fn put(&self, key: &str, entry: CachedResult) -> Result<(), StorageError> {
        let stored = Stored {
            l: entry.label.to_string(),
            c: entry.confidence,
            e: entry.expires_at_ms,
            r: entry
                .runners_up
                .iter()
                .map(|p| (p.label.to_string(), p.confidence))
                .collect(),
        };
        let json = serde_json::to_vec(&stored).expect("plain data serializes");
        // Garbage collection at the moment the caller's clock expires it: at least 1 ms, and at
        // most a year (Redis refuses an expiry past its clock's range).
        let ttl_ms = entry
            .expires_at_ms
            .saturating_sub(unix_millis(self.clock.now()))
            .clamp(1, MAX_TTL_MS);
        let key = self.key("cache", key);
        self.run(|mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(json)
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn try_lease(&self, key: &str, ttl: Duration) -> Result<Option<Lease>, StorageError> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let name = self.key("lease", key);
        let ttl_ms = (ttl.as_millis() as u64).max(1);
        let set: Option<String> = self
            .run(|mut c| async move {
                redis::cmd("SET")
                    .arg(&name)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(set.map(|_| Lease {
            key: key.to_owned(),
            token,
        }))
    }

    async fn release(&self, lease: Lease) -> Result<(), StorageError> {
        let name = self.key("lease", &lease.key);
        self.run(|mut c| async move {
            self.release
                .key(&name)
                .arg(lease.token)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await
        .map(|_| ())
    }
}

impl StatsStore for RedisBackend {
    async fn apply(&self, seq: u64, batch: Arc<StatsBatch>) -> Result<(), StorageError> {
        let mut invocation = self.apply.prepare_invoke();
        invocation
            .key(self.seq_key())
            .key(self.stats_key("rows"))
            .key(self.stats_key("top"))
            .key(self.stats_key("totals"))
            .arg(seq)
            .arg(batch.totals.as_ref().map(agg_text).unwrap_or_default())
            .arg(MINUTE_TTL_SECS);
        for (minute, delta) in &batch.per_minute {
            invocation
                .key(self.minute_key(*minute))
                .arg(agg_text(delta));
        }
        for (url, delta) in &batch.per_url {
            invocation.arg(url).arg(agg_text(delta));
        }
        self.run(|mut c| async move { invocation.invoke_async::<i64>(&mut c).await })
            .await
            .map(|_| ())
    }

    async fn top(&self, n: usize, named: Vec<String>) -> Result<TopSnapshot, StorageError> {
        let mut invocation = self.top.prepare_invoke();
        invocation
            .key(self.seq_key())
            .key(self.stats_key("rows"))
            .key(self.stats_key("top"))
            .arg(n.max(1));
        for url in &named {
            invocation.arg(url);
        }
        let reply: Vec<Value> = self
            .run(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        let short = || StorageError::Redis("short reply from the report script".into());
        let mut items = reply.iter();
        let seq = text(items.next().ok_or_else(short)?)?
            .parse::<u64>()
            .map_err(|_| short())?;
        let tops: usize = text(items.next().ok_or_else(short)?)?
            .parse()
            .map_err(|_| short())?;
        let mut top = Vec::with_capacity(tops.min(n));
        for _ in 0..tops {
            let url = text(items.next().ok_or_else(short)?)?;
            let row = parse_agg(&text(items.next().ok_or_else(short)?)?)?;
            top.push((url, row));
        }
        // `n` of 0 still read one row (ZRANGE 0 -1 would be all of them).
        top.truncate(n);
        let mut found = std::collections::HashMap::new();
        for url in named {
            let row = text(items.next().ok_or_else(short)?)?;
            if !row.is_empty() {
                found.insert(url, parse_agg(&row)?);
            }
        }
        Ok(TopSnapshot {
            top,
            named: found,
            seq,
        })
    }

    async fn totals(&self) -> Result<(Agg, u64), StorageError> {
        let keys = [self.stats_key("totals"), self.seq_key()];
        let (totals, seq): (Option<String>, Option<u64>) = self
            .run(|mut c| async move { redis::cmd("MGET").arg(&keys).query_async(&mut c).await })
            .await?;
        let totals = match totals {
            Some(t) => parse_agg(&t)?,
            None => Agg::EMPTY,
        };
        Ok((totals, seq.unwrap_or(0)))
    }

    fn keeps_minutes(&self) -> bool {
        true
    }

    /// One MGET (atomic, and one slot thanks to the hash tag): this replica's sequence number,
    /// then every minute of the window (at most 1441 keys).
    async fn minutes(&self, first: u64, last: u64) -> Result<MinuteSnapshot, StorageError> {
        let mut keys = vec![self.seq_key()];
        keys.extend((first..=last).map(|m| self.minute_key(m)));
        let reply: Vec<Option<String>> = self
            .run(|mut c| async move { redis::cmd("MGET").arg(&keys).query_async(&mut c).await })
            .await?;
        let mut reply = reply.into_iter();
        let seq = match reply.next().flatten() {
            Some(seq) => seq
                .parse()
                .map_err(|_| StorageError::Redis(format!("unreadable sequence number {seq:?}")))?,
            None => 0,
        };
        let mut minutes = Vec::new();
        for (minute, row) in (first..=last).zip(reply) {
            if let Some(row) = row {
                minutes.push((minute, parse_agg(&row)?));
            }
        }
        Ok(MinuteSnapshot { minutes, seq })
    }
}

impl StorageBackend for RedisBackend {}
