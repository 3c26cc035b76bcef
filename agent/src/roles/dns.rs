//! The dns role: zones in the local PowerDNS, through its HTTP API (`[dns]` in agent.toml).
//!
//! **What a sync manages.** A zone synced by mPanel is owned by mPanel: after
//! [`SyncDnsZone`] its RRsets are exactly
//! - the SOA built from the command's [`SoaSpec`] (the serial is the agent's: it is kept
//!   when nothing changed and otherwise set to `max(current + 1, YYYYMMDD01)`; the SOA is
//!   replaced, never deleted);
//! - the apex NS set, exactly the command's `nameservers`;
//! - the command's records, one RRset per name and type.
//!
//! Every other RRset found in the zone is deleted. Only RRsets that differ are sent
//! (REPLACE or DELETE in one PATCH, which PowerDNS applies in one transaction), and the SOA
//! is part of every PATCH, so PowerDNS's own `soa_edit_api` never applies; a sync that finds
//! the zone already as asked writes nothing and answers `changed: false`.
//!
//! **Errors.** `dns_not_configured` (no `[dns]` section; not retryable),
//! `dns_api_key_unreadable` (retryable: fix the file), `dns_api_unreachable` (connection
//! refused, timeout; retryable), `dns_api_rejected` (a 4xx; not retryable; PowerDNS's
//! message cut to 200 characters), `dns_api_failed` (a 5xx or an answer that is not the
//! expected JSON; retryable).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use mpanel_protocol::{
    DomainName,
    dns::{DeleteDnsZone, DeleteDnsZoneOutput, SyncDnsZone, SyncDnsZoneOutput},
    messages::Outcome,
};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::DnsConfig;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Logs at start whether the dns role can work: a missing `[dns]` section or a PowerDNS API
/// that does not answer is a warning, not a reason to stop the agent (commands are then
/// refused one by one, retryably, until it answers).
pub async fn check_at_start(config: Option<&DnsConfig>) {
    let Some(config) = config else {
        tracing::warn!(
            "the dns role is configured but agent.toml has no [dns] section: \
             dns commands will be refused (dns_not_configured)"
        );
        return;
    };
    match PowerDns::new(config) {
        Ok(pdns) => match pdns.probe().await {
            Ok(()) => tracing::info!(api = %config.api_url, "PowerDNS API answers"),
            Err(f) => tracing::warn!(
                api = %config.api_url,
                code = f.code,
                "the dns role's PowerDNS API is not usable: {}; dns commands are refused \
                 with a retryable error until it is",
                f.message
            ),
        },
        Err(f) => tracing::warn!(code = f.code, "the dns role cannot start: {}", f.message),
    }
}

fn configured(config: Option<&DnsConfig>) -> Result<PowerDns, Failure> {
    match config {
        Some(c) => PowerDns::new(c),
        None => Err(Failure::new(
            "dns_not_configured",
            "this agent serves the dns role but agent.toml has no [dns] section",
            false,
        )),
    }
}

/// Executes [`SyncDnsZone`] with the configured PowerDNS.
pub async fn sync_zone(cmd: &SyncDnsZone, config: Option<&DnsConfig>) -> Outcome {
    let result = match configured(config) {
        Ok(pdns) => pdns.sync_zone(cmd).await,
        Err(f) => Err(f),
    };
    to_outcome(result)
}

/// Executes [`DeleteDnsZone`] with the configured PowerDNS.
pub async fn delete_zone(cmd: &DeleteDnsZone, config: Option<&DnsConfig>) -> Outcome {
    let result = match configured(config) {
        Ok(pdns) => pdns.delete_zone(cmd).await,
        Err(f) => Err(f),
    };
    to_outcome(result)
}

fn to_outcome<T: serde::Serialize>(result: Result<T, Failure>) -> Outcome {
    match result {
        Ok(out) => {
            Outcome::ok(&out).unwrap_or_else(|e| Outcome::error("internal", &e.to_string(), false))
        }
        Err(f) => Outcome::error(f.code, &f.message, f.retryable),
    }
}

/// Why a PowerDNS call failed, as it becomes an [`Outcome::Error`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: &'static str,
    pub message: String,
    pub retryable: bool,
}

impl Failure {
    fn new(code: &'static str, message: impl Into<String>, retryable: bool) -> Failure {
        Failure {
            code,
            message: message.into(),
            retryable,
        }
    }
}

