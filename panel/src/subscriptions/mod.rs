//! Subscriptions: a customer's plan, its billing period, and the lifecycle it drives across
//! its resources — payments renew it, a failed payment suspends them after a grace period,
//! a cancellation suspends and later terminates them ([`lifecycle`] has the rules,
//! [`service`] the state the resources should be in, [`job`] the jobs that put them there).

pub mod billing;
pub mod expiry;
pub mod job;
pub mod lifecycle;
pub mod policy;
pub mod routes;
pub mod service;
pub mod store;
