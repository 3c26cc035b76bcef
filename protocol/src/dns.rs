//! DNS zones as the panel asks a `dns` agent to serve them: the [`SyncDnsZone`] and
//! [`DeleteDnsZone`] commands and the validated record types they carry.
//!
//! Every value here is checked when it is built or deserialised, so that nothing a zone
//! file or the PowerDNS API could misread (line breaks, quotes, backslashes, `;` outside a
//! quoted TXT string, non-ASCII look-alikes, `../`) can exist. [`RecordData::content`]
//! renders the PowerDNS/zone-file presentation form of a record from these checked parts
//! only, which is why it needs no escaping.
//!
//! Rules of a zone as a whole (checked by [`SyncDnsZone`]'s deserialiser and
//! [`SyncDnsZone::new`]): 1–13 nameservers; at most [`MAX_RECORDS`] records; the apex NS
//! set comes from `nameservers` only (an NS record at `@` is refused); no CNAME at the apex
//! nor beside any other record of the same name; the records of one name and type (one
//! RRset) share a TTL; no record appears twice; every full name is at most 253 characters.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};

use crate::{
    DomainName, EmailAddress,
    messages::{AgentCommand, Role},
};

/// At most this many records in one zone.
pub const MAX_RECORDS: usize = 1000;
/// At most this many nameservers (what fits an unfragmented referral).
pub const MAX_NAMESERVERS: usize = 13;
/// The longest TXT text, in characters.
pub const MAX_TXT_LEN: usize = 2048;

/// Why a DNS value or zone was refused; worded for a log line or a 400 body. Parts of the
/// input it repeats are shortened and escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DnsValueError(String);

impl DnsValueError {
    fn new(message: impl Into<String>) -> DnsValueError {
        DnsValueError(message.into())
    }
}

