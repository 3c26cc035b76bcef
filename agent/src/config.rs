//! `agent.toml`, the daemon's configuration (`/etc/mpanel-agent/agent.toml` by default).
//!
//! ```toml
//! state_dir = "/var/lib/mpanel-agent"      # key, certificates, enrollment.json, journal
//! # hub_url = "wss://panel.example.com:2272" # default: enrollment.json's hubUrl; one name
//! #                                         # (e.g. a TCP load balancer) or a list of replicas:
//! # hub_url = ["wss://panel1.example.com:2272", "wss://panel2.example.com:2272"]
//! #                                         # (`hub_urls = [...]` is the same key; not both)
//! # key_file / cert_file / ca_file / journal_file: default inside state_dir
//! # hostname = "srv1-web"                  # default: the kernel's host name
//! roles = ["web"]                           # web, dns, mail, db, backup
//! # heartbeat_interval = "15s"              # default: what the panel says in Welcome
//! # metrics_interval = "60s"                # default: what the panel says in Welcome
//! log_level = "info"                        # a tracing filter; MPANEL_AGENT_LOG wins
//! reconnect_min = "1s"
//! reconnect_max = "60s"
//! shutdown_timeout = "30s"
//! # renew_before = "10d"                    # default: a third of the certificate's life
//!
//! [dns]                                     # the dns role's local PowerDNS HTTP API
//! api_url = "http://127.0.0.1:8081/api/v1"  # the default
//! api_key_file = "/etc/mpanel-agent/pdns-api-key"  # or api_key = "…" (not both)
//! server_id = "localhost"                   # the default
//!
//! [mail]                                    # the mail role's Postfix maps and Dovecot users
//! vmail_uid = 5000                          # required: owner of the maildirs (not 0)
//! vmail_gid = 5000
//! # virtual_mailbox_domains = "/etc/postfix/virtual_mailbox_domains"  # the defaults
//! # virtual_mailbox_maps = "/etc/postfix/virtual_mailbox_maps"
//! # passwd_file = "/etc/dovecot/users"
//! # vmail_root = "/var/vmail"
//! # postmap = "/usr/sbin/postmap"
//! # reload = true                           # false: never reload (tests)
//! # postfix_reload = ["postfix", "reload"]
//! # dovecot_reload = ["doveadm", "reload"]
//! # archive_dir = "/var/backups/mpanel-agent/mail"   # deleted mailboxes' maildirs
//!
//! [web]                                     # the web role (config/web.rs); all optional
//! # home_root = "/home"
//! # sites_dir = "/etc/nginx/sites-enabled"
//! # pool_dir = "/etc/php/{php}/fpm/pool.d"
//! # nginx_test = ["/usr/sbin/nginx", "-t", "-q"]
//! # … see packaging/agent/agent.toml for every key
//!
//! [backup]                                  # the backup role (config/backup.rs); optional
//! # archive_dir = "/var/backups/mpanel-agent"
//! # keep = 7
//! ```
//!
//! Unknown keys are refused (a typo must not silently mean "default"), and every value is
//! checked once, here, with every problem reported at once.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use mpanel_protocol::{
    duration::parse_duration,
    messages::{Hostname, Role},
};
use serde::Deserialize;
use url::Url;

use crate::cli::DEFAULT_STATE_DIR;

mod backup;
mod checks;
mod web;

pub use backup::BackupConfig;
pub use web::WebConfig;

pub const DEFAULT_CONFIG: &str = "/etc/mpanel-agent/agent.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    state_dir: Option<PathBuf>,
    hub_url: Option<HubList>,
    hub_urls: Option<HubList>,
    key_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    journal_file: Option<PathBuf>,
    hostname: Option<String>,
    #[serde(default)]
    roles: Vec<Role>,
    heartbeat_interval: Option<String>,
    metrics_interval: Option<String>,
    log_level: Option<String>,
    reconnect_min: Option<String>,
    reconnect_max: Option<String>,
    shutdown_timeout: Option<String>,
    renew_before: Option<String>,
    dns: Option<RawDns>,
    mail: Option<RawMail>,
    web: Option<web::RawWeb>,
    backup: Option<backup::RawBackup>,
}

