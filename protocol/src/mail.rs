//! Mailboxes as the panel asks a `mail` agent to serve them: [`CreateMailbox`],
//! [`SetMailboxEnabled`], [`SetMailboxPassword`] and [`DeleteMailbox`], and the
//! [`PasswordHash`] they carry.
//!
//! The agent writes these values into Postfix maps (`key value`, whitespace-separated) and a
//! Dovecot passwd-file (`:`-separated, one entry per line). Nothing that could break either
//! format can be built: an [`EmailAddress`] has no whitespace, `:` or control character, and
//! a [`PasswordHash`] is an argon2id PHC string of a strict charset. The panel hashes the
//! password; the agent never sees it in clear.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{
    EmailAddress,
    messages::{AgentCommand, Role},
};

/// The largest mailbox quota, in MiB (1 TiB).
pub const MAX_QUOTA_MB: u32 = 1_048_576;

/// Why a mail value was refused; worded for a log line or a 400 body. It never repeats a
/// password hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MailValueError(String);

impl MailValueError {
    fn new(message: impl Into<String>) -> MailValueError {
        MailValueError(message.into())
    }
}

const PHC_PREFIX: &str = "$argon2id$v=19$";
/// The longest PHC string accepted (a 64-byte salt and hash fit well within it).
pub const MAX_PASSWORD_HASH_LEN: usize = 256;

/// An argon2id password hash in PHC form:
/// `$argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<hash>`, salt and hash in unpadded
/// standard base64 (`A–Z a–z 0–9 + /`), salt 11–64 and hash 22–128 characters, `m`
/// 8–4 194 304, `t` 1–64, `p` 1–16, numbers without leading zeros. That is what the argon2
/// crate and `doveadm pw -s ARGON2ID` produce (the latter behind a `{ARGON2ID}` prefix,
/// which is not part of this value).
///
/// `Debug` shows the parameters only, never the salt or hash; there is no `Display`, so it
/// cannot land in a log by accident. [`PasswordHash::as_phc`] gives the string to write.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PasswordHash(String);

impl PasswordHash {
    pub fn parse(input: &str) -> Result<PasswordHash, MailValueError> {
        let invalid = |why: &str| {
            MailValueError::new(format!(
                "password hash {why} (expected an argon2id PHC string \
                 $argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>)"
            ))
        };
        if input.len() > MAX_PASSWORD_HASH_LEN {
            return Err(invalid("is too long"));
        }
        let rest = input
            .strip_prefix(PHC_PREFIX)
            .ok_or_else(|| invalid("does not start with $argon2id$v=19$"))?;
        let mut parts = rest.split('$');
        let (Some(params), Some(salt), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("does not have exactly parameters, salt and hash"));
        };
        let mut params = params.split(',');
        for (name, min, max) in [("m", 8, 4_194_304), ("t", 1, 64), ("p", 1, 16)] {
            let value = params
                .next()
                .and_then(|p| p.strip_prefix(name))
                .and_then(|p| p.strip_prefix('='))
                .ok_or_else(|| invalid("does not have the parameters m=…,t=…,p=… in order"))?;
            let ok = !value.is_empty()
                && value.len() <= 7
                && value.bytes().all(|b| b.is_ascii_digit())
                && !value.starts_with('0')
                && value.parse::<u32>().is_ok_and(|v| (min..=max).contains(&v));
            if !ok {
                return Err(invalid(&format!(
                    "has a parameter {name} that is not a number in {min}..={max}"
                )));
            }
        }
        if params.next().is_some() {
            return Err(invalid("has parameters other than m, t and p"));
        }
        let b64 = |s: &str, min: usize, max: usize| {
            (min..=max).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        };
        if !b64(salt, 11, 64) {
            return Err(invalid("has a salt that is not 11-64 base64 characters"));
        }
        if !b64(hash, 22, 128) {
            return Err(invalid("has a hash that is not 22-128 base64 characters"));
        }
        Ok(PasswordHash(input.to_owned()))
    }

    /// The PHC string, to write into the passwd-file. Never log it.
    pub fn as_phc(&self) -> &str {
        &self.0
    }

    /// The `m=…,t=…,p=…` part.
    fn params(&self) -> &str {
        self.0[PHC_PREFIX.len()..].split('$').next().unwrap_or("")
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PasswordHash(argon2id {} ***)", self.params())
    }
}

