//! The buckets on Redis (with `--redis-url`), so N replicas enforce one limit: one script per
//! check, GCRA on Redis's own clock (`TIME`), one key per client and budget that expires when
//! its bucket is full again. If Redis does not answer, the caller falls back to this process's
//! buckets ([`super::RateLimits::take`]).
use std::time::Duration;

use redis::Script;

use super::{Budget, Client, Rate, Refused, Standing};
use crate::client::AddrKey;
use crate::outage::Health;
use crate::redis_conn::RedisConn;

/// KEYS: the bucket. ARGV: emission interval (µs, may be fractional), burst. Returns
/// {1, remaining, µs until full} or {0, 0, µs until the next request may pass}.
const GCRA: &str = r#"
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call("GET", KEYS[1]) or "0")
if tat < now then tat = now end
if tat - now > tolerance then
  return { 0, 0, math.ceil(tat - now - tolerance) }
end
local new_tat = tat + interval
redis.call("SET", KEYS[1], string.format("%.17g", new_tat), "PX", math.max(1, math.ceil((new_tat - now) / 1000)))
return { 1, math.floor((now + tolerance + interval - new_tat) / interval), math.ceil(new_tat - now) }
"#;

pub struct SharedBuckets {
    conn: RedisConn,
    prefix: String,
    timeout: Duration,
    script: Script,
    health: Health,
}

impl SharedBuckets {
    pub fn new(conn: RedisConn, prefix: &str, timeout: Duration) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            timeout,
            script: Script::new(GCRA),
            health: Health::new("redis (rate limits: per replica until it is back)", None),
        }
    }

    fn key(&self, budget: Budget, client: &Client) -> String {
        let name = budget.name();
        match client {
            Client::Addr(AddrKey::V4(a)) => format!("{}:rl:{name}:4:{a:08x}", self.prefix),
            Client::Addr(AddrKey::V6Prefix(p)) => format!("{}:rl:{name}:6:{p:016x}", self.prefix),
            Client::User(u) => format!("{}:rl:{name}:u:{u}", self.prefix),
        }
    }

    /// One request from `client`'s bucket in `budget`, or `None` if Redis did not answer.
    pub async fn check(
        &self,
        budget: Budget,
        client: &Client,
        rate: Rate,
    ) -> Option<Result<Standing, Refused>> {
        let interval_us = rate.per.as_secs_f64() * 1e6 / f64::from(rate.count.get());
        let mut invocation = self.script.key(self.key(budget, client));
        invocation.arg(interval_us).arg(rate.burst.get());
        let mut conn = self.conn.clone();
        let reply = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(i64, i64, i64)>(&mut conn),
        )
        .await;
        match reply {
            Ok(Ok((allowed, remaining, micros))) => {
                self.health.up();
                let secs = (micros.max(0) as u64).div_ceil(1_000_000);
                Some(if allowed == 1 {
                    Ok(Standing {
                        budget,
                        remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
                        reset_secs: secs,
                    })
                } else {
                    Err(Refused {
                        budget,
                        retry_after_secs: secs.max(1),
                    })
                })
            }
            Ok(Err(e)) => {
                self.health.failed(&e);
                None
            }
            Err(_) => {
                self.health
                    .failed(&format!("no answer within {:?}", self.timeout));
                None
            }
        }
    }
}
