//! DNS zones and their records: operators edit rows, jobs push the zone to PowerDNS
//! through the DNS agent.

pub mod job;
pub mod routes;
pub mod store;
