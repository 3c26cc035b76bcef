//! mPanel, the hosting control panel: HTTP API, job worker, fleet hub and certificate
//! authority in one library; `main.rs` only calls [`cli::main`].

pub mod app;
pub mod audit;
pub mod auth;
pub mod backups;
pub mod bootstrap;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod customers;
pub mod db;
pub mod dns;
pub mod domains;
pub mod duties;
pub mod fleet;
pub mod hosting;
pub mod http;
pub mod job_kinds;
pub mod jobs;
pub mod mail;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod orders;
pub mod redis;
pub mod rlimit;
pub mod secrets;
pub mod servers;
pub mod subscriptions;
pub mod telemetry;
pub mod tenants;
pub mod users;
pub mod util;
pub mod vps;
