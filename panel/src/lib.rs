//! mPanel, the hosting control panel: HTTP API, job worker, fleet hub and certificate
//! authority in one library; `main.rs` only calls [`cli::main`].

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod db;
pub mod fleet;
pub mod http;
pub mod jobs;
pub mod model;
pub mod notify;
pub mod orders;
pub mod provisioning;
pub mod redis;
pub mod secrets;
pub mod stripe;
pub mod telemetry;
pub mod util;
