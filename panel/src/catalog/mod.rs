//! The catalog: products and plans (admin), and the public catalog the marketing site reads.

pub mod limits;
pub mod public;
pub mod routes;
