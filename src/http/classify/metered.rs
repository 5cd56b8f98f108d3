//! One classify request's place in the rate limits: who it is counted as, the checks it passed,
//! and the `RateLimit` headers that report them.
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use warp::http::HeaderValue;
use warp::reply::Response;

use crate::auth::Auth;
use crate::client::AddrKey;
use crate::error::ApiError;
use crate::ratelimit::{standing_header, Budget, Client, RateLimits, Refused, Standing};

/// What the classify route needs to meter requests. Cheap to clone.
#[derive(Clone)]
pub struct Metering {
    pub limits: RateLimits,
    /// Bearer tokens name the user a request is counted as.
    pub auth: Auth,
}

pub struct Metered<'a> {
    limits: &'a RateLimits,
    /// `None` when no limit is set (or, in warp's tests, there is no peer): nothing is checked.
    client: Option<Client>,
    all: Option<Standing>,
    /// Set by the cold check, which runs inside the classify service (hence the lock).
    cold: OnceLock<Standing>,
}

impl<'a> Metered<'a> {
    /// Who the request counts as: the user of a valid bearer token, else the address. A token
    /// that does not verify is no error here (classifying needs none): the address counts.
    pub async fn identify(
        metering: &'a Metering,
        addr: Option<IpAddr>,
        authorization: Option<&str>,
    ) -> Self {
        let client = match (metering.limits.enabled(), addr) {
            (false, _) | (_, None) => None,
            (true, Some(addr)) => Some(match authorization {
                Some(header) => match metering.auth.verify(Some(header)).await {
                    Ok(identity) => Client::User(Arc::from(identity.username)),
                    Err(_) => Client::Addr(AddrKey::from(addr)),
                },
                None => Client::Addr(AddrKey::from(addr)),
            }),
        };
        Self {
            limits: &metering.limits,
            client,
            all: None,
            cold: OnceLock::new(),
        }
    }

    /// The every-request budget, checked on arrival.
    pub async fn check_all(&mut self) -> Result<(), ApiError> {
        let Some(client) = &self.client else {
            return Ok(());
        };
        let (standing, result) = outcome(self.limits.take(Budget::All, client).await);
        self.all = standing;
        result
    }

    /// The cache-miss budget, checked by the classify service before a download or inference.
    pub async fn check_cold(&self) -> Result<(), ApiError> {
        let Some(client) = &self.client else {
            return Ok(());
        };
        let (standing, result) = outcome(self.limits.take(Budget::Cold, client).await);
        if let Some(standing) = standing {
            let _ = self.cold.set(standing);
        }
        result
    }

    /// `RateLimit-Policy` and `RateLimit` on the answer, whatever it is.
    pub fn annotate(&self, response: &mut Response) {
        let Some(client) = &self.client else { return };
        let headers = response.headers_mut();
        let standings: Vec<Standing> = self.all.iter().chain(self.cold.get()).copied().collect();
        let standing = standing_header(&standings);
        for (name, value) in [
            ("ratelimit-policy", self.limits.policy_header(client)),
            ("ratelimit", standing.as_deref()),
        ] {
            if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name, value);
            }
        }
    }
}

/// A refusal still reports its budget: nothing left until it may retry.
fn outcome(check: Result<Option<Standing>, Refused>) -> (Option<Standing>, Result<(), ApiError>) {
    match check {
        Ok(standing) => (standing, Ok(())),
        Err(refused) => (
            Some(Standing {
                budget: refused.budget,
                remaining: 0,
                reset_secs: refused.retry_after_secs,
            }),
            Err(refused.into()),
        ),
    }
}
