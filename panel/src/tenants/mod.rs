//! Tenants (hosting companies sharing one panel).

pub mod routes;
