//! Test harness: a fresh database per test, a Redis key prefix per test, and the real panel
//! process started on a random port.

pub mod api;
pub mod db;
pub mod dovecot;
pub mod fleet;
pub mod panel;
pub mod pdns;
pub mod pebble;
pub mod proxy;
pub mod replica;
pub mod request_loop;
pub mod selling;
pub mod smtp;
pub mod web;

pub use db::TestDb;
pub use panel::{TestApp, wait_for};