impl TryFrom<String> for PasswordHash {
    type Error = MailValueError;
    fn try_from(s: String) -> Result<Self, MailValueError> {
        PasswordHash::parse(&s)
    }
}

impl From<PasswordHash> for String {
    fn from(v: PasswordHash) -> String {
        v.0
    }
}

impl std::str::FromStr for PasswordHash {
    type Err = MailValueError;
    fn from_str(s: &str) -> Result<Self, MailValueError> {
        PasswordHash::parse(s)
    }
}

/// A mailbox quota in MiB, 1 to [`MAX_QUOTA_MB`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct QuotaMb(u32);

impl QuotaMb {
    pub fn new(mb: u32) -> Result<QuotaMb, MailValueError> {
        if !(1..=MAX_QUOTA_MB).contains(&mb) {
            return Err(MailValueError::new(format!(
                "quota {mb} MiB is outside 1..={MAX_QUOTA_MB}"
            )));
        }
        Ok(QuotaMb(mb))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for QuotaMb {
    type Error = MailValueError;
    fn try_from(v: u32) -> Result<Self, MailValueError> {
        QuotaMb::new(v)
    }
}

impl From<QuotaMb> for u32 {
    fn from(q: QuotaMb) -> u32 {
        q.0
    }
}

/// Makes the mailbox exist exactly as given, enabled: its domain in the virtual mailbox
/// domains, the address in the virtual mailbox map, its passwd-file entry and its maildir.
/// Sending it again changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateMailbox {
    pub address: EmailAddress,
    pub password_hash: PasswordHash,
    /// `None`: no quota.
    pub quota_mb: Option<QuotaMb>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateMailboxOutput {
    /// The absolute path of the mailbox's maildir.
    pub maildir: String,
    /// `false` when the mailbox already was exactly as asked.
    pub changed: bool,
}

impl AgentCommand for CreateMailbox {
    type Output = CreateMailboxOutput;

    fn required_role(&self) -> Option<Role> {
        Some(Role::Mail)
    }
}

/// Lets a mailbox log in (`true`) or not (`false`); its mail and maildir are kept either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetMailboxEnabled {
    pub address: EmailAddress,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetMailboxEnabledOutput {
    pub enabled: bool,
    pub changed: bool,
}

impl AgentCommand for SetMailboxEnabled {
    type Output = SetMailboxEnabledOutput;

    fn required_role(&self) -> Option<Role> {
        Some(Role::Mail)
    }
}

/// Replaces a mailbox's password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetMailboxPassword {
    pub address: EmailAddress,
    pub password_hash: PasswordHash,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetMailboxPasswordOutput {
    pub changed: bool,
}

impl AgentCommand for SetMailboxPassword {
    type Output = SetMailboxPasswordOutput;

    fn required_role(&self) -> Option<Role> {
        Some(Role::Mail)
    }
}

/// Removes a mailbox from the maps and the passwd-file (and its domain from the virtual
/// mailbox domains when it was the domain's last mailbox). Its maildir is archived on the
/// mail server first (nothing is removed when that fails), then removed. A mailbox that
/// does not exist is already deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteMailbox {
    pub address: EmailAddress,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteMailboxOutput {
    /// `false` when there was no such mailbox.
    pub deleted: bool,
    /// Where the maildir was.
    pub maildir: String,
    /// The archive of the maildir on the mail server (none when there was no maildir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
}

impl AgentCommand for DeleteMailbox {
    type Output = DeleteMailboxOutput;

    fn required_role(&self) -> Option<Role> {
        Some(Role::Mail)
    }
}
