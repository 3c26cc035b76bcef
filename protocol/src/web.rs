//! Websites as the panel asks a `web` agent to serve them: [`CreateSite`],
//! [`SetSiteSuspended`], [`TerminateSite`] and their HTTPS, [`IssueCertificate`].
//!
//! Every value that reaches a path, an nginx or php-fpm file or a command line is one of the
//! validating newtypes: a [`DomainName`] is lowercase ASCII letters, digits, `-` and `.`, a
//! [`SystemUser`] is a short lowercase login name that is not a system account, a
//! [`PhpVersion`] is `MAJOR.MINOR`. Nothing in a command can add a directive, a path segment
//! or an argument.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    DomainName, PhpVersion, SystemUser,
    messages::{AgentCommand, Label, Role, Text},
};

/// Makes the site exist and serve: the Linux user and its home, the document root (with a
/// placeholder page when empty), the php-fpm pool and the nginx vhost. A suspended site is
/// served again. Sending it again changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSite {
    pub domain: DomainName,
    pub system_user: SystemUser,
    pub php_version: PhpVersion,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSiteOutput {
    pub system_user: SystemUser,
    /// The account's home directory as the account sees it (`/home/<user>`).
    pub home_dir: String,
    pub document_root: String,
    /// `false` when the site already was exactly as asked.
    pub changed: bool,
}

impl AgentCommand for CreateSite {
    type Output = CreateSiteOutput;

    fn required_role(&self) -> Option<Role> {
        Some(Role::Web)
    }
}

/// Suspends a site (its vhost answers every request with a "suspended" page and the user can
/// no longer log in) or serves it again; files, pool and user are kept either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetSiteSuspended {
    pub domain: DomainName,
    pub system_user: SystemUser,
    /// The version the site runs on when it is served again.
    pub php_version: PhpVersion,
    pub suspended: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetSiteSuspendedOutput {
    pub suspended: bool,
    pub changed: bool,
}

impl AgentCommand for SetSiteSuspended {
    type Output = SetSiteSuspendedOutput;

    fn required_role(&self) -> Option<Role> {
        Some(Role::Web)
    }
}

/// Removes a site for good: the home is archived (tar + zstd) first, then the vhost, the
/// pool and the user (with its home) are removed. A site that is already gone is terminated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TerminateSite {
    pub domain: DomainName,
    pub system_user: SystemUser,
    pub php_version: PhpVersion,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TerminateSiteOutput {
    /// The archive of the home directory; `None` when there was no home to archive.
    pub archive: Option<String>,
    pub archive_bytes: Option<u64>,
    /// `false` when nothing of the site was left.
    pub removed: bool,
}

impl AgentCommand for TerminateSite {
    type Output = TerminateSiteOutput;

    fn required_role(&self) -> Option<Role> {
        Some(Role::Web)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Command;

    #[test]
    fn round_trips_and_refuses_escapes() {
        let cmd = Command::from(CreateSite {
            domain: DomainName::parse("example.com").unwrap(),
            system_user: SystemUser::parse("examplecom").unwrap(),
            php_version: PhpVersion::parse("8.2").unwrap(),
        });
        let json = serde_json::to_string(&cmd).unwrap();
        assert!(json.contains(r#""kind":"create_site""#), "{json}");
        assert!(json.contains(r#""systemUser":"examplecom""#), "{json}");
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), cmd);

        for (field, bad) in [
            ("example.com", "a.com;rm -rf /"),
            ("example.com", "../etc"),
            ("example.com", "a.com\nserver{}"),
            ("example.com", "exаmple.com"),
            ("examplecom", "../root"),
            ("examplecom", "root"),
            ("examplecom", "a b"),
            ("\"8.2\"", "\"8.2;\""),
        ] {
            let tampered = json.replacen(field, bad, 1);
            assert!(
                serde_json::from_str::<Command>(&tampered).is_err(),
                "{tampered} was accepted"
            );
        }
    }
}

/// Gives the site a certificate for its apex and `www` from the agent's ACME directory
/// (HTTP-01, answered by the site's own vhost over plain HTTP), installs it on a 443 server
/// block (HTTP redirected to HTTPS except the challenge path; suspended sites show their
/// page on both ports) and checks with a real TLS handshake that the served certificate is
/// the one installed. The account key and the site's key are made on the host and never
/// leave it. Sending it again keeps a certificate that is not yet due for renewal (two
/// thirds of its lifetime) unless `force`. The agent renews its certificates by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssueCertificate {
    pub domain: DomainName,
    pub system_user: SystemUser,
    pub php_version: PhpVersion,
    /// Order a new certificate even when the current one is not due.
    #[serde(default)]
    pub force: bool,
}

/// The certificate being served after the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssueCertificateOutput {
    /// The issuer's distinguished name, as in the certificate.
    pub issuer: String,
    /// The certificate's serial number, lowercase hex.
    pub serial: String,
    /// The DNS names it covers.
    pub names: Vec<String>,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// When the agent will renew it.
    pub renew_at: DateTime<Utc>,
    /// `false` when the certificate already served was kept.
    pub changed: bool,
}

impl AgentCommand for IssueCertificate {
    type Output = IssueCertificateOutput;

    fn required_role(&self) -> Option<Role> {
        Some(Role::Web)
    }
}

/// What a web agent tells the panel, unasked, of one site certificate it renews on its own
/// (`AgentMessage::CertificateStatus`, protocol 2): after every renewal attempt, and at
/// connect for each certificate whose latest state the panel has not been sent yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateStatus {
    pub domain: DomainName,
    /// The issuer of the certificate served, as in the certificate.
    pub issuer: Text<1024>,
    /// The serial of the certificate served, lowercase hex.
    pub serial: Label<64>,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub renew_at: DateTime<Utc>,
    /// Renewals that failed in a row (0: none since the certificate was obtained).
    pub failures: u32,
    /// The last failure's code and message, while `failures > 0`.
    pub last_error: Option<Text<2048>>,
    /// When the agent tries next.
    pub next_attempt_at: DateTime<Utc>,
    /// When the agent recorded this state (its clock): an older status never replaces a
    /// newer one.
    pub recorded_at: DateTime<Utc>,
}
