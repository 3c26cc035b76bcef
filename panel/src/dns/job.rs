//! PROVISION_DNS: the domain's zone on the tenant's DNS server, with the default record set
//! (apex and www → the hosting server, MX → `mail.<zone>` when the tenant has a mail server,
//! SPF, DMARC) and the configured nameservers. Success records the DnsZone row.

use std::net::IpAddr;

use mpanel_protocol::{
    DomainName, EmailAddress,
    dns::{DefaultRecords, DnsRecord, RecordData, RecordName, SoaSpec, SyncDnsZone, Ttl},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::jobs::agent::{db_error, pick_server, run_on, set_job_server};
use crate::{
    app::AppState,
    jobs::{
        dispatcher::{DispatchError, JobToRun},
        payload::{JobKind, JobRefs},
    },
    model::{JobType, ProductType},
    orders::jobs::OrderJob,
};

const TTL_SECS: u32 = 3_600;

/// PROVISION_DNS for a paid order: the order's zone with the default records.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProvisionOrderZone(pub OrderJob);

impl JobKind for ProvisionOrderZone {
    const TYPE: JobType = JobType::ProvisionDns;

    fn refs(&self) -> JobRefs {
        self.0.refs()
    }

    async fn run(&self, state: &AppState, job: &JobToRun) -> Result<Value, DispatchError> {
        let (zone, domain_id) = self.0.domain()?;
        let hosting = self.0.product_type == ProductType::SharedHosting;
        provision(state, job, zone, domain_id, Sync::Order { hosting }).await
    }

    async fn on_success(
        &self,
        tx: &mut PgConnection,
        state: &AppState,
        _job: &JobToRun,
    ) -> sqlx::Result<()> {
        self.0.succeeded(tx, state).await
    }
}

/// PROVISION_DNS after an operator's change to a zone or its records: the records as
/// stored are pushed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncZone {
    pub zone_id: Uuid,
    pub domain_id: Uuid,
    pub domain: DomainName,
    pub requested_by: Uuid,
}

impl JobKind for SyncZone {
    const TYPE: JobType = JobType::ProvisionDns;

    fn refs(&self) -> JobRefs {
        JobRefs {
            domain_id: Some(self.domain_id),
            dns_zone_id: Some(self.zone_id),
            ..JobRefs::default()
        }
    }

    async fn run(&self, state: &AppState, job: &JobToRun) -> Result<Value, DispatchError> {
        provision(state, job, &self.domain, self.domain_id, Sync::Operator).await
    }
}

/// Who asked for a zone's push.
#[derive(Clone, Copy)]
enum Sync {
    /// A paid order (a hosting order's apex waits for its web server).
    Order { hosting: bool },
    /// An operator's edit: an emptied zone stays empty once it was synced.
    Operator,
}

async fn provision(
    state: &AppState,
    job: &JobToRun,
    zone: &DomainName,
    domain_id: Uuid,
    sync: Sync,
) -> Result<Value, DispatchError> {
    let permanent = |m: String| DispatchError::Permanent(m);
    let nameservers = state.config.dns.nameservers.clone();
    let Some(primary) = nameservers.first().cloned() else {
        return Err(permanent(
            "DNS_NAMESERVERS is not set on the panel: zones need nameservers".into(),
        ));
    };
    let hostmaster = match &state.config.dns.hostmaster {
        Some(h) => h.clone(),
        None => EmailAddress::parse(&format!("hostmaster@{zone}"))
            .map_err(|e| permanent(format!("hostmaster address: {e}")))?,
    };
    let soa = SoaSpec::with_defaults(primary, hostmaster).map_err(|e| permanent(e.to_string()))?;

    let Some((dns_server, _)) = pick_server(state, job.tenant_id, "DNS").await? else {
        return Err(DispatchError::Retryable(
            "this tenant has no active DNS server".into(),
        ));
    };
    // The zone's records are the rows operators edit; a new zone starts with the defaults,
    // as does an empty one an order provisions. A zone its operators emptied stays empty.
    let zone_id = ensure_zone(state, job.tenant_id, domain_id).await?;
    // One push per zone at a time: a second sync waits here and then reads the records as
    // they are after the first, so the last push to PowerDNS is never an older set. The lock
    // lives in a transaction, so a dropped job releases it with its connection.
    let mut zone_lock = state.db.begin().await.map_err(db_error)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 5381))")
        .bind(zone_id)
        .execute(&mut *zone_lock)
        .await
        .map_err(db_error)?;
    let mut records = stored_records(&state.db, zone_id).await?;
    let operator_sync = matches!(sync, Sync::Operator);
    if records.is_empty() && (!operator_sync || !was_synced(state, zone_id).await?) {
        let hosting = matches!(sync, Sync::Order { hosting: true });
        records = records_for(state, job, zone, domain_id, hosting).await?;
        store_records(state, job.tenant_id, zone_id, &records).await?;
    }
    let command = SyncDnsZone::new(zone.clone(), nameservers, soa, records)
        .map_err(|e| permanent(format!("the zone would be invalid: {e}")))?;

    set_job_server(state, job.id, dns_server).await?;
    let output = run_on(state, dns_server, command).await?;
    record_zone(state, zone_id, job.id, output.serial).await?;
    zone_lock.commit().await.map_err(db_error)?;
    Ok(json!({
        "serverId": dns_server,
        "zone": zone,
        "serial": output.serial,
        "created": output.created,
        "changed": output.changed,
    }))
}

