//! Orders: a paid order placed once (internal API or Stripe webhook), the rows and jobs it
//! creates, and what happens when its jobs are done.

pub mod jobs;
pub mod place;
pub mod routes;
pub mod stripe;
pub mod webhooks;
