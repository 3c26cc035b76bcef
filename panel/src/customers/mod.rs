//! Customers of a tenant: [`store`] writes them (orders create them), the routes read them.

pub mod routes;
pub mod store;
