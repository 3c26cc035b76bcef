//! Subscriptions: a customer's plan and its billing period.

pub mod expiry;
pub mod routes;
pub mod store;
