//! Thin entry point: parse flags, set up logging, run the chosen command.
use clap::Parser;
use std::process::ExitCode;

use classifier_api::cli::{admin, classify, healthcheck, serve, Cli, Command};
use classifier_api::{rss, telemetry};

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
    let settings = cli.settings;
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime.block_on(serve::run(settings, one_arena)),
        Command::Classify { target } => runtime.block_on(classify::run(settings, &target)),
        Command::Healthcheck => runtime.block_on(healthcheck::run(&settings)),
        Command::User(command) => admin::user(&settings, command).map(|()| ExitCode::SUCCESS),
        Command::Key(command) => admin::key(&settings, command).map(|()| ExitCode::SUCCESS),
        Command::Token(command) => admin::token(&settings, command).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