/// At most `max` characters of `s`, on one line.
fn cut(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

/// A client of one PowerDNS server's HTTP API.
pub struct PowerDns {
    client: reqwest::Client,
    /// `{api_url}/servers/{server_id}`, without a trailing slash.
    server_url: String,
    key: String,
}

#[derive(Deserialize)]
struct ZoneJson {
    #[serde(default)]
    serial: u32,
    #[serde(default)]
    rrsets: Vec<RrsetJson>,
}

#[derive(Deserialize)]
struct RrsetJson {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    ttl: u32,
    #[serde(default)]
    records: Vec<RecordJson>,
}

#[derive(Deserialize)]
struct RecordJson {
    content: String,
    #[serde(default)]
    disabled: bool,
}

/// (absolute name, type) → (TTL, contents).
type Rrsets = BTreeMap<(String, String), (u32, BTreeSet<String>)>;

impl PowerDns {
    pub fn new(config: &DnsConfig) -> Result<PowerDns, Failure> {
        let key = config
            .api_key
            .read()
            .map_err(|e| Failure::new("dns_api_key_unreadable", format!("{e:#}"), true))?;
        // reqwest is built without a default crypto provider; the daemon installs ring at
        // start, and so does this for callers that did not.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| Failure::new("internal", format!("HTTP client: {e}"), false))?;
        let server_url = format!(
            "{}/servers/{}",
            config.api_url.as_str().trim_end_matches('/'),
            config.server_id
        );
        Ok(PowerDns {
            client,
            server_url,
            key,
        })
    }

    /// Checks that the API answers and takes the key.
    pub async fn probe(&self) -> Result<(), Failure> {
        self.call(Method::GET, "", None).await.map(|_| ())
    }

    /// One API call; `Ok(None)` for a 404, `Ok(Some(body))` (`Null` when empty) for a 2xx.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, Failure> {
        let url = format!("{}{path}", self.server_url);
        let mut req = self
            .client
            .request(method.clone(), &url)
            .header("X-API-Key", &self.key);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| {
            Failure::new(
                "dns_api_unreachable",
                format!(
                    "PowerDNS API at {} did not answer: {}",
                    self.server_url,
                    cut(&error_chain(&e), 300)
                ),
                true,
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| {
            Failure::new(
                "dns_api_unreachable",
                format!("reading PowerDNS's answer: {e}"),
                true,
            )
        })?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(Some(Value::Null));
            }
            return serde_json::from_str(&text).map(Some).map_err(|e| {
                Failure::new(
                    "dns_api_failed",
                    format!("PowerDNS answered {method} {path} with invalid JSON: {e}"),
                    true,
                )
            });
        }
        // PowerDNS explains itself in {"error": "..."}.
        let why = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or(text);
        let message = format!(
            "PowerDNS refused {method} {}: {} {}",
            if path.is_empty() { "/" } else { path },
            status.as_u16(),
            cut(&why, 200)
        );
        if status.is_client_error() {
            Err(Failure::new("dns_api_rejected", message, false))
        } else {
            Err(Failure::new("dns_api_failed", message, true))
        }
    }

    async fn get_zone(&self, zone: &DomainName) -> Result<Option<ZoneJson>, Failure> {
        let Some(v) = self
            .call(Method::GET, &format!("/zones/{}", zone.to_fqdn()), None)
            .await?
        else {
            return Ok(None);
        };
        serde_json::from_value(v).map(Some).map_err(|e| {
            Failure::new(
                "dns_api_failed",
                format!("PowerDNS's zone {zone} is not the expected JSON: {e}"),
                true,
            )
        })
    }

    /// Creates the zone if missing, then makes its RRsets exactly the command's (see the
    /// module documentation).
    pub async fn sync_zone(&self, cmd: &SyncDnsZone) -> Result<SyncDnsZoneOutput, Failure> {
        let zone = cmd.zone();
        let apex = zone.to_fqdn();
        let current = self.get_zone(zone).await?;
        let Some(current) = current else {
            let serial = next_serial(0);
            let wanted = wanted_rrsets(cmd, serial);
            let rrsets: Vec<Value> = wanted
                .iter()
                .map(|((name, kind), (ttl, contents))| rrset_json(name, kind, *ttl, contents))
                .collect();
            let body = json!({
                "name": apex,
                "kind": "Native",
                "nameservers": [],
                "soa_edit_api": "",
                "rrsets": rrsets,
            });
            self.call(Method::POST, "/zones", Some(&body)).await?;
            let serial = self.read_serial(zone).await?;
            tracing::info!(%zone, serial, "DNS zone created");
            return Ok(SyncDnsZoneOutput {
                serial,
                created: true,
                changed: true,
            });
        };

        let mut have: Rrsets = BTreeMap::new();
        let mut has_disabled = BTreeSet::new();
        for r in current.rrsets {
            let key = (r.name.to_ascii_lowercase(), r.kind.clone());
            if r.records.iter().any(|c| c.disabled) {
                has_disabled.insert(key.clone());
            }
            let contents = r.records.into_iter().map(|c| c.content).collect();
            have.insert(key, (r.ttl, contents));
        }
        // Compare with the serial the zone has: the SOA then differs only in its timers.
        let wanted = wanted_rrsets(cmd, current.serial);
        let mut changes = Vec::new();
        for (key, (ttl, contents)) in &wanted {
            if key.1 == "SOA" {
                continue;
            }
            if have.get(key) != Some(&(*ttl, contents.clone())) || has_disabled.contains(key) {
                changes.push(replace(&key.0, &key.1, *ttl, contents));
            }
        }
        for key in have.keys() {
            if key.1 != "SOA" && !wanted.contains_key(key) {
                changes.push(json!({"name": key.0, "type": key.1, "changetype": "DELETE"}));
            }
        }
        let soa_key = (apex.clone(), "SOA".to_owned());
        let soa_same = have.get(&soa_key) == wanted.get(&soa_key);
        if changes.is_empty() && soa_same {
            return Ok(SyncDnsZoneOutput {
                serial: current.serial,
                created: false,
                changed: false,
            });
        }
        let serial = next_serial(current.serial);
        let soa = cmd.soa();
        changes.push(replace(
            &apex,
            "SOA",
            soa.ttl().get(),
            &BTreeSet::from([soa.content(serial)]),
        ));
        let n = changes.len();
        self.call(
            Method::PATCH,
            &format!("/zones/{apex}"),
            Some(&json!({ "rrsets": changes })),
        )
        .await?;
        let serial = self.read_serial(zone).await?;
        tracing::info!(%zone, serial, rrsets = n, "DNS zone synced");
        Ok(SyncDnsZoneOutput {
            serial,
            created: false,
            changed: true,
        })
    }

    async fn read_serial(&self, zone: &DomainName) -> Result<u32, Failure> {
        match self.get_zone(zone).await? {
            Some(z) => Ok(z.serial),
            None => Err(Failure::new(
                "dns_api_failed",
                format!("zone {zone} is missing right after it was written"),
                true,
            )),
        }
    }

    /// Deletes the zone; `deleted: false` when there was none.
    pub async fn delete_zone(&self, cmd: &DeleteDnsZone) -> Result<DeleteDnsZoneOutput, Failure> {
        let found = self
            .call(
                Method::DELETE,
                &format!("/zones/{}", cmd.zone.to_fqdn()),
                None,
            )
            .await?;
        if found.is_some() {
            tracing::info!(zone = %cmd.zone, "DNS zone deleted");
        }
        Ok(DeleteDnsZoneOutput {
            deleted: found.is_some(),
        })
    }
}

