//! The executors: one function per command, and [`execute`], the one place that checks the
//! role a command needs before running it.
//!
//! Adding a command (the provisioning issue will) is one function here and one arm in
//! [`execute`]. Executors must be idempotent: the journal answers re-sent ids, but a crash
//! between acting and journaling still repeats the command.

use mpanel_protocol::messages::{Command, Outcome, Ping, Pong};

use crate::config::AgentConfig;

/// Runs `command` if this agent serves the role it needs; otherwise an error outcome with
/// code `role_not_served` (not retryable: sending it again here cannot succeed).
pub async fn execute(command: &Command, config: &AgentConfig) -> Outcome {
    if let Some(role) = command.required_role()
        && !config.roles.contains(&role)
    {
        return Outcome::error(
            "role_not_served",
            &format!(
                "this agent does not serve the '{role}' role that '{}' needs",
                command.kind()
            ),
            false,
        );
    }
    if let Some(role) = command.required_role()
        && let Some(missing) = crate::roles::missing_tools(role, config)
    {
        return Outcome::error(
            "role_unavailable",
            &format!("the '{role}' role cannot work on this server: {missing}"),
            false,
        );
    }
    match command {
        Command::Ping(ping) => self::ping(ping).await,
        Command::SyncDnsZone(cmd) => crate::roles::dns::sync_zone(cmd, config.dns.as_ref()).await,
        Command::DeleteDnsZone(cmd) => {
            crate::roles::dns::delete_zone(cmd, config.dns.as_ref()).await
        }
        Command::CreateMailbox(cmd) => {
            crate::roles::mail::create_mailbox(cmd, config.mail.as_ref()).await
        }
        Command::SetMailboxEnabled(cmd) => {
            crate::roles::mail::set_mailbox_enabled(cmd, config.mail.as_ref()).await
        }
        Command::SetMailboxPassword(cmd) => {
            crate::roles::mail::set_mailbox_password(cmd, config.mail.as_ref()).await
        }
        Command::DeleteMailbox(cmd) => {
            crate::roles::mail::delete_mailbox(cmd, config.mail.as_ref()).await
        }
        Command::CreateSite(cmd) => crate::roles::web::create_site(cmd, &config.web).await,
        Command::SetSiteSuspended(cmd) => {
            crate::roles::web::set_site_suspended(cmd, &config.web).await
        }
        Command::TerminateSite(cmd) => crate::roles::web::terminate_site(cmd, &config.web).await,
        Command::IssueCertificate(cmd) => {
            crate::roles::web::issue_certificate(cmd, &config.web, &config.state_dir).await
        }
        Command::BackupSite(cmd) => crate::roles::backup::backup_site(cmd, &config.backup).await,
        Command::BackupDatabase(cmd) => {
            crate::roles::backup::backup_database(cmd, &config.backup).await
        }
    }
}

async fn ping(ping: &Ping) -> Outcome {
    Outcome::ok(&Pong {
        echo: ping.echo.clone(),
    })
    .unwrap_or_else(|e| Outcome::error("internal", &e.to_string(), false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mpanel_protocol::messages::Text;

    #[tokio::test]
    async fn ping_echoes() {
        let cmd = Command::Ping(Ping {
            echo: Text::parse("hello").unwrap(),
        });
        let out = execute(&cmd, &AgentConfig::parse("").unwrap()).await;
        assert_eq!(
            out.output::<Ping>().unwrap().unwrap().echo.as_str(),
            "hello"
        );
    }
}