/// `hub_url`/`hub_urls` as written: one string or an array of strings.
#[derive(Debug)]
struct HubList(Vec<String>);

impl<'de> Deserialize<'de> for HubList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = HubList;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("hub_url/hub_urls: a wss:// URL or an array of them")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HubList, E> {
                Ok(HubList(vec![v.to_owned()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<HubList, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    v.push(s);
                }
                Ok(HubList(v))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The most hubs `hub_url` may list.
pub const MAX_HUBS: usize = 16;

/// Checks `hub_url` or `hub_urls` (the same thing under two names); empty: neither was given.
fn parse_hubs(
    hub_url: Option<HubList>,
    hub_urls: Option<HubList>,
    problems: &mut Vec<String>,
) -> Vec<Url> {
    let (key, entries) = match (hub_url, hub_urls) {
        (None, None) => return Vec::new(),
        (Some(_), Some(_)) => {
            problems.push("hub_url: set hub_url or hub_urls, not both".into());
            return Vec::new();
        }
        (Some(l), None) => ("hub_url", l.0),
        (None, Some(l)) => ("hub_urls", l.0),
    };
    if entries.is_empty() {
        problems.push(format!("{key}: must list at least one wss:// URL"));
        return Vec::new();
    }
    if entries.len() > MAX_HUBS {
        problems.push(format!("{key}: at most {MAX_HUBS} hubs"));
        return Vec::new();
    }
    let mut urls: Vec<Url> = Vec::with_capacity(entries.len());
    for entry in &entries {
        match Url::parse(entry) {
            // The agent proves itself with its certificate; credentials in the URL would
            // only end up in the logs, which name the hub on every reconnect.
            Ok(u)
                if u.scheme() == "wss"
                    && u.host().is_some()
                    && u.username().is_empty()
                    && u.password().is_none() =>
            {
                // Compared parsed, so `wss://h:443` and `wss://h/` are the same hub.
                if urls.contains(&u) {
                    problems.push(format!("{key}: {entry:?} is listed twice"));
                } else {
                    urls.push(u);
                }
            }
            Ok(_) => problems.push(format!(
                "{key}: {entry:?} must be a wss:// URL with a host and no credentials"
            )),
            Err(e) => problems.push(format!("{key}: {entry:?} is not a URL ({e})")),
        }
    }
    urls
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    api_url: Option<String>,
    api_key: Option<String>,
    api_key_file: Option<PathBuf>,
    server_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMail {
    virtual_mailbox_domains: Option<PathBuf>,
    virtual_mailbox_maps: Option<PathBuf>,
    passwd_file: Option<PathBuf>,
    vmail_root: Option<PathBuf>,
    postmap: Option<PathBuf>,
    reload: Option<bool>,
    postfix_reload: Option<Vec<String>>,
    dovecot_reload: Option<Vec<String>>,
    vmail_uid: Option<u32>,
    vmail_gid: Option<u32>,
    archive_dir: Option<PathBuf>,
    tar: Option<PathBuf>,
    zstd: Option<PathBuf>,
}

/// The `[mail]` section: the files and commands of the mail role (Postfix virtual mailboxes,
/// Dovecot passwd-file users, maildirs under `vmail_root`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailConfig {
    /// The Postfix `virtual_mailbox_domains` hash map source (`domain OK` lines).
    pub virtual_mailbox_domains: PathBuf,
    /// The Postfix `virtual_mailbox_maps` hash map source (`address domain/local/` lines).
    pub virtual_mailbox_maps: PathBuf,
    /// The Dovecot passwd-file (passdb and userdb).
    pub passwd_file: PathBuf,
    /// Postfix's `virtual_mailbox_base`: maildirs are `vmail_root/domain/local/`.
    pub vmail_root: PathBuf,
    pub postmap: PathBuf,
    /// argv of the commands run after a change; `None` when `reload = false`.
    pub postfix_reload: Option<Vec<String>>,
    pub dovecot_reload: Option<Vec<String>>,
    pub vmail_uid: u32,
    pub vmail_gid: u32,
    /// Where a deleted mailbox's maildir is archived (`<address>-<UTC time>.tar.zst`, 0600)
    /// before it is removed.
    pub archive_dir: PathBuf,
    pub tar: PathBuf,
    pub zstd: PathBuf,
}

fn parse_mail(raw: RawMail, problems: &mut Vec<String>) -> Option<MailConfig> {
    let mut path = |name: &str, v: Option<PathBuf>, default: &str| {
        let p = v.unwrap_or_else(|| PathBuf::from(default));
        let ok = p.is_absolute()
            && p.to_str()
                .is_some_and(|s| !s.chars().any(|c| c.is_control()))
            && !p
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir));
        if !ok {
            problems.push(format!(
                "mail.{name}: must be an absolute path without '..'"
            ));
        }
        p
    };
    let virtual_mailbox_domains = path(
        "virtual_mailbox_domains",
        raw.virtual_mailbox_domains,
        "/etc/postfix/virtual_mailbox_domains",
    );
    let virtual_mailbox_maps = path(
        "virtual_mailbox_maps",
        raw.virtual_mailbox_maps,
        "/etc/postfix/virtual_mailbox_maps",
    );
    let passwd_file = path("passwd_file", raw.passwd_file, "/etc/dovecot/users");
    let vmail_root = path("vmail_root", raw.vmail_root, "/var/vmail");
    let postmap = path("postmap", raw.postmap, "/usr/sbin/postmap");
    let archive_dir = path(
        "archive_dir",
        raw.archive_dir,
        "/var/backups/mpanel-agent/mail",
    );
    let tar = path("tar", raw.tar, "/usr/bin/tar");
    let zstd = path("zstd", raw.zstd, "/usr/bin/zstd");
    // It is written into passwd-file lines (`:`-separated) as the users' homes.
    if vmail_root
        .to_str()
        .is_some_and(|s| s.contains(':') || s.chars().any(char::is_whitespace))
    {
        problems.push("mail.vmail_root: must not contain ':' or whitespace".into());
    }
    let reload = raw.reload.unwrap_or(true);
    let mut argv = |name: &str, v: Option<Vec<String>>, default: [&str; 2]| {
        let v = v.unwrap_or_else(|| default.map(String::from).to_vec());
        if v.is_empty()
            || v.iter()
                .any(|a| a.is_empty() || a.chars().any(|c| c.is_control()))
        {
            problems.push(format!(
                "mail.{name}: must be a non-empty list of non-empty arguments"
            ));
        }
        reload.then_some(v)
    };
    let postfix_reload = argv("postfix_reload", raw.postfix_reload, ["postfix", "reload"]);
    let dovecot_reload = argv("dovecot_reload", raw.dovecot_reload, ["doveadm", "reload"]);
    let mut id = |name: &str, v: Option<u32>| match v {
        Some(0) => {
            problems.push(format!("mail.{name}: must not be 0 (root)"));
            None
        }
        Some(v) => Some(v),
        None => {
            problems.push(format!("mail.{name}: is required"));
            None
        }
    };
    let vmail_uid = id("vmail_uid", raw.vmail_uid);
    let vmail_gid = id("vmail_gid", raw.vmail_gid);
    Some(MailConfig {
        virtual_mailbox_domains,
        virtual_mailbox_maps,
        passwd_file,
        vmail_root,
        postmap,
        postfix_reload,
        dovecot_reload,
        vmail_uid: vmail_uid?,
        vmail_gid: vmail_gid?,
        archive_dir,
        tar,
        zstd,
    })
}

/// The `[dns]` section: where the dns role finds the local PowerDNS HTTP API.
#[derive(Clone)]
pub struct DnsConfig {
    /// Up to and including `/api/v1`.
    pub api_url: Url,
    pub api_key: DnsApiKey,
    pub server_id: String,
}

/// Where the PowerDNS API key comes from. Never logged (`Debug` masks it).
#[derive(Clone)]
pub enum DnsApiKey {
    Inline(String),
    /// Read (and trimmed) each time it is needed, so a rotated key needs no restart.
    File(PathBuf),
}

impl DnsApiKey {
    pub fn read(&self) -> anyhow::Result<String> {
        match self {
            DnsApiKey::Inline(k) => Ok(k.clone()),
            DnsApiKey::File(p) => {
                let k = std::fs::read_to_string(p)
                    .with_context(|| format!("read the PowerDNS API key file {}", p.display()))?;
                let k = k.trim();
                if k.is_empty() || k.chars().any(|c| c.is_control()) {
                    bail!(
                        "the PowerDNS API key file {} is empty or not one line",
                        p.display()
                    );
                }
                Ok(k.to_owned())
            }
        }
    }
}

impl std::fmt::Debug for DnsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = match &self.api_key {
            DnsApiKey::Inline(_) => "inline ***".to_owned(),
            DnsApiKey::File(p) => format!("file {}", p.display()),
        };
        f.debug_struct("DnsConfig")
            .field("api_url", &self.api_url.as_str())
            .field("api_key", &key)
            .field("server_id", &self.server_id)
            .finish()
    }
}