/// The RRsets a zone must have after syncing `cmd`, its SOA carrying `serial`.
fn wanted_rrsets(cmd: &SyncDnsZone, serial: u32) -> Rrsets {
    let zone = cmd.zone();
    let apex = zone.to_fqdn();
    let soa = cmd.soa();
    let mut out: Rrsets = BTreeMap::new();
    out.insert(
        (apex.clone(), "SOA".to_owned()),
        (soa.ttl().get(), BTreeSet::from([soa.content(serial)])),
    );
    out.insert(
        (apex, "NS".to_owned()),
        (
            soa.ttl().get(),
            cmd.nameservers().iter().map(DomainName::to_fqdn).collect(),
        ),
    );
    for ((name, kind), (ttl, contents)) in cmd.rrsets() {
        out.insert(
            (name.to_fqdn(zone), kind.as_str().to_owned()),
            (ttl.get(), contents),
        );
    }
    out
}

fn rrset_json(name: &str, kind: &str, ttl: u32, contents: &BTreeSet<String>) -> Value {
    json!({
        "name": name,
        "type": kind,
        "ttl": ttl,
        "records": contents
            .iter()
            .map(|c| json!({"content": c, "disabled": false}))
            .collect::<Vec<_>>(),
    })
}

fn replace(name: &str, kind: &str, ttl: u32, contents: &BTreeSet<String>) -> Value {
    let mut v = rrset_json(name, kind, ttl, contents);
    v["changetype"] = json!("REPLACE");
    v
}

/// The serial after `current`: today's `YYYYMMDD01` when that is larger, else `current + 1`
/// (wrapping past `u32::MAX` as RFC 1982 serial arithmetic allows, skipping 0).
fn next_serial(current: u32) -> u32 {
    let today: u32 = chrono::Utc::now()
        .format("%Y%m%d")
        .to_string()
        .parse::<u32>()
        .unwrap_or(0)
        .saturating_mul(100)
        .saturating_add(1);
    let bumped = current.wrapping_add(1).max(1);
    if today > current { today } else { bumped }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_grow() {
        let today = next_serial(0);
        assert!(today > 2_020_000_000 && today % 100 == 1, "{today}");
        assert_eq!(next_serial(today), today + 1);
        assert_eq!(next_serial(u32::MAX), 1);
    }

    #[test]
    fn cut_keeps_one_short_line() {
        assert_eq!(cut("a\nb", 10), "a b");
        assert_eq!(cut(&"x".repeat(300), 200).chars().count(), 201);
    }
}
