//! The HTTP floor for `scripts/bench.sh`: warp answering `POST /classify-image` with the fixed
//! JSON the nginx anchor returns, reading the body as ours does, and nothing else (no cache,
//! metrics, log or CORS). What it loses to nginx is the HTTP stack's share; what we lose to it
//! is ours. Usage: `cargo run --release --example http_floor -- 127.0.0.1:0` (prints its address).
use std::net::SocketAddr;
use warp::Filter;

const ANSWER: &str =
    r#"{"classification":"Egyptian_cat","confidence":"0.835","processing_time":"0.000"}"#;

#[tokio::main]
async fn main() {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()
        .expect("usage: http_floor HOST:PORT");
    let route = warp::path!("classify-image")
        .and(warp::post())
        .and(warp::body::bytes())
        .map(|_body: bytes::Bytes| {
            warp::reply::with_header(ANSWER, "content-type", "application/json")
        });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("cannot bind");
    println!(
        "listening on http://{}",
        listener.local_addr().expect("bound")
    );
    warp::serve(route).incoming(listener).run().await;
}
