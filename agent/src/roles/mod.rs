//! The executors of each role's commands, one module per role.
//!
//! - [`dns`]: PowerDNS zones through the local PowerDNS HTTP API.

pub mod dns;
