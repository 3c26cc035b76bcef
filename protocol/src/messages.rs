//! The messages between the panel and its agents, and the enrollment exchange before them.
//!
//! **Wire format.** One JSON object per WebSocket text frame, internally tagged by `type`
//! (`{"type":"hello","protocolVersion":1,…}`), fields in camelCase. Unknown message types,
//! missing fields and extra fields are errors: both sides are built from this crate, so a
//! field the receiver does not know means the sender speaks another protocol version, and
//! guessing would be worse than refusing. [`AgentMessage::decode`] and
//! [`PanelMessage::decode`] are the only way in: they refuse anything above
//! [`MAX_MESSAGE_BYTES`] before parsing and turn every malformed input into a
//! [`ProtocolError`], never a panic (a fuzz target in `protocol/fuzz` holds them to that).
//!
//! **Versioning.** The agent's first message is [`Hello`] with its [`PROTOCOL_VERSION`]; the
//! panel answers [`Welcome`] with its own, or [`PanelMessage::Goodbye`] when it cannot speak
//! the agent's. Deciding what is compatible is the receiver's job; this module only
//! guarantees that the version is always present.
//!
//! **Commands.** One struct per command behind [`Command`], each implementing
//! [`AgentCommand`] (the role it needs, the type of its successful answer). Adding a command
//! is one struct, its `impl AgentCommand` and one line in the `commands!` list below.
//!
//! **Enrollment** happens over plain HTTPS before any of this: [`EnrollRequest`] and
//! [`EnrollResponse`] are the body of `POST /api/agents/enroll`, and [`EnrollmentToken`] is
//! the one-time credential that also pins the panel's CA.
//!
//! Every string that comes off the wire is bounded ([`Text`], [`Label`], [`Hostname`]), so a
//! decoded message is safe to log and to store.

use std::{collections::BTreeMap, fmt};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::backup::{BackupDatabase, BackupSite};
use crate::dns::{DeleteDnsZone, SyncDnsZone};
use crate::mail::{CreateMailbox, DeleteMailbox, SetMailboxEnabled, SetMailboxPassword};
use crate::web::{CreateSite, IssueCertificate, SetSiteSuspended, TerminateSite};

/// The version of this protocol. Bump it when a change is not backwards compatible (a new
/// required field, a changed meaning); a new message or command type that an older peer
/// would refuse also needs a bump, or a capability announced in [`Hello`].
///
/// - 1: the first wave.
/// - 2: [`AgentMessage::CertificateStatus`]. An agent sends it only to a panel whose
///   [`Welcome`] says 2 or more; a panel speaks to agents of 1 and 2 (upgrade the panel
///   first).
pub const PROTOCOL_VERSION: u16 = 2;

/// The oldest agent protocol a panel of this version still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// The largest message either side accepts, in bytes of JSON text. Large enough for a
/// metrics report of a big server or a command's error output, small enough that a peer
/// cannot make the other buffer much.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why a message could not be decoded or encoded. Messages quote at most a short, escaped
/// piece of the input, so they are safe to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error("message is {len} bytes long, the limit is {max}")]
    TooLarge { len: usize, max: usize },
    /// Not JSON at all (or cut short).
    #[error("message is not valid JSON: {reason}")]
    Malformed { reason: String },
    /// JSON, but not a message of this protocol: unknown type, missing or extra field,
    /// a value out of range.
    #[error("message does not fit the protocol: {reason}")]
    Invalid { reason: String },
}

impl ProtocolError {
    fn from_json(e: serde_json::Error) -> ProtocolError {
        let reason = shorten(&e.to_string(), 200);
        if e.is_syntax() || e.is_eof() || e.is_io() {
            ProtocolError::Malformed { reason }
        } else {
            ProtocolError::Invalid { reason }
        }
    }
}

/// A value in a message that breaks its rule; worded for a log line or a 400 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(String);

impl InvalidValue {
    fn new(message: impl Into<String>) -> InvalidValue {
        InvalidValue(message.into())
    }
}

