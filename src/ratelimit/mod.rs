//! Per-client rate limits on `/classify-image`: one budget for every request, and a smaller one
//! for the requests that cost a download or an inference (cache misses). A client is its address
//! (IPv6 per /64), or, with a valid bearer token, its user, who gets budgets of their own.
//!
//! The buckets are `governor`'s (GCRA: one 8-byte state per client, no timers). A bucket that has
//! refilled is indistinguishable from a new one, so [`RateLimits::sweep`] drops those: memory
//! follows the clients seen within a refill time, not every client ever seen.
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use std::fmt::Write as _;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use crate::client::AddrKey;

mod shared;
pub use shared::SharedBuckets;

/// One limit as configured: `N/s|min|h`, with an optional `burst=B` (default `N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
    pub burst: NonZeroU32,
}

/// A limit setting: `off`, or a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSetting(pub Option<Rate>);

impl std::str::FromStr for RateSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("off") {
            return Ok(Self(None));
        }
        let bad = |why: &str| format!("`{s}`: {why} (e.g. 600/min, 30/min,burst=10, or off)");
        let (rate, burst) = match s.split_once(',') {
            Some((rate, option)) => {
                let value = option
                    .trim()
                    .strip_prefix("burst=")
                    .ok_or_else(|| bad("the only option is burst=N"))?;
                (
                    rate,
                    Some(positive(value).ok_or_else(|| bad("burst must be 1 or more"))?),
                )
            }
            None => (s, None),
        };
        let (count, unit) = rate
            .split_once('/')
            .ok_or_else(|| bad("a rate is N/s, N/min or N/h"))?;
        let count = positive(count).ok_or_else(|| bad("N must be 1 or more"))?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad("the unit is s, min or h")),
        };
        Ok(Self(Some(Rate {
            count,
            per,
            burst: burst.unwrap_or(count),
        })))
    }
}

fn positive(text: &str) -> Option<NonZeroU32> {
    text.trim().parse::<u32>().ok().and_then(NonZeroU32::new)
}

impl Rate {
    /// This rate with `factor` times the requests and burst (users' defaults: 10 x an address's).
    pub fn times(self, factor: u32) -> Self {
        let scale =
            |n: NonZeroU32| n.saturating_mul(NonZeroU32::new(factor).unwrap_or(NonZeroU32::MIN));
        Self {
            count: scale(self.count),
            per: self.per,
            burst: scale(self.burst),
        }
    }

    fn quota(self) -> Quota {
        // `per / count` is at least a nanosecond for any u32 count and these units.
        let interval = (self.per / self.count.get()).max(Duration::from_nanos(1));
        Quota::with_period(interval)
            .expect("a nonzero interval")
            .allow_burst(self.burst)
    }
}

/// Which budget a check draws on: its name in the `RateLimit` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Every request.
    All,
    /// Requests that miss the cache.
    Cold,
}

impl Budget {
    pub fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Cold => "cold",
        }
    }
}

/// A client's standing in one budget after a check, for the `RateLimit` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub budget: Budget,
    /// Requests left now.
    pub remaining: u32,
    /// Seconds until the budget is full again.
    pub reset_secs: u64,
}

/// A check that failed: when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub budget: Budget,
    /// Whole seconds, rounded up, at least 1 (what `Retry-After` carries).
    pub retry_after_secs: u64,
}

/// Who is counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    Addr(AddrKey),
    User(Arc<str>),
}

type Keyed<K, C> = RateLimiter<K, DashMapStateStore<K>, C, StateInformationMiddleware>;

/// One kind of client's buckets in one budget.
struct Buckets<K: Hash + Eq + Clone, C: Clock> {
    rate: Rate,
    keyed: Keyed<K, C>,
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> Buckets<K, C> {
    fn new(rate: Rate, clock: &C) -> Self {
        Self {
            rate,
            keyed: RateLimiter::dashmap_with_clock(rate.quota(), clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
        }
    }

    fn check(&self, budget: Budget, key: &K, clock: &C) -> Result<Standing, Refused> {
        match self.keyed.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let missing = self.rate.burst.get().saturating_sub(remaining);
                Ok(Standing {
                    budget,
                    remaining,
                    reset_secs: ceil_secs(self.rate.quota().replenish_interval() * missing),
                })
            }
            Err(not_until) => Err(Refused {
                budget,
                retry_after_secs: ceil_secs(not_until.wait_time_from(clock.now())).max(1),
            }),
        }
    }

