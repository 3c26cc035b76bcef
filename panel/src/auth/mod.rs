//! Authentication: password hashing now; tokens, sessions and permissions as they land.

pub mod password;
