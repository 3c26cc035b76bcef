//! VPS instances (the spec's model; no agent role drives a hypervisor yet).

pub mod job;
pub mod routes;