    fn sweep(&self) {
        self.keyed.retain_recent();
        self.keyed.shrink_to_fit();
    }
}

/// One budget: for addresses, and for users (either may be off).
struct Limiter<C: Clock> {
    budget: Budget,
    addrs: Option<Buckets<AddrKey, C>>,
    users: Option<Buckets<Arc<str>, C>>,
    clock: C,
}

impl<C: Clock + Clone> Limiter<C> {
    /// `None` when neither kind of client is limited.
    fn new(budget: Budget, addr: Option<Rate>, user: Option<Rate>, clock: &C) -> Option<Self> {
        (addr.is_some() || user.is_some()).then(|| Self {
            budget,
            addrs: addr.map(|r| Buckets::new(r, clock)),
            users: user.map(|r| Buckets::new(r, clock)),
            clock: clock.clone(),
        })
    }

    fn check(&self, client: &Client) -> Result<Option<Standing>, Refused> {
        match client {
            Client::Addr(a) => self
                .addrs
                .as_ref()
                .map(|b| b.check(self.budget, a, &self.clock)),
            Client::User(u) => self
                .users
                .as_ref()
                .map(|b| b.check(self.budget, u, &self.clock)),
        }
        .transpose()
    }

    fn rate_for(&self, client: &Client) -> Option<Rate> {
        match client {
            Client::Addr(_) => self.addrs.as_ref().map(|b| b.rate),
            Client::User(_) => self.users.as_ref().map(|b| b.rate),
        }
    }

    fn sweep(&self) {
        self.addrs.iter().for_each(Buckets::sweep);
        self.users.iter().for_each(Buckets::sweep);
    }

