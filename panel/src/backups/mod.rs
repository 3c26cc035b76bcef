//! Backup definitions, their runs (on the backup agent or reported by scripts) and reports.

pub mod job;
pub mod routes;
