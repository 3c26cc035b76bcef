//! Types shared by the mPanel panel and its agents.
//!
//! [`values`] holds the validating newtypes that guard the HTTP API, the job queue and the
//! agent with one set of rules; [`messages`] holds the versioned messages of the panel–agent
//! protocol and of enrollment; [`duration`] is the one parser of durations both binaries'
//! configurations use; [`identity`] is the rule that says which agent a certificate names;
//! `ws` (feature `ws`) holds the WebSocket limits both ends of the connection use.

pub mod backup;
pub mod dns;
pub mod duration;
pub mod identity;
pub mod mail;
pub mod messages;
pub mod values;
pub mod web;
#[cfg(feature = "ws")]
pub mod ws;

pub use values::*;
