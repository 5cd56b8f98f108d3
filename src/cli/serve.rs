//! `classifier-api serve` (the default): the HTTP service until SIGTERM or SIGINT.
use std::process::ExitCode;

use crate::config::Settings;
use crate::{shutdown, startup};

/// `single_malloc_arena` is only logged: `main` had to decide it before any thread existed.
pub async fn run(settings: Settings, single_malloc_arena: bool) -> anyhow::Result<ExitCode> {
    // The target is pinned to the crate name so that log searches and `RUST_LOG` filters written
    // for the start line keep matching wherever this function lives.
    tracing::info!(
        target: "classifier_api",
        ?settings,
        single_malloc_arena,
        "starting classifier-api {}",
        env!("CARGO_PKG_VERSION")
    );
    let app = startup::Application::build(settings).await?;
    // Installed before the app says it is ready: from then on SIGTERM means a graceful stop.
    // (While it starts, SIGTERM still ends the process at once.)
    let stop = shutdown::signal();
    app.run_until_stopped(stop).await?;
    Ok(ExitCode::SUCCESS)
}
