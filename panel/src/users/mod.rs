//! Operators (users) of a tenant and their roles.

pub mod routes;
pub mod store;