pub const DEFAULT_DNS_API_URL: &str = "http://127.0.0.1:8081/api/v1";

fn parse_dns(raw: RawDns, problems: &mut Vec<String>) -> Option<DnsConfig> {
    let api_url = match Url::parse(raw.api_url.as_deref().unwrap_or(DEFAULT_DNS_API_URL)) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https")
                && u.host().is_some()
                && u.query().is_none()
                && u.fragment().is_none()
                && u.username().is_empty()
                && u.password().is_none() =>
        {
            Some(u)
        }
        Ok(_) => {
            problems.push(
                "dns.api_url: must be an http(s) URL with a host and no query or credentials"
                    .into(),
            );
            None
        }
        Err(e) => {
            problems.push(format!("dns.api_url: not a URL ({e})"));
            None
        }
    };
    let api_key = match (raw.api_key, raw.api_key_file) {
        (Some(_), Some(_)) => {
            problems.push("dns: set api_key or api_key_file, not both".into());
            None
        }
        (None, None) => {
            problems.push("dns: api_key_file (or api_key) is required".into());
            None
        }
        (Some(k), None) if k.trim().is_empty() || k.chars().any(|c| c.is_control()) => {
            problems.push("dns.api_key: must be one non-empty line".into());
            None
        }
        (Some(k), None) => Some(DnsApiKey::Inline(k.trim().to_owned())),
        (None, Some(p)) if p.is_absolute() => Some(DnsApiKey::File(p)),
        (None, Some(_)) => {
            problems.push("dns.api_key_file: must be an absolute path".into());
            None
        }
    };
    let server_id = raw.server_id.unwrap_or_else(|| "localhost".into());
    if server_id.is_empty()
        || server_id.len() > 64
        || !server_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        || server_id.starts_with('.')
    {
        problems.push("dns.server_id: 1-64 letters, digits, '-', '_' or '.'".into());
    }
    Some(DnsConfig {
        api_url: api_url?,
        api_key: api_key?,
        server_id,
    })
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub state_dir: PathBuf,
    /// The hubs to dial, in order, each a `wss://` URL with a host, distinct, at most
    /// [`MAX_HUBS`]; empty: use `enrollment.json`'s `hubUrl`.
    pub hub_urls: Vec<Url>,
    pub key_file: PathBuf,
    pub cert_file: PathBuf,
    pub ca_file: PathBuf,
    pub journal_file: PathBuf,
    /// The name reported to the panel; `None`: the kernel's host name.
    pub hostname: Option<Hostname>,
    pub roles: Vec<Role>,
    pub heartbeat_interval: Option<Duration>,
    pub metrics_interval: Option<Duration>,
    pub log_level: String,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub shutdown_timeout: Duration,
    pub renew_before: Option<Duration>,
    /// The `[dns]` section; `None` when absent (the dns role then refuses its commands).
    pub dns: Option<DnsConfig>,
    /// The `[mail]` section; `None` when absent (the mail role then refuses its commands).
    pub mail: Option<MailConfig>,
    /// The `[web]` section; the defaults when absent (a Debian host with nginx and php-fpm).
    pub web: WebConfig,
    /// The `[backup]` section; the defaults when absent.
    pub backup: BackupConfig,
}

