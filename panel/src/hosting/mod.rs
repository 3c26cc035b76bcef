//! Hosting accounts: a site on a web server. The routes queue jobs; the job executors
//! place sites and send the web agent its commands.

pub mod job;
pub mod routes;