/// At most 64 characters of `s`, everything but printable ASCII escaped.
fn quote(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    for c in chars.by_ref().take(64) {
        if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

macro_rules! string_newtype {
    ($ty:ident) => {
        impl $ty {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = DnsValueError;
            fn try_from(s: String) -> Result<Self, DnsValueError> {
                Self::parse(&s)
            }
        }

        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = DnsValueError;
            fn from_str(s: &str) -> Result<Self, DnsValueError> {
                Self::parse(s)
            }
        }
    };
}

// ---------------------------------------------------------------------------------------
// Names, TTLs, texts
// ---------------------------------------------------------------------------------------

/// The owner of a record relative to its zone: `@` for the apex, or labels such as `www`,
/// `_dmarc` or `_sip._tcp`. Labels are 1–63 characters of `a-z 0-9 _ -`, not starting
/// with `-`, separated by single dots; stored lowercase; at most 253 characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RecordName(String);

string_newtype!(RecordName);

impl RecordName {
    /// The zone apex, `@`.
    pub fn apex() -> RecordName {
        RecordName("@".to_owned())
    }

    pub fn parse(input: &str) -> Result<RecordName, DnsValueError> {
        if input == "@" {
            return Ok(RecordName::apex());
        }
        let invalid = |why: &str| {
            DnsValueError::new(format!(
                "record name '{}' {why} (expected '@' or labels of a-z, 0-9, '_' and '-' \
                 separated by dots, relative to the zone)",
                quote(input)
            ))
        };
        if input.is_empty() {
            return Err(invalid("is empty"));
        }
        if input.len() > 253 {
            return Err(invalid("is longer than 253 characters"));
        }
        let lower = input.to_ascii_lowercase();
        for label in lower.split('.') {
            if label.is_empty() {
                return Err(invalid(
                    "has an empty label (a dot at an end or two in a row)",
                ));
            }
            if label.len() > 63 {
                return Err(invalid("has a label longer than 63 characters"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            {
                return Err(invalid("has a character outside a-z, 0-9, '_' and '-'"));
            }
            if label.starts_with('-') {
                return Err(invalid("has a label starting with '-'"));
            }
        }
        Ok(RecordName(lower))
    }

    pub fn is_apex(&self) -> bool {
        self.0 == "@"
    }

    /// The absolute name with its trailing dot, as PowerDNS wants it:
    /// `www` in `example.com` is `www.example.com.`.
    pub fn to_fqdn(&self, zone: &DomainName) -> String {
        if self.is_apex() {
            zone.to_fqdn()
        } else {
            format!("{}.{}", self.0, zone.to_fqdn())
        }
    }

    /// The length of the absolute name without its trailing dot.
    fn absolute_len(&self, zone: &DomainName) -> usize {
        if self.is_apex() {
            zone.as_str().len()
        } else {
            self.0.len() + 1 + zone.as_str().len()
        }
    }
}

impl TryFrom<&str> for RecordName {
    type Error = DnsValueError;
    fn try_from(s: &str) -> Result<Self, DnsValueError> {
        RecordName::parse(s)
    }
}

/// A time to live in seconds, 60 (one minute) to 604 800 (one week).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Ttl(u32);

impl Ttl {
    pub const MIN: u32 = 60;
    pub const MAX: u32 = 604_800;

    pub fn new(secs: u32) -> Result<Ttl, DnsValueError> {
        if !(Ttl::MIN..=Ttl::MAX).contains(&secs) {
            return Err(DnsValueError::new(format!(
                "TTL {secs} is outside {}..={} seconds",
                Ttl::MIN,
                Ttl::MAX
            )));
        }
        Ok(Ttl(secs))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Ttl {
    type Error = DnsValueError;
    fn try_from(v: u32) -> Result<Self, DnsValueError> {
        Ttl::new(v)
    }
}

impl From<Ttl> for u32 {
    fn from(t: Ttl) -> u32 {
        t.0
    }
}

/// The text of a TXT record: 1–2048 characters of printable ASCII (space included), without
/// `"` or `\`, so it can be quoted verbatim. Longer than 255 it is sent as several
/// strings of at most 255 (see [`RecordData::content`]).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TxtData(String);

string_newtype!(TxtData);

impl TxtData {
    pub fn parse(input: &str) -> Result<TxtData, DnsValueError> {
        if input.is_empty() {
            return Err(DnsValueError::new("TXT text is empty"));
        }
        if input.len() > MAX_TXT_LEN {
            return Err(DnsValueError::new(format!(
                "TXT text is {} characters long, at most {MAX_TXT_LEN} are allowed",
                input.chars().count()
            )));
        }
        if let Some(c) = input
            .chars()
            .find(|&c| !(c == ' ' || c.is_ascii_graphic()) || c == '"' || c == '\\')
        {
            return Err(DnsValueError::new(format!(
                "TXT text '{}' has {:?}; only printable ASCII without '\"' and '\\' is allowed",
                quote(input),
                c
            )));
        }
        Ok(TxtData(input.to_owned()))
    }

    /// The presentation form: one quoted string per 255 characters, separated by spaces.
    pub fn quoted(&self) -> String {
        self.0
            .as_bytes()
            .chunks(255)
            .map(|chunk| {
                // Printable ASCII only, so every chunk is valid UTF-8.
                format!("\"{}\"", std::str::from_utf8(chunk).unwrap_or_default())
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The CAA property tags mPanel writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaaTag {
    /// Who may issue certificates for the name.
    Issue,
    /// Who may issue wildcard certificates.
    Issuewild,
}

impl CaaTag {
    pub fn as_str(self) -> &'static str {
        match self {
            CaaTag::Issue => "issue",
            CaaTag::Issuewild => "issuewild",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------

/// The record types mPanel manages (SOA and the apex NS set are part of the zone itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RecordType {
    A,
    Aaaa,
    Cname,
    Mx,
    Txt,
    Ns,
    Srv,
    Caa,
}

impl RecordType {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::A => "A",
            RecordType::Aaaa => "AAAA",
            RecordType::Cname => "CNAME",
            RecordType::Mx => "MX",
            RecordType::Txt => "TXT",
            RecordType::Ns => "NS",
            RecordType::Srv => "SRV",
            RecordType::Caa => "CAA",
        }
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The data of a record, typed per record type; on the wire
/// `{"type":"MX","priority":10,"exchange":"mail.example.com"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "UPPERCASE",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum RecordData {
    A {
        address: Ipv4Addr,
    },
    Aaaa {
        address: Ipv6Addr,
    },
    Cname {
        target: DomainName,
    },
    Mx {
        priority: u16,
        exchange: DomainName,
    },
    Txt {
        text: TxtData,
    },
    Ns {
        host: DomainName,
    },
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: DomainName,
    },
    /// `flags` is 0, or 128 (critical).
    Caa {
        critical: bool,
        tag: CaaTag,
        /// The certificate authority's domain (`letsencrypt.org`).
        value: DomainName,
    },
}

impl RecordData {
    pub fn kind(&self) -> RecordType {
        match self {
            RecordData::A { .. } => RecordType::A,
            RecordData::Aaaa { .. } => RecordType::Aaaa,
            RecordData::Cname { .. } => RecordType::Cname,
            RecordData::Mx { .. } => RecordType::Mx,
            RecordData::Txt { .. } => RecordType::Txt,
            RecordData::Ns { .. } => RecordType::Ns,
            RecordData::Srv { .. } => RecordType::Srv,
            RecordData::Caa { .. } => RecordType::Caa,
        }
    }

    /// The presentation form PowerDNS takes as a record's `content` (and answers back):
    /// absolute names with their trailing dot, TXT quoted.
    pub fn content(&self) -> String {
        match self {
            RecordData::A { address } => address.to_string(),
            RecordData::Aaaa { address } => address.to_string(),
            RecordData::Cname { target } => target.to_fqdn(),
            RecordData::Mx { priority, exchange } => format!("{priority} {}", exchange.to_fqdn()),
            RecordData::Txt { text } => text.quoted(),
            RecordData::Ns { host } => host.to_fqdn(),
            RecordData::Srv {
                priority,
                weight,
                port,
                target,
            } => format!("{priority} {weight} {port} {}", target.to_fqdn()),
            RecordData::Caa {
                critical,
                tag,
                value,
            } => format!(
                "{} {} \"{}\"",
                if *critical { 128 } else { 0 },
                tag.as_str(),
                value
            ),
        }
    }
}

/// One record of a zone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsRecord {
    pub name: RecordName,
    pub ttl: Ttl,
    pub data: RecordData,
}

/// What [`DnsRecord::default_set`] builds a zone's records from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultRecords {
    /// The hosting (web) server the apex and `www` point at.
    pub web_ipv4: Ipv4Addr,
    pub web_ipv6: Option<Ipv6Addr>,
    /// The MX host of the domain.
    pub mail_host: DomainName,
    pub ttl: Ttl,
}

impl DnsRecord {
    pub fn new(name: RecordName, ttl: Ttl, data: RecordData) -> DnsRecord {
        DnsRecord { name, ttl, data }
    }

    pub fn kind(&self) -> RecordType {
        self.data.kind()
    }

    /// The default records of a newly provisioned domain: apex and `www` A (and AAAA when
    /// the hosting server has IPv6) → the hosting server, MX 10 → the mail host, SPF
    /// `v=spf1 mx -all` at the apex, DMARC `v=DMARC1; p=quarantine` at `_dmarc`.
    /// SOA and NS are not records here: they are the zone's [`SoaSpec`] and nameservers.
    pub fn default_set(defaults: &DefaultRecords) -> Vec<DnsRecord> {
        let apex = RecordName::apex;
        let www = || RecordName("www".to_owned());
        let ttl = defaults.ttl;
        let mut records = vec![
            DnsRecord::new(
                apex(),
                ttl,
                RecordData::A {
                    address: defaults.web_ipv4,
                },
            ),
            DnsRecord::new(
                www(),
                ttl,
                RecordData::A {
                    address: defaults.web_ipv4,
                },
            ),
        ];
        if let Some(v6) = defaults.web_ipv6 {
            for name in [apex(), www()] {
                records.push(DnsRecord::new(name, ttl, RecordData::Aaaa { address: v6 }));
            }
        }
        records.push(DnsRecord::new(
            apex(),
            ttl,
            RecordData::Mx {
                priority: 10,
                exchange: defaults.mail_host.clone(),
            },
        ));
        records.push(DnsRecord::new(
            apex(),
            ttl,
            RecordData::Txt {
                text: TxtData("v=spf1 mx -all".to_owned()),
            },
        ));
        records.push(DnsRecord::new(
            RecordName("_dmarc".to_owned()),
            ttl,
            RecordData::Txt {
                text: TxtData("v=DMARC1; p=quarantine".to_owned()),
            },
        ));
        records
    }
}

// ---------------------------------------------------------------------------------------
// SOA
// ---------------------------------------------------------------------------------------

/// The zone's SOA, but for the serial (the agent keeps that: it grows on every change).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    try_from = "RawSoa",
    into = "RawSoa"
)]
pub struct SoaSpec {
    primary_ns: DomainName,
    hostmaster: EmailAddress,
    refresh: u32,
    retry: u32,
    expire: u32,
    minimum: u32,
    ttl: Ttl,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSoa {
    primary_ns: DomainName,
    hostmaster: EmailAddress,
    refresh: u32,
    retry: u32,
    expire: u32,
    minimum: u32,
    ttl: Ttl,
}

impl From<SoaSpec> for RawSoa {
    fn from(s: SoaSpec) -> RawSoa {
        RawSoa {
            primary_ns: s.primary_ns,
            hostmaster: s.hostmaster,
            refresh: s.refresh,
            retry: s.retry,
            expire: s.expire,
            minimum: s.minimum,
            ttl: s.ttl,
        }
    }
}

impl TryFrom<RawSoa> for SoaSpec {
    type Error = DnsValueError;
    fn try_from(r: RawSoa) -> Result<SoaSpec, DnsValueError> {
        SoaSpec::new(
            r.primary_ns,
            r.hostmaster,
            [r.refresh, r.retry, r.expire, r.minimum],
            r.ttl,
        )
    }
}

impl SoaSpec {
    /// Bounds (seconds): refresh 1200–86400, retry 180–86400 and below refresh, expire
    /// 86400–4838400 and above refresh, minimum (negative-answer TTL) 60–86400.
    pub const REFRESH: (u32, u32) = (1200, 86_400);
    pub const RETRY: (u32, u32) = (180, 86_400);
    pub const EXPIRE: (u32, u32) = (86_400, 4_838_400);
    pub const MINIMUM: (u32, u32) = (60, 86_400);

    /// `timers` is `[refresh, retry, expire, minimum]`. The hostmaster's local part must be
    /// letters, digits, `-` or `_` (a dot there would need a `\.` escape in the SOA).
    pub fn new(
        primary_ns: DomainName,
        hostmaster: EmailAddress,
        timers: [u32; 4],
        ttl: Ttl,
    ) -> Result<SoaSpec, DnsValueError> {
        let [refresh, retry, expire, minimum] = timers;
        let mut problems = Vec::new();
        for (name, v, (lo, hi)) in [
            ("refresh", refresh, SoaSpec::REFRESH),
            ("retry", retry, SoaSpec::RETRY),
            ("expire", expire, SoaSpec::EXPIRE),
            ("minimum", minimum, SoaSpec::MINIMUM),
        ] {
            if !(lo..=hi).contains(&v) {
                problems.push(format!("SOA {name} {v} is outside {lo}..={hi}"));
            }
        }
        if retry >= refresh {
            problems.push("SOA retry must be below refresh".to_owned());
        }
        if expire <= refresh {
            problems.push("SOA expire must be above refresh".to_owned());
        }
        if !hostmaster
            .local_part()
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            problems.push(format!(
                "SOA hostmaster '{}' may only have letters, digits, '-' and '_' before the '@'",
                quote(hostmaster.as_str())
            ));
        }
        if !problems.is_empty() {
            return Err(DnsValueError::new(problems.join("; ")));
        }
        Ok(SoaSpec {
            primary_ns,
            hostmaster,
            refresh,
            retry,
            expire,
            minimum,
            ttl,
        })
    }

    /// A SOA with common timers: refresh 3h, retry 1h, expire 2w, minimum 1h, TTL 1h.
    pub fn with_defaults(
        primary_ns: DomainName,
        hostmaster: EmailAddress,
    ) -> Result<SoaSpec, DnsValueError> {
        SoaSpec::new(
            primary_ns,
            hostmaster,
            [10_800, 3_600, 1_209_600, 3_600],
            Ttl(3_600),
        )
    }

    pub fn primary_ns(&self) -> &DomainName {
        &self.primary_ns
    }

    pub fn hostmaster(&self) -> &EmailAddress {
        &self.hostmaster
    }

    pub fn ttl(&self) -> Ttl {
        self.ttl
    }

    /// The hostmaster as the SOA's RNAME: `hostmaster@example.com` → `hostmaster.example.com.`.
    pub fn rname(&self) -> String {
        format!(
            "{}.{}",
            self.hostmaster.local_part(),
            self.hostmaster.domain().to_fqdn()
        )
    }

    /// The SOA record's content with `serial`.
    pub fn content(&self, serial: u32) -> String {
        format!(
            "{} {} {serial} {} {} {} {}",
            self.primary_ns.to_fqdn(),
            self.rname(),
            self.refresh,
            self.retry,
            self.expire,
            self.minimum
        )
    }
}

// ---------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------

/// Creates the zone when it does not exist, then makes its records exactly `records` plus
/// the SOA of `soa` and the apex NS set of `nameservers`. Idempotent: a second identical
/// sync changes nothing (and answers `changed: false`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    try_from = "RawSyncDnsZone",
    into = "RawSyncDnsZone"
)]
pub struct SyncDnsZone {
    zone: DomainName,
    nameservers: Vec<DomainName>,
    soa: SoaSpec,
    records: Vec<DnsRecord>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSyncDnsZone {
    zone: DomainName,
    nameservers: Vec<DomainName>,
    soa: SoaSpec,
    records: Vec<DnsRecord>,
}

impl From<SyncDnsZone> for RawSyncDnsZone {
    fn from(s: SyncDnsZone) -> RawSyncDnsZone {
        RawSyncDnsZone {
            zone: s.zone,
            nameservers: s.nameservers,
            soa: s.soa,
            records: s.records,
        }
    }
}

impl TryFrom<RawSyncDnsZone> for SyncDnsZone {
    type Error = DnsValueError;
    fn try_from(r: RawSyncDnsZone) -> Result<SyncDnsZone, DnsValueError> {
        SyncDnsZone::new(r.zone, r.nameservers, r.soa, r.records)
    }
}

/// One RRset: the records of one name and type.
pub type RrsetKey = (RecordName, RecordType);

impl SyncDnsZone {
    /// Checks the zone-wide rules listed in the module documentation.
    pub fn new(
        zone: DomainName,
        nameservers: Vec<DomainName>,
        soa: SoaSpec,
        records: Vec<DnsRecord>,
    ) -> Result<SyncDnsZone, DnsValueError> {
        if nameservers.is_empty() || nameservers.len() > MAX_NAMESERVERS {
            return Err(DnsValueError::new(format!(
                "a zone needs 1 to {MAX_NAMESERVERS} nameservers, {} given",
                nameservers.len()
            )));
        }
        let distinct: BTreeSet<&DomainName> = nameservers.iter().collect();
        if distinct.len() != nameservers.len() {
            return Err(DnsValueError::new("a nameserver is listed twice"));
        }
        if records.len() > MAX_RECORDS {
            return Err(DnsValueError::new(format!(
                "a zone holds at most {MAX_RECORDS} records, {} given",
                records.len()
            )));
        }
        let mut seen = BTreeSet::new();
        let mut ttls: BTreeMap<RrsetKey, Ttl> = BTreeMap::new();
        let mut types_by_name: BTreeMap<&RecordName, BTreeSet<RecordType>> = BTreeMap::new();
        for r in &records {
            let kind = r.kind();
            if r.name.absolute_len(&zone) > 253 {
                return Err(DnsValueError::new(format!(
                    "record name '{}' in {zone} is longer than 253 characters",
                    quote(r.name.as_str())
                )));
            }
            if r.name.is_apex() && kind == RecordType::Ns {
                return Err(DnsValueError::new(
                    "the apex NS records come from 'nameservers', not from 'records'",
                ));
            }
            if r.name.is_apex() && kind == RecordType::Cname {
                return Err(DnsValueError::new("a CNAME cannot be at the zone apex"));
            }
            if !seen.insert((&r.name, &r.data)) {
                return Err(DnsValueError::new(format!(
                    "the {kind} record '{}' of '{}' is listed twice",
                    quote(&r.data.content()),
                    r.name
                )));
            }
            let ttl = *ttls.entry((r.name.clone(), kind)).or_insert(r.ttl);
            if ttl != r.ttl {
                return Err(DnsValueError::new(format!(
                    "the {kind} records of '{}' have different TTLs; one RRset has one TTL",
                    r.name
                )));
            }
            types_by_name.entry(&r.name).or_default().insert(kind);
        }
        for (name, types) in &types_by_name {
            if types.contains(&RecordType::Cname)
                && (types.len() > 1
                    || records
                        .iter()
                        .filter(|r| &&r.name == name && r.kind() == RecordType::Cname)
                        .count()
                        > 1)
            {
                return Err(DnsValueError::new(format!(
                    "'{name}' has a CNAME, so it can have no other record"
                )));
            }
        }
        Ok(SyncDnsZone {
            zone,
            nameservers,
            soa,
            records,
        })
    }

    pub fn zone(&self) -> &DomainName {
        &self.zone
    }

    pub fn nameservers(&self) -> &[DomainName] {
        &self.nameservers
    }

    pub fn soa(&self) -> &SoaSpec {
        &self.soa
    }

    pub fn records(&self) -> &[DnsRecord] {
        &self.records
    }

    /// The wanted RRsets of `records`: for each name and type, its TTL and its contents
    /// (sorted). SOA and the apex NS set are not included.
    pub fn rrsets(&self) -> BTreeMap<RrsetKey, (Ttl, BTreeSet<String>)> {
        let mut out: BTreeMap<RrsetKey, (Ttl, BTreeSet<String>)> = BTreeMap::new();
        for r in &self.records {
            out.entry((r.name.clone(), r.kind()))
                .or_insert_with(|| (r.ttl, BTreeSet::new()))
                .1
                .insert(r.data.content());
        }
        out
    }
}

/// What a sync did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncDnsZoneOutput {
    /// The SOA serial the zone is served with now.
    pub serial: u32,
    /// The zone did not exist and was created.
    pub created: bool,
    /// Something was written; `false` when the zone already was exactly as asked.
    pub changed: bool,
}

impl AgentCommand for SyncDnsZone {
    type Output = SyncDnsZoneOutput;

    fn required_role(&self) -> Option<Role> {
        Some(Role::Dns)
    }
}

/// Removes the zone and all its records; a zone that does not exist is already deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteDnsZone {
    pub zone: DomainName,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteDnsZoneOutput {
    /// `false` when there was no such zone.
    pub deleted: bool,
}

impl AgentCommand for DeleteDnsZone {
    type Output = DeleteDnsZoneOutput;

    fn required_role(&self) -> Option<Role> {
        Some(Role::Dns)
    }
}
