//! `classifier-api classify FILE|URL`: the API's answer on stdout, without a server.
use std::process::ExitCode;
use std::time::Instant;

use crate::config::Settings;
use crate::domain::{ClassifyResponse, ImageUrl};
use crate::error::ApiError;
use crate::startup;

/// Prints the JSON `POST /classify-image` would answer; a classification failure prints the
/// API's error body and exits 1, a file that cannot be read is an error.
pub async fn run(settings: Settings, target: &str) -> anyhow::Result<ExitCode> {
    let pipeline = startup::build_pipeline(&settings).await?;
    let started = Instant::now();
    let result = if target.starts_with("http://") || target.starts_with("https://") {
        match ImageUrl::parse(target) {
            Ok(url) => pipeline.classify_url(&url).await,
            Err(e) => Err(ApiError::InvalidUrl(e.to_string())),
        }
    } else {
        match tokio::fs::read(target).await {
            Ok(bytes) => pipeline.classify_bytes(bytes.into()).await,
            Err(e) => anyhow::bail!("cannot read {target}: {e}"),
        }
    };
    match result {
        Ok(c) => {
            println!(
                "{}",
                serde_json::to_string(&ClassifyResponse::new(&c, started.elapsed(), None))?
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("{}", serde_json::to_string(&e.body())?);
            Ok(ExitCode::FAILURE)
        }
    }
}
