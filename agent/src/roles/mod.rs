//! The executors of each role's commands, one module per role.
//!
//! - [`acme`]: the ACME client the web role's certificates come from.
//! - [`backup`]: site archives (tar + zstd) and database dumps (pg_dump), pruned per target.
//! - [`dns`]: PowerDNS zones through the local PowerDNS HTTP API.
//! - [`mail`]: Postfix virtual mailboxes and Dovecot passwd-file users.
//! - [`web`]: Linux users, document roots, nginx vhosts and php-fpm pools, and the sites'
//!   certificates (issued, installed, checked and renewed).

pub mod acme;
pub mod backup;
mod batch;
pub mod dns;
pub mod mail;
pub mod web;

use mpanel_protocol::messages::Role;

use crate::{config::AgentConfig, host::program_available};

/// The programs `role` needs that this host lacks, as one sentence; `None` when it has them
/// all. Checked before every command, so installing a missing tool needs no restart.
pub fn missing_tools(role: Role, config: &AgentConfig) -> Option<String> {
    let mut needed: Vec<String> = Vec::new();
    let path = |p: &std::path::PathBuf| p.display().to_string();
    match role {
        Role::Web => {
            let w = &config.web;
            needed.extend([&w.useradd, &w.usermod, &w.userdel, &w.tar, &w.zstd].map(path));
            needed.extend(w.nginx_test.first().cloned());
            needed.extend(w.nginx_reload.as_ref().and_then(|a| a.first().cloned()));
        }
        Role::Mail => {
            if let Some(m) = &config.mail {
                needed.push(path(&m.postmap));
                for argv in [&m.postfix_reload, &m.dovecot_reload].into_iter().flatten() {
                    needed.extend(argv.first().cloned());
                }
            }
        }
        Role::Backup => {
            let b = &config.backup;
            needed.extend([&b.tar, &b.zstd].map(path));
        }
        Role::Dns | Role::Db => {}
    }
    let missing: Vec<String> = needed
        .into_iter()
        .filter(|p| !program_available(p))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "missing {} (install the role's packages or fix agent.toml)",
            missing.join(", ")
        )
    })
}

/// Logs, once at start, each configured role that cannot work for lack of a program.
pub fn warn_missing_tools(config: &AgentConfig) {
    for role in &config.roles {
        if let Some(missing) = missing_tools(*role, config) {
            tracing::warn!(
                %role,
                "the {role} role will refuse its commands (role_unavailable): {missing}"
            );
        }
    }
}
