//! Types shared by the mPanel panel and its agents.
//!
//! [`values`] holds the validating newtypes that guard the HTTP API, the job queue and the
//! agent with one set of rules.

pub mod values;

pub use values::*;
