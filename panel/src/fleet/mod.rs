//! The fleet: the panel's side of its agents.
//!
//! - [`ca`]: the certificate authority that signs agent client certificates (and the hub's
//!   own server certificate).
//! - [`enroll`]: one-time enrollment tokens and their redemption into an agent row and a
//!   certificate.
//! - [`tls`]: the hub's rustls configuration: client certificates from our CA only, revoked
//!   serials refused at the handshake; the agent identity read from a certificate.
//! - [`hub`]: the agents' mTLS WebSocket listener and one task per connection.
//! - [`route`]: [`route::send`], a typed command to a server's agent with a deadline, from any
//!   panel process to whichever holds the agent (and why PostgreSQL carries it).
//! - [`dispatch`]: this process's connections and the commands it waits for (in memory).
//! - [`commands`]: `agent_commands`, the durable half: each command until its outcome.
//! - [`router`]: the `LISTEN` loop every panel process runs: commands to write to agents
//!   held here, outcomes for senders here, revocations made elsewhere.
//! - [`presence`]: online/offline and last seen (Redis and PostgreSQL), metrics history.
//! - [`turns`]: how many commands this process's jobs have in flight to one server at once.
//! - [`batch`]: the hub's lookups, presence writes and metrics samples, one statement per
//!   batch of connections (group commit), through at most three pool connections.
//!
//! Wire types (messages, enrollment bodies, the token format) live in
//! `mpanel_protocol::messages`; this module converts at the edge and owns the database rows
//! (`agents`, `agent_certificates`, `enrollment_tokens`, `server_metrics`, `agent_commands`, the presence
//! columns of `servers`). It never talks to agents itself over HTTP: agents dial in.

pub mod batch;
pub mod ca;
pub mod commands;
pub mod dispatch;
pub mod enroll;
pub mod gate;
pub mod hub;
pub mod presence;
pub mod route;
pub mod router;
pub mod tls;
pub mod turns;

pub use ca::CertificateAuthority;
pub use dispatch::{DispatchError, Fleet};