    fn tracked(&self) -> usize {
        self.addrs.as_ref().map_or(0, |b| b.keyed.len())
            + self.users.as_ref().map_or(0, |b| b.keyed.len())
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// What the operator set: `--rate-limit`, `--rate-limit-cold`, and the users' two (`None`:
/// [`USER_FACTOR`] x the address limit; `Some(None)`: users are not limited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub all: Option<Rate>,
    pub cold: Option<Rate>,
    pub user_all: Option<Option<Rate>>,
    pub user_cold: Option<Option<Rate>>,
}

/// How many more requests a user gets than an address when their limit is not set.
pub const USER_FACTOR: u32 = 10;

/// The two budgets. Cheap to clone.
#[derive(Clone)]
pub struct RateLimits<C: Clock = DefaultClock> {
    inner: Arc<[Option<Limiter<C>>; 2]>,
    /// With `--redis-url`: the buckets every replica shares (these are then the fallback).
    shared: Option<Arc<SharedBuckets>>,
    /// The `RateLimit-Policy` value for addresses and for users.
    policies: Arc<[Option<String>; 2]>,
}

fn policy_index(client: &Client) -> usize {
    match client {
        Client::Addr(_) => 0,
        Client::User(_) => 1,
    }
}

/// The `RateLimit-Policy` value of `limiters` for clients like `client`.
fn policy<C: Clock + Clone>(limiters: &[Option<Limiter<C>>], client: &Client) -> Option<String> {
    let mut out = String::new();
    for limiter in limiters.iter().flatten() {
        let Some(rate) = limiter.rate_for(client) else {
            continue;
        };
        if !out.is_empty() {
            out.push_str(", ");
        }
        let _ = write!(
            out,
            "\"{}\";q={};w={}",
            limiter.budget.name(),
            rate.count,
            rate.per.as_secs()
        );
    }
    (!out.is_empty()).then_some(out)
}

impl RateLimits<DefaultClock> {
    pub fn new(config: RateLimitConfig) -> Self {
        Self::with_clock(config, &DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    pub fn with_clock(config: RateLimitConfig, clock: &C) -> Self {
        let limiter = |budget, addr: Option<Rate>, user: Option<Option<Rate>>| {
            let user = user.unwrap_or_else(|| addr.map(|r| r.times(USER_FACTOR)));
            Limiter::new(budget, addr, user, clock)
        };
        let limiters = [
            limiter(Budget::All, config.all, config.user_all),
            limiter(Budget::Cold, config.cold, config.user_cold),
        ];
        let policies = [
            policy(&limiters, &Client::Addr(AddrKey::V4(0))),
            policy(&limiters, &Client::User(Arc::from(""))),
        ];
        Self {
            inner: Arc::new(limiters),
            shared: None,
            policies: Arc::new(policies),
        }
    }

    /// Checks go to these shared buckets first.
    pub fn shared(mut self, buckets: SharedBuckets) -> Self {
        self.shared = Some(Arc::new(buckets));
        self
    }

    /// [`check`](Self::check) on the shared buckets when there are any; on this process's own
    /// when there are none or Redis does not answer (never an error of its own).
    pub async fn take(&self, budget: Budget, client: &Client) -> Result<Option<Standing>, Refused> {
        let Some(limiter) = &self.inner[budget as usize] else {
            return Ok(None);
        };
        let Some(rate) = limiter.rate_for(client) else {
            return Ok(None);
        };
        if let Some(shared) = &self.shared {
            if let Some(outcome) = shared.check(budget, client, rate).await {
                return outcome.map(Some);
            }
        }
        limiter.check(client)
    }

    /// True when some limit is set (else no check costs anything, and no header is sent).
    pub fn enabled(&self) -> bool {
        self.inner.iter().any(Option::is_some)
    }

    /// Takes one request from `budget`; `Ok(None)` when that budget is off.
    pub fn check(&self, budget: Budget, client: &Client) -> Result<Option<Standing>, Refused> {
        match &self.inner[budget as usize] {
            Some(limiter) => limiter.check(client),
            None => Ok(None),
        }
    }

    /// Drops the buckets that have refilled (they hold nothing a new bucket would not).
    pub fn sweep(&self) {
        self.inner.iter().flatten().for_each(Limiter::sweep);
    }

    /// Buckets held, over both budgets.
    pub fn tracked(&self) -> usize {
        self.inner.iter().flatten().map(Limiter::tracked).sum()
    }

    /// `RateLimit-Policy`: every configured budget for this kind of client, as
    /// `"all";q=600;w=60` (q requests per w seconds), per draft-ietf-httpapi-ratelimit-headers.
    /// Made once, at construction: it depends on the settings alone.
    pub fn policy_header(&self, client: &Client) -> Option<&str> {
        self.policies[policy_index(client)].as_deref()
    }
}

impl RateLimits<DefaultClock> {
    /// Sweeps every `every` until the runtime stops.
    pub fn spawn_sweeper(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let limits = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let sweep = limits.clone();
                // Each map shard is locked while it is swept; off the workers.
                let _ = tokio::task::spawn_blocking(move || sweep.sweep()).await;
            }
        })
    }
}