/// The default record set. A hosting order's zone waits for its hosting account's server
/// (the apex must point somewhere real); other products get mail records only.
async fn records_for(
    state: &AppState,
    job: &JobToRun,
    zone: &DomainName,
    domain_id: Uuid,
    hosting: bool,
) -> Result<Vec<DnsRecord>, DispatchError> {
    let ttl = Ttl::new(TTL_SECS).expect("a valid TTL");
    let web_ip: Option<String> = sqlx::query_scalar(
        "SELECT s.ip_address FROM hosting_accounts h JOIN servers s ON s.id = h.server_id
          WHERE h.domain_id = $1 AND h.status <> 'TERMINATED'",
    )
    .bind(domain_id)
    .fetch_optional(&state.db)
    .await
    .map_err(db_error)?;
    if hosting && web_ip.is_none() {
        return Err(DispatchError::Retryable(
            "waiting for the hosting account's web server (PROVISION_HOSTING)".into(),
        ));
    }
    let mail_server = pick_server(state, job.tenant_id, "MAIL").await?;
    let mail_host = DomainName::parse(&format!("mail.{zone}"))
        .map_err(|e| DispatchError::Permanent(format!("mail host: {e}")))?;

    let mut records = Vec::new();
    match web_ip.as_deref().map(str::parse::<IpAddr>) {
        Some(Ok(IpAddr::V4(v4))) => {
            records = DnsRecord::default_set(&DefaultRecords {
                web_ipv4: v4,
                web_ipv6: None,
                mail_host: mail_host.clone(),
                ttl,
            });
            if mail_server.is_none() {
                records.retain(|r| !is_mail_record(r));
            }
        }
        Some(Ok(IpAddr::V6(v6))) => {
            for name in [RecordName::apex(), www()] {
                records.push(DnsRecord::new(name, ttl, RecordData::Aaaa { address: v6 }));
            }
        }
        Some(Err(_)) => {
            return Err(DispatchError::Permanent(
                "the web server's ipAddress is not an IP address".into(),
            ));
        }
        None => {}
    }
    if let Some((_, mail_ip)) = mail_server {
        if !records.iter().any(is_mail_record) {
            // No web records: build the mail part of the default set on its own.
            let placeholder = DnsRecord::default_set(&DefaultRecords {
                web_ipv4: std::net::Ipv4Addr::UNSPECIFIED,
                web_ipv6: None,
                mail_host: mail_host.clone(),
                ttl,
            });
            records.extend(placeholder.into_iter().filter(is_mail_record));
        }
        match mail_ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(address)) => {
                records.push(DnsRecord::new(mail_label(), ttl, RecordData::A { address }))
            }
            Ok(IpAddr::V6(address)) => records.push(DnsRecord::new(
                mail_label(),
                ttl,
                RecordData::Aaaa { address },
            )),
            Err(_) => {}
        }
    }
    Ok(records)
}

fn www() -> RecordName {
    RecordName::parse("www").expect("a valid name")
}

fn mail_label() -> RecordName {
    RecordName::parse("mail").expect("a valid name")
}

/// MX, SPF (TXT at the apex) and DMARC belong to mail.
fn is_mail_record(r: &DnsRecord) -> bool {
    matches!(r.data, RecordData::Mx { .. } | RecordData::Txt { .. })
}

/// The domain's DnsZone row (created not synced); its id.
pub async fn ensure_zone(
    state: &AppState,
    tenant: Uuid,
    domain: Uuid,
) -> Result<Uuid, DispatchError> {
    sqlx::query_scalar(
        "WITH inserted AS (
            INSERT INTO dns_zones (tenant_id, domain_id) VALUES ($1, $2)
            ON CONFLICT (domain_id) DO NOTHING RETURNING id)
         SELECT id FROM inserted
         UNION ALL SELECT id FROM dns_zones WHERE domain_id = $2 AND tenant_id = $1
         LIMIT 1",
    )
    .bind(tenant)
    .bind(domain)
    .fetch_optional(&state.db)
    .await
    .map_err(db_error)?
    .ok_or_else(|| DispatchError::Permanent("the domain's zone belongs to another tenant".into()))
}

