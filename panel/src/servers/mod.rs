//! Servers of the fleet: their rows (routes), their agents' enrollment, health, ping and
//! revocation.

pub mod agent_routes;
pub mod enrollment;
pub mod routes;
