//! Mailboxes on the tenant's mail server (Postfix maps + Dovecot): the routes queue jobs,
//! the executors send the mail agent its commands.

pub mod job;
pub mod routes;