/// The zone has been pushed to its DNS server at least once.
async fn was_synced(state: &AppState, zone: Uuid) -> Result<bool, DispatchError> {
    sqlx::query_scalar("SELECT last_sync_at IS NOT NULL FROM dns_zones WHERE id = $1")
        .bind(zone)
        .fetch_one(&state.db)
        .await
        .map_err(db_error)
}

/// The zone's records as stored (rows without typed data, from before the API wrote them,
/// are skipped).
pub async fn stored_records(
    db: impl sqlx::PgExecutor<'_>,
    zone: Uuid,
) -> Result<Vec<DnsRecord>, DispatchError> {
    let rows: Vec<(String, i32, Option<Value>)> = sqlx::query_as(
        "SELECT name, ttl, data FROM dns_records WHERE zone_id = $1 ORDER BY name, type, content",
    )
    .bind(zone)
    .fetch_all(db)
    .await
    .map_err(db_error)?;
    rows.into_iter()
        .filter_map(|(name, ttl, data)| data.map(|d| (name, ttl, d)))
        .map(|(name, ttl, data)| {
            let record = json!({ "name": name, "ttl": ttl, "data": data });
            serde_json::from_value::<DnsRecord>(record).map_err(|e| {
                DispatchError::Permanent(format!("a stored record of the zone is invalid: {e}"))
            })
        })
        .collect()
}

async fn store_records(
    state: &AppState,
    tenant: Uuid,
    zone: Uuid,
    records: &[DnsRecord],
) -> Result<(), DispatchError> {
    let mut tx = state.db.begin().await.map_err(db_error)?;
    for r in records {
        insert_record(&mut tx, tenant, zone, r)
            .await
            .map_err(db_error)?;
    }
    tx.commit().await.map_err(db_error)
}

fn priority(r: &DnsRecord) -> Option<i32> {
    match &r.data {
        RecordData::Mx { priority, .. } | RecordData::Srv { priority, .. } => {
            Some(i32::from(*priority))
        }
        _ => None,
    }
}

fn ttl(r: &DnsRecord) -> i32 {
    i32::try_from(r.ttl.get()).unwrap_or(i32::MAX)
}

/// Inserts one record row (nothing when the same record is already there); its id.
pub async fn insert_record(
    conn: &mut sqlx::PgConnection,
    tenant: Uuid,
    zone: Uuid,
    r: &DnsRecord,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar(
        "INSERT INTO dns_records (tenant_id, zone_id, name, type, content, ttl, priority, data)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (zone_id, name, type, content) DO NOTHING RETURNING id",
    )
    .bind(tenant)
    .bind(zone)
    .bind(r.name.as_str())
    .bind(r.kind().as_str())
    .bind(r.data.content())
    .bind(ttl(r))
    .bind(priority(r))
    .bind(serde_json::to_value(&r.data).expect("record data serializes"))
    .fetch_optional(&mut *conn)
    .await
}

/// Makes row `id` of `zone` hold `r`, keeping its id (an edited record stays addressable).
pub async fn update_record(
    conn: &mut sqlx::PgConnection,
    zone: Uuid,
    id: Uuid,
    r: &DnsRecord,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE dns_records SET name = $3, type = $4, content = $5, ttl = $6, priority = $7,
                data = $8
          WHERE id = $1 AND zone_id = $2",
    )
    .bind(id)
    .bind(zone)
    .bind(r.name.as_str())
    .bind(r.kind().as_str())
    .bind(r.data.content())
    .bind(ttl(r))
    .bind(priority(r))
    .bind(serde_json::to_value(&r.data).expect("record data serializes"))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Deletes the row of `r` from `zone` (a row is one name, type and content).
pub async fn delete_record(
    conn: &mut sqlx::PgConnection,
    zone: Uuid,
    r: &DnsRecord,
) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM dns_records WHERE zone_id = $1 AND name = $2 AND type = $3 AND content = $4",
    )
    .bind(zone)
    .bind(r.name.as_str())
    .bind(r.kind().as_str())
    .bind(r.data.content())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The zone was pushed, with the serial the agent reported. It is synced unless an edit
/// made since this job read the records has queued another sync (not run yet).
async fn record_zone(
    state: &AppState,
    zone: Uuid,
    job: Uuid,
    serial: u32,
) -> Result<(), DispatchError> {
    let serial = i32::try_from(serial).unwrap_or(i32::MAX);
    sqlx::query(
        "UPDATE dns_zones SET soa_serial = $2, last_sync_at = now(),
                is_synced = NOT EXISTS (
                    SELECT 1 FROM jobs WHERE type = 'PROVISION_DNS' AND id <> $3
                       AND status IN ('PENDING', 'RUNNING') AND dns_zone_id = $1)
          WHERE id = $1",
    )
    .bind(zone)
    .bind(serial)
    .bind(job)
    .execute(&state.db)
    .await
    .map_err(db_error)?;
    Ok(())
}
