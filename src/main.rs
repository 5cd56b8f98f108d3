//! Thin entry point: parse flags, set up logging, run the chosen command.
use clap::Parser;
use std::process::ExitCode;
use std::time::Instant;

use classifier_api::config::{Cli, Command, Settings};
use classifier_api::domain::{ClassifyResponse, ImageUrl};
use classifier_api::error::ApiError;
use classifier_api::{admin, rss, shutdown, startup, telemetry};

fn main() -> ExitCode {
    // Before any thread exists (see the function for the memory it saves).
    let one_arena = rss::single_malloc_arena();
    // TensorFlow's C++ INFO lines ("oneDNN custom operations are on" ...) drown our own logs.
    if std::env::var_os("TF_CPP_MIN_LOG_LEVEL").is_none() {
        std::env::set_var("TF_CPP_MIN_LOG_LEVEL", "2");
    }
    let cli = Cli::parse();
    telemetry::init(cli.settings.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime.block_on(serve(cli.settings, one_arena)),
        Command::Classify { target } => runtime.block_on(classify(cli.settings, &target)),
        Command::Healthcheck => runtime.block_on(healthcheck(&cli.settings)),
        Command::User(command) => admin::user(&cli.settings, command).map(|()| ExitCode::SUCCESS),
        Command::Key(command) => admin::key(&cli.settings, command).map(|()| ExitCode::SUCCESS),
        Command::Token(command) => admin::token(&cli.settings, command).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings, single_malloc_arena: bool) -> anyhow::Result<ExitCode> {
    tracing::info!(
        ?settings,
        single_malloc_arena,
        "starting classifier-api {}",
        env!("CARGO_PKG_VERSION")
    );
    let app = startup::Application::build(settings).await?;
    app.run_until_stopped(shutdown::signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `classifier-api classify FILE|URL`: the API's answer on stdout, without a server.
async fn classify(settings: Settings, target: &str) -> anyhow::Result<ExitCode> {
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
                serde_json::to_string(&ClassifyResponse::new(&c, started.elapsed()))?
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("{}", serde_json::to_string(&e.body())?);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `classifier-api healthcheck`: GET /healthz on the --listen port (an unspecified listen address
/// is probed on loopback).
async fn healthcheck(settings: &Settings) -> anyhow::Result<ExitCode> {
    let mut addr = settings.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(3))
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
