//! Domains: the names a tenant's customers own and their status (spec `DomainStatus`).
//! [`store`] is the only writer of the `domains` table; orders, hosting and DNS ask it.

pub mod routes;
pub mod store;
