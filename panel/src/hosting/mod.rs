//! Hosting accounts: a site on a web server, and its HTTPS certificate ([`tls`]). The routes
//! queue jobs; the job executors place sites and send the web agent its commands.

pub mod job;
pub mod routes;
pub mod tls;
