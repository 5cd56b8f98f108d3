//! Thin entry point: parse flags, set up logging, run the chosen command.
use clap::Parser;
use std::process::ExitCode;

use classifier_api::cli::{admin, classify, healthcheck, serve, Cli, Command};
use classifier_api::{rss, telemetry};

/// Rust's allocations go to mimalloc (per-thread heaps, no shared lock); TensorFlow's C++ keeps
/// glibc's malloc, held to one arena for its memory's sake (`rss::single_malloc_arena`). With
/// every request's small allocations in that one arena too, the two tokio workers queued on its
/// lock: a third of the cached path's time in `perf` was futex waits and wakes.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Before any thread exists (see the function for the memory it saves).
    let one_arena = rss::single_malloc_arena();
    rss::fixed_mmap_threshold();
    let lean_mimalloc = rss::lean_mimalloc();
    // TensorFlow's C++ INFO lines ("oneDNN custom operations are on" ...) drown our own logs.
    if std::env::var_os("TF_CPP_MIN_LOG_LEVEL").is_none() {
        std::env::set_var("TF_CPP_MIN_LOG_LEVEL", "2");
    }
    let cli = Cli::parse();
    if cli.settings.lone_request_session
        && std::env::var_os("TF_OVERRIDE_GLOBAL_THREADPOOL").is_none()
    {
        // Still before any thread: each TensorFlow session then gets an intra-op pool of its
        // own, which the lone-request session needs to run wider than the shared one (see
        // `classify::model::Threads::own_pools`).
        std::env::set_var("TF_OVERRIDE_GLOBAL_THREADPOOL", "1");
    }
    let log = telemetry::init(cli.settings.log_format);
    if !lean_mimalloc {
        tracing::warn!(
            "mimalloc's memory settings are not as this build expects; peak RSS will be higher"
        );
    }
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
        Command::User(command) => runtime
            .block_on(admin::user(&settings, command))
            .map(|()| ExitCode::SUCCESS),
        Command::Key(command) => runtime
            .block_on(admin::key(&settings, command))
            .map(|()| ExitCode::SUCCESS),
        Command::Token(command) => runtime
            .block_on(admin::token(&settings, command))
            .map(|()| ExitCode::SUCCESS),
    };
    // Runtime first (its tasks may still log), then the log writer's queue, then our last word.
    drop(runtime);
    drop(log);
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