/// At most `max` characters of `s`, control characters escaped, so that quoting input in an
/// error keeps the message short and on one line.
fn shorten(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    for c in chars.by_ref().take(max) {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

fn decode<T: DeserializeOwned>(text: &str) -> Result<T, ProtocolError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(ProtocolError::TooLarge {
            len: text.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    serde_json::from_str(text).map_err(ProtocolError::from_json)
}

fn encode<T: Serialize>(message: &T) -> Result<String, ProtocolError> {
    let text = serde_json::to_string(message).map_err(ProtocolError::from_json)?;
    if text.len() > MAX_MESSAGE_BYTES {
        // Refused at the sender, where the cause is known, rather than by the receiver.
        return Err(ProtocolError::TooLarge {
            len: text.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    Ok(text)
}

// ---------------------------------------------------------------------------------------
// Bounded values
// ---------------------------------------------------------------------------------------

/// Free text of at most `MAX` characters (progress lines, error messages, PEM blocks).
/// Line breaks are allowed; the bound keeps a peer from filling logs and rows.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Text<const MAX: usize>(String);

impl<const MAX: usize> Text<MAX> {
    pub fn parse(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        let len = s.chars().count();
        if len > MAX {
            return Err(InvalidValue::new(format!(
                "is {len} characters long, at most {MAX} are allowed"
            )));
        }
        Ok(Text(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A short, single-line identifier-like value of 1 to `MAX` characters without control
/// characters (a version, an error code).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Label<const MAX: usize>(String);

impl<const MAX: usize> Label<MAX> {
    pub fn parse(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        let len = s.chars().count();
        if len == 0 {
            return Err(InvalidValue::new("must not be empty"));
        }
        if len > MAX {
            return Err(InvalidValue::new(format!(
                "is {len} characters long, at most {MAX} are allowed"
            )));
        }
        if s.chars().any(char::is_control) {
            return Err(InvalidValue::new("must not contain control characters"));
        }
        Ok(Label(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

macro_rules! bounded_string_traits {
    ($ty:ident) => {
        impl<const MAX: usize> TryFrom<String> for $ty<MAX> {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<Self, InvalidValue> {
                Self::parse(s)
            }
        }

        impl<const MAX: usize> TryFrom<&str> for $ty<MAX> {
            type Error = InvalidValue;
            fn try_from(s: &str) -> Result<Self, InvalidValue> {
                Self::parse(s)
            }
        }

        impl<const MAX: usize> From<$ty<MAX>> for String {
            fn from(v: $ty<MAX>) -> String {
                v.0
            }
        }

        impl<const MAX: usize> fmt::Display for $ty<MAX> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<const MAX: usize> fmt::Debug for $ty<MAX> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl<const MAX: usize> AsRef<str> for $ty<MAX> {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

bounded_string_traits!(Text);
bounded_string_traits!(Label);

/// A machine's host name as `hostname` prints it: one or more labels of ASCII letters,
/// digits and hyphens (RFC 1123), at most 253 characters, stored lowercase without a
/// trailing dot.
///
/// Unlike [`crate::DomainName`] a single label (`srv1-web`) and an all-digit last label are
/// fine here: this names a machine, not a registrable domain.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Hostname(String);

impl Hostname {
    pub fn parse(input: &str) -> Result<Hostname, InvalidValue> {
        let lower = input.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        if name.is_empty() {
            return Err(InvalidValue::new("must not be empty"));
        }
        if name.len() > 253 {
            return Err(InvalidValue::new(format!(
                "is {} characters long, at most 253 are allowed",
                name.len()
            )));
        }
        for label in name.split('.') {
            let ok = (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(InvalidValue::new(format!(
                    "'{}' is not a host name (labels of 1-63 letters, digits or inner hyphens, \
                     separated by dots)",
                    shorten(input, 64)
                )));
            }
        }
        Ok(Hostname(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Hostname {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        Hostname::parse(&s)
    }
}

impl From<Hostname> for String {
    fn from(h: Hostname) -> String {
        h.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// 0 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Percent(u8);

impl Percent {
    pub fn new(value: u8) -> Result<Percent, InvalidValue> {
        if value > 100 {
            return Err(InvalidValue::new(format!(
                "{value} is not a percentage (0-100)"
            )));
        }
        Ok(Percent(value))
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for Percent {
    type Error = InvalidValue;
    fn try_from(v: u8) -> Result<Self, InvalidValue> {
        Percent::new(v)
    }
}

impl From<Percent> for u8 {
    fn from(p: Percent) -> u8 {
        p.0
    }
}

/// A software version as the agent reports it (`0.1.0`, `0.2.0-rc1+deb12`).
pub type VersionString = Label<64>;
/// The machine-readable code of a failed command (`not_found`, `nginx_reload_failed`).
pub type ErrorCode = Label<64>;
/// A certificate or CSR in PEM form.
pub type PemText = Text<16_384>;

// ---------------------------------------------------------------------------------------
// Roles
// ---------------------------------------------------------------------------------------

/// What an agent does on its server; a command is executed only by an agent that holds the
/// role it requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// nginx and PHP-FPM sites.
    Web,
    /// PowerDNS zones.
    Dns,
    /// Postfix/Dovecot domains and mailboxes.
    Mail,
    /// Databases.
    Db,
    /// Backups and their restores.
    Backup,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Web, Role::Dns, Role::Mail, Role::Db, Role::Backup];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Web => "web",
            Role::Dns => "dns",
            Role::Mail => "mail",
            Role::Db => "db",
            Role::Backup => "backup",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------
// Agent → panel
// ---------------------------------------------------------------------------------------

/// Everything an agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum AgentMessage {
    /// The first message on every connection.
    Hello(Hello),
    /// The command arrived and will be executed (or its recorded outcome re-sent).
    Accepted {
        command_id: Uuid,
    },
    /// A long command's progress, for operators watching the job.
    Progress {
        command_id: Uuid,
        message: Text<4096>,
        percent: Option<Percent>,
    },
    /// A command's final outcome; sent exactly once per command id and connection.
    Result {
        command_id: Uuid,
        outcome: Outcome,
    },
    Metrics(MetricsReport),
    Heartbeat {
        sent_at: DateTime<Utc>,
    },
    /// Asks for a new certificate for a key the agent generated; answered by
    /// [`PanelMessage::CertificateRenewed`].
    RenewCertificate {
        csr_pem: PemText,
    },
    /// A site certificate's renewal state (protocol 2; web role).
    CertificateStatus(crate::web::CertificateStatus),
}

impl AgentMessage {
    /// Parses one text frame; never panics, whatever the input.
    pub fn decode(text: &str) -> Result<AgentMessage, ProtocolError> {
        decode(text)
    }

    /// The text frame for this message, refused when above [`MAX_MESSAGE_BYTES`].
    pub fn encode(&self) -> Result<String, ProtocolError> {
        encode(self)
    }
}

/// The agent introduces itself. Its identity (agent and server id) is not here: it comes
/// from the client certificate only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hello {
    pub protocol_version: u16,
    pub agent_version: VersionString,
    pub hostname: Hostname,
    /// The roles this agent is configured to serve. The panel acts on the intersection with
    /// the roles it assigned to the server.
    pub roles: Vec<Role>,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "status",
    rename_all = "snake_case",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum Outcome {
    /// Done; `data` is the command's [`AgentCommand::Output`].
    Ok { data: serde_json::Value },
    /// Not done. `retryable` says whether sending the same command again may succeed
    /// (a busy package manager) or not (a refused value, a missing role).
    Error {
        code: ErrorCode,
        message: Text<16_384>,
        retryable: bool,
    },
}

impl Outcome {
    /// The successful outcome of a command, with its typed output.
    pub fn ok<T: Serialize>(output: &T) -> Result<Outcome, ProtocolError> {
        serde_json::to_value(output)
            .map(|data| Outcome::Ok { data })
            .map_err(ProtocolError::from_json)
    }

    /// A failed outcome; `code` and `message` are cut to their limits rather than refused,
    /// so that reporting an error never fails.
    pub fn error(code: &str, message: &str, retryable: bool) -> Outcome {
        let code: String = code.chars().filter(|c| !c.is_control()).take(64).collect();
        let code = Label::parse(code).unwrap_or_else(|_| Label("error".to_owned()));
        let message = Text(message.chars().take(16_384).collect());
        Outcome::Error {
            code,
            message,
            retryable,
        }
    }

    /// The typed output of a successful outcome of command `C`.
    pub fn output<C: AgentCommand>(&self) -> Option<Result<C::Output, ProtocolError>> {
        match self {
            Outcome::Ok { data } => {
                Some(serde_json::from_value(data.clone()).map_err(ProtocolError::from_json))
            }
            Outcome::Error { .. } => None,
        }
    }
}

/// One health sample of a server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsReport {
    pub collected_at: DateTime<Utc>,
    /// Over all cores, 0-100.
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub uptime_secs: u64,
    pub disks: Vec<DiskUsage>,
    /// The state of each systemd unit the agent's roles rely on (`nginx`, `pdns`, …).
    pub services: BTreeMap<String, ServiceState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskUsage {
    pub mount: Text<4096>,
    pub used_bytes: u64,
    pub total_bytes: u64,
}

/// A systemd unit's active state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    Active,
    Activating,
    Deactivating,
    Reloading,
    Inactive,
    Failed,
    /// Not installed, or a state this version does not know (accepted rather than refused,
    /// so a newer systemd does not break a whole metrics report).
    #[serde(other)]
    Unknown,
}

// ---------------------------------------------------------------------------------------
// Panel → agent
// ---------------------------------------------------------------------------------------

/// Everything the panel sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum PanelMessage {
    /// The answer to [`Hello`]: the connection is accepted.
    Welcome(Welcome),
    Command(CommandEnvelope),
    Heartbeat {
        sent_at: DateTime<Utc>,
    },
    /// The certificate asked for with [`AgentMessage::RenewCertificate`].
    CertificateRenewed {
        certificate_pem: PemText,
    },
    /// The panel closes the connection (incompatible version, revoked agent, a newer
    /// connection of the same agent, shutdown).
    Goodbye {
        reason: Text<1024>,
    },
}

impl PanelMessage {
    /// Parses one text frame; never panics, whatever the input.
    pub fn decode(text: &str) -> Result<PanelMessage, ProtocolError> {
        decode(text)
    }

    /// The text frame for this message, refused when above [`MAX_MESSAGE_BYTES`].
    pub fn encode(&self) -> Result<String, ProtocolError> {
        encode(self)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Welcome {
    /// The version this connection speaks: the agent's, when the panel speaks it.
    pub protocol_version: u16,
    /// Read from the agent's certificate, echoed so the agent can log who it is.
    pub agent_id: Uuid,
    pub server_id: Uuid,
    /// Each side sends a heartbeat this often and gives up on a peer silent for two
    /// intervals.
    pub heartbeat_secs: u32,
    pub metrics_secs: u32,
}

/// A command for the agent, with what it needs to act once and in time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandEnvelope {
    /// The same id when the command is re-sent: the agent answers a known id from its
    /// journal instead of acting again.
    pub command_id: Uuid,
    pub issued_at: DateTime<Utc>,
    /// How long after `issued_at` the panel still waits for the result.
    pub deadline_secs: u32,
    pub command: Command,
}

// ---------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------

/// What each command type declares about itself.
pub trait AgentCommand: Serialize + DeserializeOwned + Into<Command> {
    /// What a successful run answers, carried as [`Outcome::Ok`]'s `data`.
    type Output: Serialize + DeserializeOwned;

    /// The role an agent must hold to execute this command; `None` for any agent.
    fn required_role(&self) -> Option<Role>;
}

/// Declares [`Command`] over one struct per command: `"wire kind" => Variant(Struct)`.
macro_rules! commands {
    ($($(#[$doc:meta])* $kind:literal => $variant:ident($ty:ident),)+) => {
        /// Every command the panel can send, tagged by `kind` inside the envelope.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind")]
        pub enum Command {
            $($(#[$doc])* #[serde(rename = $kind)] $variant($ty),)+
        }

        impl Command {
            /// The wire name of the command (`ping`), for logs and job records.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Command::$variant(_) => $kind,)+
                }
            }

            pub fn required_role(&self) -> Option<Role> {
                match self {
                    $(Command::$variant(c) => c.required_role(),)+
                }
            }
        }

        $(
            impl From<$ty> for Command {
                fn from(c: $ty) -> Command {
                    Command::$variant(c)
                }
            }
        )+
    };
}

commands! {
    /// Round-trips through the agent's command path; any agent answers it.
    "ping" => Ping(Ping),
    /// Creates a DNS zone if missing and makes its records exactly the given set.
    "sync_dns_zone" => SyncDnsZone(SyncDnsZone),
    /// Deletes a DNS zone (idempotent).
    "delete_dns_zone" => DeleteDnsZone(DeleteDnsZone),
    /// Makes a mailbox exist, enabled, with the given password hash (idempotent).
    "create_mailbox" => CreateMailbox(CreateMailbox),
    /// Lets a mailbox log in or not; its mail is kept.
    "set_mailbox_enabled" => SetMailboxEnabled(SetMailboxEnabled),
    /// Replaces a mailbox's password hash.
    "set_mailbox_password" => SetMailboxPassword(SetMailboxPassword),
    /// Archives a mailbox's maildir, then removes it and its entries (idempotent).
    "delete_mailbox" => DeleteMailbox(DeleteMailbox),
    /// Makes a website exist and serve: user, home, document root, php-fpm pool, vhost.
    "create_site" => CreateSite(CreateSite),
    /// Suspends a website or serves it again; its files are kept.
    "set_site_suspended" => SetSiteSuspended(SetSiteSuspended),
    /// Archives a website's home, then removes its vhost, pool and user (idempotent).
    "terminate_site" => TerminateSite(TerminateSite),
    /// Obtains, installs and verifies a site's ACME certificate (apex and www).
    "issue_certificate" => IssueCertificate(IssueCertificate),
    /// Archives a website's files (tar + zstd) and keeps the newest archives of its target.
    "backup_site" => BackupSite(BackupSite),
    /// Dumps a PostgreSQL database (custom format) and keeps the newest dumps of it.
    "backup_database" => BackupDatabase(BackupDatabase),
}

/// Answered with [`Pong`] carrying the same `echo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ping {
    pub echo: Text<1024>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pong {
    pub echo: Text<1024>,
}

impl AgentCommand for Ping {
    type Output = Pong;

    fn required_role(&self) -> Option<Role> {
        None
    }
}

// ---------------------------------------------------------------------------------------
// Enrollment (HTTPS, before the WebSocket)
// ---------------------------------------------------------------------------------------

const TOKEN_PREFIX: &str = "mpe1_";
const HEX64: usize = 64;

/// A one-time enrollment token: `mpe1_<64 hex: secret>_<64 hex: SHA-256 of the CA cert>`.
///
/// The secret half is the credential (the panel stores only a hash of the whole token);
/// the fingerprint half pins the panel's CA, so the agent can check that whoever answered
/// the enrollment speaks for the panel that issued the token. `Debug` masks the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentToken(String);

impl EnrollmentToken {
    /// Builds a token from a fresh secret and the CA fingerprint, both 64 lowercase hex.
    pub fn new(secret_hex: &str, ca_fingerprint: &str) -> Result<EnrollmentToken, InvalidValue> {
        EnrollmentToken::parse(&format!("{TOKEN_PREFIX}{secret_hex}_{ca_fingerprint}"))
    }

    /// Checks the shape only; whether the token is valid is for the panel to say.
    pub fn parse(input: &str) -> Result<EnrollmentToken, InvalidValue> {
        let invalid = || {
            InvalidValue::new(
                "not an enrollment token (expected mpe1_<64 hex>_<64 hex>, as printed by the panel)",
            )
        };
        let rest = input
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(invalid)?;
        let (secret, fingerprint) = rest.split_once('_').ok_or_else(invalid)?;
        let is_hex = |s: &str| {
            s.len() == HEX64
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !is_hex(secret) || !is_hex(fingerprint) {
            return Err(invalid());
        }
        Ok(EnrollmentToken(input.trim().to_owned()))
    }

    /// The lowercase hex SHA-256 of the DER of the CA certificate the token pins.
    pub fn ca_fingerprint(&self) -> &str {
        &self.0[self.0.len() - HEX64..]
    }

    /// The whole token, for sending or hashing. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnrollmentToken(mpe1_***_{})", self.ca_fingerprint())
    }
}

/// Body of `POST /api/agents/enroll`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnrollRequest {
    /// The raw token. Kept a string so that a malformed token gets the same answer as an
    /// unknown one (no oracle); parse it with [`EnrollmentToken::parse`].
    pub token: String,
    /// A PKCS#10 request for the key the agent generated (ECDSA P-256).
    pub csr_pem: PemText,
    pub hostname: Hostname,
    pub version: VersionString,
}

impl fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &"***")
            .field("hostname", &self.hostname)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Answer of `POST /api/agents/enroll` (201). Unknown fields are ignored here, unlike in
/// the WebSocket messages: a panel that adds one must not break older agents' enrollment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollResponse {
    pub agent_id: Uuid,
    pub server_id: Uuid,
    pub certificate_pem: String,
    pub ca_pem: String,
    pub ca_fingerprint: String,
    /// Hex serial of the certificate.
    pub serial: String,
    pub not_after: DateTime<Utc>,
    /// The `wss://` address of the fleet hub.
    pub hub_url: String,
}
