//! `classifier-api healthcheck`: for container HEALTHCHECKs, which run a command, not a request.
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Settings;

/// GET /healthz on the --listen port: exit 0 on a 2xx. An unspecified listen address
/// (`0.0.0.0`) is probed on loopback.
pub async fn run(settings: &Settings) -> anyhow::Result<ExitCode> {
    let mut addr = settings.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(Ipv4Addr::LOCALHOST.into());
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()?;
    let status = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await?
        .status();
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