/// `RateLimit`: the client's standing in each budget this request was checked against, as
/// `"all";r=599;t=1`.
pub fn standing_header(standings: &[Standing]) -> Option<String> {
    let mut out = String::new();
    for s in standings {
        if !out.is_empty() {
            out.push_str(", ");
        }
        let _ = write!(
            out,
            "\"{}\";r={};t={}",
            s.budget.name(),
            s.remaining,
            s.reset_secs
        );
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_conn::RedisConn;
    use governor::clock::FakeRelativeClock;
    use std::net::IpAddr;

    fn rate(s: &str) -> Option<Rate> {
        s.parse::<RateSetting>().unwrap().0
    }

    fn addr(s: &str) -> Client {
        Client::Addr(AddrKey::from(s.parse::<IpAddr>().unwrap()))
    }

    fn limits(config: RateLimitConfig) -> (RateLimits<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (RateLimits::with_clock(config, &clock), clock)
    }

    #[test]
    fn settings_parse() {
        let r = rate("600/min,burst=100").unwrap();
        assert_eq!(
            (r.count.get(), r.per.as_secs(), r.burst.get()),
            (600, 60, 100)
        );
        let r = rate("30/min").unwrap();
        assert_eq!((r.count.get(), r.burst.get()), (30, 30));
        assert_eq!(rate("5/s").unwrap().per, Duration::from_secs(1));
        assert_eq!(rate("2/h").unwrap().per, Duration::from_secs(3600));
        assert_eq!(rate("off"), None);
        assert_eq!(rate(""), None);
        for bad in [
            "0/min",
            "x/min",
            "10/day",
            "10",
            "10/min,burst=0",
            "10/min,rate=3",
            "-1/s",
        ] {
            let err = bad.parse::<RateSetting>().unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
        let u = rate("600/min,burst=100").unwrap().times(USER_FACTOR);
        assert_eq!((u.count.get(), u.burst.get()), (6000, 1000));
    }

    #[test]
    fn a_burst_then_a_refusal_that_says_when_then_a_refill() {
        let (limits, clock) = limits(RateLimitConfig {
            all: rate("60/min,burst=3"),
            ..Default::default()
        });
        let me = addr("198.51.100.1");
        let remaining: Vec<u32> = (0..3)
            .map(|_| limits.check(Budget::All, &me).unwrap().unwrap().remaining)
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = limits.check(Budget::All, &me).unwrap_err();
        assert_eq!(refused.budget, Budget::All);
        // One request per second comes back.
        assert_eq!(refused.retry_after_secs, 1);
        // Another client is not affected.
        assert!(limits.check(Budget::All, &addr("198.51.100.2")).is_ok());
        clock.advance(Duration::from_millis(999));
        assert!(limits.check(Budget::All, &me).is_err());
        clock.advance(Duration::from_millis(1));
        let back = limits.check(Budget::All, &me).unwrap().unwrap();
        assert_eq!((back.remaining, back.reset_secs), (0, 3));
        clock.advance(Duration::from_secs(3));
        assert_eq!(
            limits.check(Budget::All, &me).unwrap().unwrap().remaining,
            2
        );
    }

    #[test]
    fn retry_after_rounds_up() {
        let (limits, _clock) = limits(RateLimitConfig {
            all: rate("1/h"),
            ..Default::default()
        });
        let me = addr("2001:db8::1");
        limits.check(Budget::All, &me).unwrap();
        assert_eq!(
            limits.check(Budget::All, &me).unwrap_err().retry_after_secs,
            3600
        );
        // The same /64.
        assert!(limits.check(Budget::All, &addr("2001:db8::2")).is_err());
    }

    #[test]
    fn budgets_are_separate_and_an_unset_one_is_free() {
        let (limits, _clock) = limits(RateLimitConfig {
            cold: rate("1/min"),
            ..Default::default()
        });
        let me = addr("198.51.100.1");
        for _ in 0..100 {
            assert_eq!(limits.check(Budget::All, &me), Ok(None));
        }
        assert!(limits.check(Budget::Cold, &me).unwrap().is_some());
        assert_eq!(
            limits.check(Budget::Cold, &me).unwrap_err().budget,
            Budget::Cold
        );
        assert!(limits.enabled());
        assert!(!RateLimits::new(RateLimitConfig::default()).enabled());
    }

    #[test]
    fn users_have_their_own_larger_budget() {
        let (limits, _clock) = limits(RateLimitConfig {
            all: rate("1/min"),
            ..Default::default()
        });
        let alice = Client::User("alice".into());
        for _ in 0..USER_FACTOR {
            limits.check(Budget::All, &alice).unwrap();
        }
        assert!(limits.check(Budget::All, &alice).is_err());
        // Her address's budget is untouched, and another user's too.
        assert!(limits.check(Budget::All, &addr("198.51.100.1")).is_ok());
        assert!(limits
            .check(Budget::All, &Client::User("bob".into()))
            .is_ok());
        let (explicit, _) = self::limits(RateLimitConfig {
            all: rate("1/min"),
            user_all: Some(rate("2/min")),
            ..Default::default()
        });
        assert_eq!(explicit.policy_header(&alice), Some("\"all\";q=2;w=60"));
    }

    #[test]
    fn users_can_be_left_unlimited() {
        let (limits, _clock) = limits(RateLimitConfig {
            all: rate("1/min"),
            user_all: Some(None),
            ..Default::default()
        });
        let alice = Client::User("alice".into());
        for _ in 0..100 {
            assert_eq!(limits.check(Budget::All, &alice), Ok(None));
        }
        assert_eq!(limits.policy_header(&alice), None);
        let me = addr("198.51.100.1");
        limits.check(Budget::All, &me).unwrap();
        assert!(limits.check(Budget::All, &me).is_err());
    }

    /// Two replicas on one Redis draw on one budget; Redis gone, each limits alone.
    #[tokio::test]
    async fn shared_buckets_are_one_budget_and_fall_back_to_local_ones() {
        let mut redis = crate::storage::redis_server::RedisServer::start();
        let replica = |redis: &crate::storage::redis_server::RedisServer| {
            let conn = RedisConn::single(redis.client(), Duration::from_millis(300)).unwrap();
            let shared = SharedBuckets::new(conn, "p", Duration::from_millis(300));
            RateLimits::new(RateLimitConfig {
                all: rate("2/min"),
                ..Default::default()
            })
            .shared(shared)
        };
        let (a, b) = (replica(&redis), replica(&redis));
        let me = addr("198.51.100.1");
        let first = a.take(Budget::All, &me).await.unwrap().unwrap();
        assert_eq!((first.remaining, first.reset_secs), (1, 30));
        assert_eq!(
            b.take(Budget::All, &me).await.unwrap().unwrap().remaining,
            0
        );
        let refused = a.take(Budget::All, &me).await.unwrap_err();
        assert_eq!(refused.retry_after_secs, 30);
        // Users have their own keys, 10 x the budget.
        let alice = Client::User("alice".into());
        for _ in 0..20 {
            a.take(Budget::All, &alice).await.unwrap();
        }
        assert!(b.take(Budget::All, &alice).await.is_err());
        // Redis gone: each replica's own buckets (fresh here), never an error of their own.
        let port = redis.port;
        drop(redis);
        for limits in [&a, &b] {
            assert!(limits.take(Budget::All, &me).await.is_ok());
            assert!(limits.take(Budget::All, &me).await.is_ok());
            assert!(limits.take(Budget::All, &me).await.is_err());
        }
        // Back (empty): shared again.
        redis = crate::storage::redis_server::RedisServer::start_on(port);
        let mut shared_again = false;
        for i in 10..60 {
            // A new client each round: a round half on local buckets must not spoil the next.
            let client = addr(&format!("198.51.100.{i}"));
            if let (Ok(_), Ok(_), Err(_)) = (
                a.take(Budget::All, &client).await,
                b.take(Budget::All, &client).await,
                a.take(Budget::All, &client).await,
            ) {
                shared_again = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(shared_again);
        drop(redis);
    }

    #[test]
    fn headers() {
        let (limits, _clock) = limits(RateLimitConfig {
            all: rate("600/min,burst=100"),
            cold: rate("30/min"),
            ..Default::default()
        });
        assert_eq!(
            limits.policy_header(&addr("198.51.100.1")),
            Some("\"all\";q=600;w=60, \"cold\";q=30;w=60")
        );
        let s = limits
            .check(Budget::All, &addr("198.51.100.1"))
            .unwrap()
            .unwrap();
        assert_eq!(standing_header(&[s]).as_deref(), Some("\"all\";r=99;t=1"));
        assert_eq!(standing_header(&[]), None);
    }

    #[test]
    fn refilled_buckets_are_dropped() {
        let (limits, clock) = limits(RateLimitConfig {
            all: rate("10/s"),
            ..Default::default()
        });
        for i in 0..1000u32 {
            let ip = IpAddr::V4(i.into());
            limits.check(Budget::All, &Client::Addr(ip.into())).unwrap();
        }
        assert_eq!(limits.tracked(), 1000);
        limits.sweep();
        assert_eq!(limits.tracked(), 1000, "not refilled yet");
        // governor keeps a bucket one interval past its refill (100 ms here).
        clock.advance(Duration::from_millis(201));
        limits.sweep();
        assert_eq!(limits.tracked(), 0);
    }
}
