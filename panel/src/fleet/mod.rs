//! The fleet: the panel's side of its agents.
//!
//! - [`ca`]: the certificate authority that signs agent client certificates.
//! - [`enroll`]: one-time enrollment tokens and their redemption into an agent row and a
//!   certificate.
//!
//! Wire types (messages, enrollment bodies, the token format) live in
//! `mpanel_protocol::messages`; this module converts at the edge and owns the database rows
//! (`agents`, `agent_certificates`, `enrollment_tokens`). It never talks to agents itself
//! over HTTP: agents dial in.

pub mod ca;
pub mod enroll;

pub use ca::CertificateAuthority;
