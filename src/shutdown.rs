//! Resolves on SIGINT (Ctrl-C) or SIGTERM (what `docker stop` and Kubernetes send).
use std::future::Future;

use tokio::signal::unix::{signal as listen, Signal, SignalKind};

/// Installs the handlers now, before the service says it is listening (a future that only
/// installs them when first polled would leave a window in which SIGTERM still kills the
/// process outright), and returns the future that resolves on the first of the two signals.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    let handler = |kind: SignalKind, name: &'static str| {
        listen(kind)
            .map_err(|e| tracing::error!(error = %e, "cannot listen for {name}"))
            .ok()
    };
    let interrupt = handler(SignalKind::interrupt(), "SIGINT");
    let terminate = handler(SignalKind::terminate(), "SIGTERM");
    async move {
        tokio::select! {
            () = received(interrupt) => tracing::info!("SIGINT received, shutting down"),
            () = received(terminate) => tracing::info!("SIGTERM received, shutting down"),
        }
    }
}

/// Waits for one delivery; never resolves for a signal we could not listen for.
async fn received(signal: Option<Signal>) {
    match signal {
        Some(mut signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}
