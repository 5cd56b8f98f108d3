//! The client's address for a request (see `crate::client` for the rules), as a filter.
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::HeaderMap;
use warp::Filter;

use crate::client::{client_addr, Forwarding, TrustedProxies};

/// `None` only where there is no TCP peer (warp's test requests). Boxed: the two forms differ in
/// type. Never rejects.
pub fn addr(
    trusted: &TrustedProxies,
) -> impl Filter<Extract = (Option<IpAddr>,), Error = Infallible> + Clone {
    // Unreachable second branch: a `BoxedFilter`'s error type is `Rejection`.
    boxed(trusted).or(warp::any().map(|| None)).unify()
}

fn boxed(trusted: &TrustedProxies) -> BoxedFilter<(Option<IpAddr>,)> {
    if trusted.is_empty() {
        // No proxy is believed: the headers are not even looked at.
        return warp::addr::remote()
            .map(|peer: Option<SocketAddr>| peer.map(|p| p.ip()))
            .boxed();
    }
    let trusted = Arc::new(trusted.clone());
    // Every line of each header, in order (a proxy may add its own line rather than append to
    // the client's): that needs the whole map, so only deployments behind proxies copy it.
    warp::addr::remote()
        .and(warp::header::headers_cloned())
        .map(move |peer: Option<SocketAddr>, headers: HeaderMap| {
            let peer = peer?.ip();
            let lines = |name| {
                headers
                    .get_all(name)
                    .iter()
                    // A line that is not text cannot be read as a list: the whole list is
                    // then refused and the peer is the client.
                    .map(|v| v.to_str().unwrap_or("?"))
                    .collect::<Vec<_>>()
            };
            let forwarding = Forwarding {
                x_forwarded_for: lines("x-forwarded-for"),
                forwarded: lines("forwarded"),
            };
            Some(client_addr(peer, &forwarding, &trusted))
        })
        .boxed()
}
