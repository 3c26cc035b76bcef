//! The executors of each role's commands, one module per role.
//!
//! - [`dns`]: PowerDNS zones through the local PowerDNS HTTP API.
//! - [`mail`]: Postfix virtual mailboxes and Dovecot passwd-file users.

pub mod dns;
pub mod mail;
