//! The lock on the operator endpoints (`/report`, `/report/history`, `/metrics`), from
//! `--ops-auth`: open to anyone, or only to a bearer token of a user with the `ops` role.
use std::convert::Infallible;
use warp::Filter;

use super::with;
use crate::auth::{Auth, Role};
use crate::error::ApiError;

/// Who may read the operator endpoints. Cheap to clone.
#[derive(Clone)]
pub struct OpsGate {
    /// `None`: anyone (`--ops-auth none`).
    auth: Option<Auth>,
}

impl OpsGate {
    /// Anyone may read them (`--ops-auth none`, the default).
    pub fn open() -> Self {
        Self { auth: None }
    }

    /// Only a valid bearer token of a user with the `ops` role (`--ops-auth token`).
    pub fn token(auth: Auth) -> Self {
        Self { auth: Some(auth) }
    }

    /// `Ok` when a request with this `Authorization` header may read an operator endpoint; else
    /// what to answer: `401` (`missing_token`, `invalid_token`: no, an unusable, revoked or
    /// expired token, or one of a removed user), or `403 forbidden` (a valid token without the
    /// role).
    pub async fn admit(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        match &self.auth {
            None => Ok(()),
            Some(auth) => auth
                .require(authorization, Role::Ops)
                .await
                .map(|_| ())
                .map_err(ApiError::from),
        }
    }
}

/// The gate's verdict for this request, for the handler to answer first. Placed after the
/// path and method filters, so only requests for the endpoint itself are checked, and before
/// anything else about the request is looked at (a bad query is no reason to tell an
/// unauthenticated client more than 401).
pub fn admitted(
    gate: OpsGate,
) -> impl Filter<Extract = (Result<(), ApiError>,), Error = Infallible> + Clone {
    super::header_text("authorization").and(with(gate)).then(
        |authorization: Option<String>, gate: OpsGate| async move {
            gate.admit(authorization.as_deref()).await
        },
    )
}