impl AgentConfig {
    /// Reads `path`; a missing file is fine only when it is the default path (an agent
    /// with no roles still answers pings and reports health).
    pub fn load(path: Option<&Path>) -> anyhow::Result<AgentConfig> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => String::new(),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        let config = AgentConfig::parse(&text)
            .with_context(|| format!("configuration {}", path.display()))?;
        Ok(config)
    }

    pub fn parse(text: &str) -> anyhow::Result<AgentConfig> {
        let raw: Raw = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        let mut problems = Vec::new();
        let mut duration = |name: &str, v: &Option<String>, min: Duration, max: Duration| {
            let d = v.as_deref().map(parse_duration).transpose();
            match d {
                Ok(Some(d)) if d < min || d > max => {
                    problems.push(format!("{name}: must be between {min:?} and {max:?}"));
                    None
                }
                Ok(d) => d,
                Err(e) => {
                    problems.push(format!("{name}: {e}"));
                    None
                }
            }
        };
        let s = Duration::from_secs;
        let heartbeat_interval =
            duration("heartbeat_interval", &raw.heartbeat_interval, s(1), s(300));
        let metrics_interval = duration("metrics_interval", &raw.metrics_interval, s(1), s(3600));
        let reconnect_min = duration(
            "reconnect_min",
            &raw.reconnect_min,
            Duration::from_millis(100),
            s(60),
        )
        .unwrap_or(s(1));
        let reconnect_max =
            duration("reconnect_max", &raw.reconnect_max, s(1), s(3600)).unwrap_or(s(60));
        let shutdown_timeout =
            duration("shutdown_timeout", &raw.shutdown_timeout, s(1), s(600)).unwrap_or(s(30));
        let renew_before = duration(
            "renew_before",
            &raw.renew_before,
            s(60),
            s(10 * 365 * 86_400),
        );
        if reconnect_min > reconnect_max {
            problems.push("reconnect_min: must not exceed reconnect_max".into());
        }
        let hub_urls = parse_hubs(raw.hub_url, raw.hub_urls, &mut problems);
        let hostname = match raw.hostname.as_deref().map(Hostname::parse) {
            None => None,
            Some(Ok(h)) => Some(h),
            Some(Err(e)) => {
                problems.push(format!("hostname: {e}"));
                None
            }
        };
        let dns = raw.dns.and_then(|d| parse_dns(d, &mut problems));
        let mail = raw.mail.and_then(|m| parse_mail(m, &mut problems));
        let web = web::parse(raw.web.unwrap_or_default(), &mut problems);
        let backup = backup::parse(raw.backup.unwrap_or_default(), &mut problems);
        let log_level = raw.log_level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            problems.push(format!("log_level: '{log_level}' is not a tracing filter"));
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        let state_dir = raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let mut roles = raw.roles;
        roles.sort();
        roles.dedup();
        Ok(AgentConfig {
            key_file: raw
                .key_file
                .unwrap_or_else(|| state_dir.join(crate::state::KEY_FILE)),
            cert_file: raw
                .cert_file
                .unwrap_or_else(|| state_dir.join(crate::state::CERT_FILE)),
            ca_file: raw
                .ca_file
                .unwrap_or_else(|| state_dir.join(crate::state::CA_FILE)),
            journal_file: raw
                .journal_file
                .unwrap_or_else(|| state_dir.join(crate::journal::JOURNAL_FILE)),
            state_dir,
            hub_urls,
            hostname,
            roles,
            heartbeat_interval,
            metrics_interval,
            log_level,
            reconnect_min,
            reconnect_max,
            shutdown_timeout,
            renew_before,
            dns,
            mail,
            web,
            backup,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_config_is_accepted() {
        let packaged = include_str!("../../packaging/agent/agent.toml");
        let c = AgentConfig::parse(packaged).expect("packaging/agent/agent.toml parses");
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert!(c.roles.is_empty());
    }

    #[test]
    fn defaults_and_overrides() {
        let c = AgentConfig::parse("").unwrap();
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(
            c.key_file,
            PathBuf::from(DEFAULT_STATE_DIR).join("agent.key")
        );
        assert!(c.roles.is_empty() && c.hub_urls.is_empty());

        let c = AgentConfig::parse(
            r#"
            state_dir = "/tmp/x"
            hub_url = "wss://127.0.0.1:9000"
            roles = ["web", "dns", "web"]
            metrics_interval = "2s"
            ca_file = "/etc/ca.crt"
            "#,
        )
        .unwrap();
        assert_eq!(c.journal_file, PathBuf::from("/tmp/x/journal.jsonl"));
        assert_eq!(c.ca_file, PathBuf::from("/etc/ca.crt"));
        assert_eq!(c.roles, [Role::Web, Role::Dns]);
        assert_eq!(c.metrics_interval, Some(Duration::from_secs(2)));
    }

    #[test]
    fn hub_url_is_one_url_or_a_list() {
        let hubs = |text: &str| -> Vec<String> {
            let c = AgentConfig::parse(text).unwrap_or_else(|e| panic!("{text}: {e:#}"));
            c.hub_urls.iter().map(|u| u.to_string()).collect()
        };
        assert_eq!(
            hubs("hub_url = \"wss://lb.example.com:2272\""),
            ["wss://lb.example.com:2272/"]
        );
        // The order is kept: it is the order the agent walks (from its own start).
        let two = [
            "wss://p2.example.com:2272/",
            "wss://p1.example.com:2272/agent",
        ];
        assert_eq!(
            hubs("hub_url = [\"wss://p2.example.com:2272\", \"wss://p1.example.com:2272/agent\"]"),
            two
        );
        assert_eq!(
            hubs("hub_urls = [\"wss://p2.example.com:2272\", \"wss://p1.example.com:2272/agent\"]"),
            two
        );
        assert_eq!(
            hubs("hub_urls = \"wss://[::1]:2272\""),
            ["wss://[::1]:2272/"]
        );
        let sixteen: Vec<String> = (0..MAX_HUBS)
            .map(|i| format!("\"wss://p{i}.example.com:2272\""))
            .collect();
        assert_eq!(
            hubs(&format!("hub_urls = [{}]", sixteen.join(", "))).len(),
            MAX_HUBS
        );
    }

    #[test]
    fn hub_url_problems_name_the_key_and_the_entry() {
        let err = |text: &str| AgentConfig::parse(text).unwrap_err().to_string();
        let seventeen: Vec<String> = (0..=MAX_HUBS)
            .map(|i| format!("\"wss://p{i}.example.com:2272\""))
            .collect();
        let seventeen = format!("hub_urls = [{}]", seventeen.join(", "));
        for (bad, wanted) in [
            (
                "hub_url = \"wss://a:2272\"\nhub_urls = [\"wss://b:2272\"]",
                &["hub_url or hub_urls, not both"][..],
            ),
            (
                "hub_urls = [\"wss://a:2272\", \"https://b:2272\"]",
                &["hub_urls: \"https://b:2272\" must be a wss:// URL"],
            ),
            (
                "hub_url = [\"http://a\", \"not a url\"]",
                &[
                    "hub_url: \"http://a\" must be",
                    "hub_url: \"not a url\" is not a URL",
                ],
            ),
            (
                "hub_url = \"wss://\"",
                &["hub_url: \"wss://\" is not a URL"],
            ),
            (
                "hub_url = \"wss://agent:secret@a:2272\"",
                &["no credentials"],
            ),
            (
                // The same hub written twice, once with its default port.
                "hub_urls = [\"wss://a.example.com\", \"wss://a.example.com:443/\"]",
                &["hub_urls: \"wss://a.example.com:443/\" is listed twice"],
            ),
            ("hub_url = []", &["hub_url: must list at least one"]),
            ("hub_urls = []", &["hub_urls: must list at least one"]),
            (&seventeen, &["hub_urls: at most 16 hubs"]),
            ("hub_url = 2272", &["hub_url/hub_urls"]),
            ("hub_url = [2272]", &["string"]),
        ] {
            let e = err(bad);
            for w in wanted {
                assert!(e.contains(w), "{bad}: {e}");
            }
        }
    }

    #[test]
    fn dns_section() {
        let c = AgentConfig::parse("roles = [\"dns\"]\n[dns]\napi_key_file = \"/etc/k\"").unwrap();
        let dns = c.dns.unwrap();
        assert_eq!(dns.api_url.as_str(), DEFAULT_DNS_API_URL);
        assert_eq!(dns.server_id, "localhost");
        assert!(matches!(&dns.api_key, DnsApiKey::File(p) if p == Path::new("/etc/k")));

        let c = AgentConfig::parse(
            "[dns]\napi_url = \"http://127.0.0.1:9/api/v1\"\napi_key = \"s3cret\"\nserver_id = \"x\"",
        )
        .unwrap();
        let dns = c.dns.unwrap();
        assert_eq!(dns.api_key.read().unwrap(), "s3cret");
        assert!(!format!("{dns:?}").contains("s3cret"));

        for bad in [
            "[dns]",
            "[dns]\napi_key = \"k\"\napi_key_file = \"/k\"",
            "[dns]\napi_key_file = \"relative\"",
            "[dns]\napi_key = \"k\"\napi_url = \"ftp://h/\"",
            "[dns]\napi_key = \"k\"\nserver_id = \"../x\"",
            "[dns]\napi_key = \"k\"\napi_ur = \"http://h/\"",
        ] {
            let err = AgentConfig::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("dns") || err.contains("api_ur"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn mail_section() {
        let c =
            AgentConfig::parse("roles = [\"mail\"]\n[mail]\nvmail_uid = 5000\nvmail_gid = 5001")
                .unwrap();
        let mail = c.mail.unwrap();
        assert_eq!(mail.passwd_file, PathBuf::from("/etc/dovecot/users"));
        assert_eq!(mail.postmap, PathBuf::from("/usr/sbin/postmap"));
        assert_eq!(mail.vmail_root, PathBuf::from("/var/vmail"));
        assert_eq!(
            mail.postfix_reload.as_deref(),
            Some(&["postfix".to_owned(), "reload".to_owned()][..])
        );
        assert_eq!((mail.vmail_uid, mail.vmail_gid), (5000, 5001));

        let c = AgentConfig::parse(
            "[mail]\nvmail_uid = 1\nvmail_gid = 1\nreload = false\nvmail_root = \"/srv/m\"\n\
             dovecot_reload = [\"true\"]",
        )
        .unwrap();
        let mail = c.mail.unwrap();
        assert!(mail.postfix_reload.is_none() && mail.dovecot_reload.is_none());
        assert_eq!(mail.vmail_root, PathBuf::from("/srv/m"));

        for bad in [
            "[mail]",
            "[mail]\nvmail_uid = 0\nvmail_gid = 1",
            "[mail]\nvmail_uid = 1\nvmail_gid = 1\npasswd_file = \"users\"",
            "[mail]\nvmail_uid = 1\nvmail_gid = 1\nvmail_root = \"/srv/../etc\"",
            "[mail]\nvmail_uid = 1\nvmail_gid = 1\npostfix_reload = []",
            "[mail]\nvmail_uid = 1\nvmail_gid = 1\ndovecot_reload = [\"\"]",
            "[mail]\nvmail_uid = -1\nvmail_gid = 1",
            "[mail]\nvmail_uid = 1\nvmail_gid = 1\npostmapp = \"/x\"",
        ] {
            let err = AgentConfig::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("mail") || err.contains("postmapp") || err.contains("u32"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn web_and_backup_sections() {
        let c = AgentConfig::parse("roles = [\"web\", \"backup\"]").unwrap();
        assert_eq!(c.web.home_root, PathBuf::from("/home"));
        assert_eq!(c.web.pool_dir, "/etc/php/{php}/fpm/pool.d");
        assert_eq!(c.web.listen, ["80", "[::]:80"]);
        assert!(c.web.users_prefix.is_none() && c.web.php_fpm_reload.is_some());
        assert_eq!(c.backup.keep, 7);

        let c = AgentConfig::parse(
            "[web]\nusers_prefix = \"/srv/sandbox\"\nphp_fpm_reload = []\nlisten = [\"127.0.0.1:8080\"]",
        )
        .unwrap();
        assert!(c.web.php_fpm_reload.is_none());
        assert_eq!(
            c.web.host_path(Path::new("/home/x")),
            PathBuf::from("/srv/sandbox/home/x")
        );

        for (bad, key) in [
            ("[web]\nhome_root = \"home\"", "web.home_root"),
            ("[web]\nhome_root = \"/home/../etc\"", "web.home_root"),
            ("[web]\nlog_dir = \"/var/log/a b\"", "web.log_dir"),
            (
                "[web]\nlisten = [\"80; include /etc/shadow\"]",
                "web.listen",
            ),
            ("[web]\nlisten = []", "web.listen"),
            ("[web]\nnginx_test = []", "web.nginx_test"),
            ("[web]\nweb_group = \"www data\"", "web.web_group"),
            (
                "[web]\nfastcgi_params = \"/etc/nginx/x;y\"",
                "web.fastcgi_params",
            ),
            ("[web]\nhomeroot = \"/home\"", "homeroot"),
            ("[backup]\nkeep = 0", "backup.keep"),
            ("[backup]\npg_dump = []", "backup.pg_dump"),
        ] {
            let err = AgentConfig::parse(bad).unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn durations_use_the_shared_parser() {
        let c = AgentConfig::parse("renew_before = \"2w\"\nreconnect_min = \"250ms\"").unwrap();
        assert_eq!(c.renew_before, Some(Duration::from_secs(14 * 86_400)));
        assert_eq!(c.reconnect_min, Duration::from_millis(250));
        // Overflow is refused, not saturated to the largest duration.
        let err = AgentConfig::parse("renew_before = \"99999999999999999999d\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("renew_before") && err.contains("too large"),
            "{err}"
        );
    }

    #[test]
    fn refuses_unknown_keys_and_bad_values() {
        assert!(AgentConfig::parse("rolez = []").is_err());
        assert!(AgentConfig::parse("roles = [\"ftp\"]").is_err());
        let err = AgentConfig::parse(
            "hub_url = \"http://x\"\nheartbeat_interval = \"0s\"\nreconnect_max = \"soon\"",
        )
        .unwrap_err()
        .to_string();
        for name in ["hub_url", "heartbeat_interval", "reconnect_max"] {
            assert!(err.contains(name), "{err}");
        }
    }
}
