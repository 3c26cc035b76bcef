//! Authentication and authorization: passwords, access and refresh tokens, the current
//! operator, the permission table, login throttling.

pub mod current;
pub mod password;
pub mod permissions;
pub mod routes;
pub mod session;
pub mod throttle;
pub mod tokens;
