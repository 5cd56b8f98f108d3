//! End-to-end tests: the real app on 127.0.0.1:0, images from a local fixture server.
//! One test binary (zero-to-production style) so the app code links once.
mod cache;
mod classify;
mod cli;
mod cors;
mod elastic;
mod errors;
mod exif;
mod golden;
mod helpers;
mod history;
mod model;
mod ops;
mod ops_auth;
mod process;
mod ratelimit;
mod redis;
mod report;
mod secret;
mod ssrf;
mod upload;
