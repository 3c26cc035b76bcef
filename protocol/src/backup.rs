//! Backups as the panel asks a `backup` agent to make them: [`BackupSite`] (a website's files,
//! tar + zstd) and [`BackupDatabase`] (a PostgreSQL database, `pg_dump --format=custom`), and
//! the [`DatabaseName`] the latter carries.
//!
//! Every value that reaches a path or a command line is a validating newtype: the site is a
//! [`SystemUser`] (a short lowercase login name, one path segment), the database a
//! [`DatabaseName`] (`^[a-z_][a-z0-9_]{0,62}$`), the target a UUID. Nothing in a command can
//! name a path outside the agent's configured directories or add an argument.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    SystemUser,
    messages::{AgentCommand, Role},
};

/// The longest database name PostgreSQL keeps (NAMEDATALEN - 1).
pub const MAX_DATABASE_NAME_LEN: usize = 63;

/// Why a backup value was refused; worded for a log line or a 400 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BackupValueError(String);

/// A PostgreSQL database name as mPanel creates them: 1–63 characters matching
/// `^[a-z_][a-z0-9_]*$`.
///
/// Stricter than PostgreSQL (which allows any quoted identifier) so the name is safe as one
/// path segment, as one argument of `pg_dump` (it cannot start with `-` or contain `=`, so it
/// is never taken for an option or a connection string) and unquoted in SQL. Uppercase is
/// refused rather than lowercased: `Shop` and `shop` are different databases.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DatabaseName(String);

impl DatabaseName {
    pub fn parse(input: &str) -> Result<DatabaseName, BackupValueError> {
        let shown: String = input
            .chars()
            .take(64)
            .flat_map(char::escape_debug)
            .collect();
        if input.is_empty() {
            return Err(BackupValueError("database name: must not be empty".into()));
        }
        if input.len() > MAX_DATABASE_NAME_LEN {
            return Err(BackupValueError(format!(
                "database name: is {} bytes long, at most {MAX_DATABASE_NAME_LEN} are allowed",
                input.len()
            )));
        }
        let mut bytes = input.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
        let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !(first_ok && rest_ok) {
            return Err(BackupValueError(format!(
                "database name: '{shown}' must be a lowercase letter or '_' followed by \
                 lowercase letters, digits or '_'"
            )));
        }
        Ok(DatabaseName(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DatabaseName {
    type Error = BackupValueError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        DatabaseName::parse(&s)
    }
}

impl From<DatabaseName> for String {
    fn from(d: DatabaseName) -> String {
        d.0
    }
}

impl fmt::Display for DatabaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for DatabaseName {
    type Err = BackupValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DatabaseName::parse(s)
    }
}

/// Archives a site's files, `<sites_root>/<systemUser>`, into
/// `<archive_dir>/site/<targetId>/<UTC time>.tar.zst` and keeps the newest archives of that
/// target (the agent's `keep`). Each run makes a new archive; running it twice makes two
/// complete archives and never a partial one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupSite {
    /// What the archives belong to (the panel's domain id); names their directory.
    pub target_id: Uuid,
    pub system_user: SystemUser,
}

impl AgentCommand for BackupSite {
    type Output = BackupOutput;

    fn required_role(&self) -> Option<Role> {
        Some(Role::Backup)
    }
}

/// Dumps a database (`pg_dump --format=custom`) into
/// `<archive_dir>/database/<targetId>/<database>/<UTC time>.dump` and keeps the newest dumps
/// of that database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupDatabase {
    /// What the dumps belong to (the panel's target id); names their directory.
    pub target_id: Uuid,
    pub database: DatabaseName,
}

impl AgentCommand for BackupDatabase {
    type Output = BackupOutput;

    fn required_role(&self) -> Option<Role> {
        Some(Role::Backup)
    }
}

/// The archive a backup made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupOutput {
    /// The archive's path on the agent's host.
    pub path: String,
    pub size_bytes: u64,
    /// SHA-256 of the archive file, lowercase hex.
    pub sha256: String,
    /// The older archives of the same target removed to keep the newest ones (paths).
    pub pruned: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Command;

    #[test]
    fn database_names() {
        for ok in ["shop", "_x", "wp_1", &"a".repeat(63)] {
            assert!(DatabaseName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1shop",
            "Shop",
            "-shop",
            "shop-db",
            "a b",
            "a;drop",
            "a=b",
            "../etc",
            "a\nb",
            "shоp", // Cyrillic 'о'
            &"a".repeat(64),
        ] {
            assert!(DatabaseName::parse(bad).is_err(), "{bad:?}");
        }
        let e = DatabaseName::parse("a\nb").unwrap_err().to_string();
        assert!(e.contains("a\\nb") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn round_trips_and_refuses_escapes() {
        let target = Uuid::parse_str("6f1c1f7e-8f0a-4d5e-9a39-1f1b2c3d4e5f").unwrap();
        let cmd = Command::from(BackupSite {
            target_id: target,
            system_user: SystemUser::parse("examplecom").unwrap(),
        });
        let json = serde_json::to_string(&cmd).unwrap();
        assert!(json.contains(r#""kind":"backup_site""#), "{json}");
        assert!(json.contains(r#""systemUser":"examplecom""#), "{json}");
        assert!(json.contains(r#""targetId":"6f1c1f7e-"#), "{json}");
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), cmd);
        assert_eq!(cmd.required_role(), Some(Role::Backup));

        for bad in [
            "../etc",
            "a.com;rm -rf /",
            "root",
            "a b",
            "a\\nb",
            "exаmplecom",
            "/home/x",
        ] {
            let tampered = json.replacen("examplecom", bad, 1);
            assert!(
                serde_json::from_str::<Command>(&tampered).is_err(),
                "{tampered} was accepted"
            );
        }
        for tampered in [
            json.replacen("6f1c1f7e-", "../../", 1),
            json.replacen('}', r#","extra":1}"#, 1),
        ] {
            assert!(
                serde_json::from_str::<Command>(&tampered).is_err(),
                "{tampered} was accepted"
            );
        }

        let cmd = Command::from(BackupDatabase {
            target_id: target,
            database: DatabaseName::parse("shop_db").unwrap(),
        });
        let json = serde_json::to_string(&cmd).unwrap();
        assert!(json.contains(r#""kind":"backup_database""#), "{json}");
        assert!(json.contains(r#""database":"shop_db""#), "{json}");
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), cmd);
        assert_eq!(cmd.required_role(), Some(Role::Backup));
        for bad in [
            "../etc",
            "shop;drop",
            "--file=/etc/passwd",
            "host=evil",
            "shop\\ndb",
            "shоp_db",
            "",
        ] {
            let tampered = json.replacen("shop_db", bad, 1);
            assert!(
                serde_json::from_str::<Command>(&tampered).is_err(),
                "{tampered} was accepted"
            );
        }
    }

    #[test]
    fn output_round_trips() {
        let out = BackupOutput {
            path: "/var/backups/mpanel-agent/site/x/20261124T101500.000001Z.tar.zst".into(),
            size_bytes: 42,
            sha256: "ab".repeat(32),
            pruned: vec![],
        };
        let json = serde_json::to_value(&out).unwrap();
        assert_eq!(json["sizeBytes"], 42);
        assert_eq!(serde_json::from_value::<BackupOutput>(json).unwrap(), out);
    }
}
