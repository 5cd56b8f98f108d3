//! The command line: which command to run, and the commands that run without the server.
//!
//! - [`admin`]: `user add|remove|list`, `key public`, `token revoke`, on the database or Redis.
//! - [`classify`]: `classify FILE|URL`, the pipeline without HTTP.
//! - [`healthcheck`]: probes a running server, for container HEALTHCHECKs.
//! - [`serve`]: the HTTP service, the default command.
//!
//! The settings every command shares are [`Settings`](crate::config::Settings), in `config`.
use clap::{Parser, Subcommand};

use crate::auth::Role;
use crate::config::Settings;

pub mod admin;
pub mod classify;
pub mod healthcheck;
pub mod serve;

#[derive(Debug, Parser)]
#[command(
    name = "classifier-api",
    version,
    about = "Classifies the image behind a URL with MobileNet (TensorFlow)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (the default when no subcommand is given).
    Serve,
    /// Classify one local file or URL and print the same JSON the API answers.
    Classify {
        /// A path to an image file, or an http(s) URL.
        target: String,
    },
    /// Exit 0 if the server on --listen answers GET /healthz (for container HEALTHCHECKs).
    Healthcheck,
    /// Manage the users who may ask for tokens. With --redis-url, on Redis while the servers
    /// run; otherwise no server may run on the same data dir (the database admits one process
    /// at a time).
    #[command(subcommand)]
    User(UserCommand),
    /// The root key tokens are signed with.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Issued tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is asked for without echo, or read from stdin.
    Add {
        name: String,
        /// Read the password from standard input (first line) instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        /// Give the user a role: `ops` may read /report, /report/history and /metrics under
        /// `--ops-auth token`. Without it, a plain user. To change a user's role, remove and
        /// add them again (their old tokens stop working).
        #[arg(long)]
        role: Option<Role>,
    },
    /// Remove a user; their tokens stop working.
    Remove { name: String },
    /// List users, one a line: the name, then a tab and the role for a user who has one.
    List,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print the public key (`ed25519/<hex>`) other services verify tokens with.
    Public,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token (and every token attenuated from it) invalid.
    Revoke { token: String },
}
