//! PROVISION_DNS: the domain's zone on the tenant's DNS server, with the default record set
//! (apex and www → the hosting server, MX → `mail.<zone>` when the tenant has a mail server,
//! SPF, DMARC) and the configured nameservers. Success records the DnsZone row.

use std::net::IpAddr;

use mpanel_protocol::{
    DomainName, EmailAddress,
    dns::{
        DefaultRecords, DeleteDnsZone, DnsRecord, RecordData, RecordName, SoaSpec, SyncDnsZone, Ttl,
    },
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::store::{self, StoredRecordsError};
use crate::jobs::agent::{db_error, pick_server, run_on, set_job_server};
use crate::{
    app::AppState,
    auth::permissions::Action,
    jobs::{
        dispatcher::{DispatchError, JobToRun},
        payload::{JobKind, JobRefs},
    },
    model::{JobType, ProductType},
    orders::jobs::order_kind,
};

const TTL_SECS: u32 = 3_600;

order_kind!(
    /// PROVISION_DNS for a paid order: the order's zone with the default records.
    ProvisionOrderZone as ProvisionDns,
    |state, job, order| {
        let (zone, domain_id) = order.domain()?;
        let hosting = order.product_type == ProductType::SharedHosting;
        provision(state, job, zone, domain_id, Sync::Order { hosting }).await
    },
);

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

    fn requires(&self) -> Option<Action> {
        Some(Action::DnsSync)
    }

    fn refs(&self) -> JobRefs {
        JobRefs::default()
            .domain(self.domain_id)
            .dns_zone(self.zone_id)
    }

    async fn run(&self, state: &AppState, job: &JobToRun) -> Result<Value, DispatchError> {
        provision(state, job, &self.domain, self.domain_id, Sync::Operator).await
    }
}

/// A terminated domain's zone removed from the tenant's DNS server, then its row. The
/// server answers for the zone no more (REFUSED, or NXDOMAIN from a parent it serves).
pub(crate) async fn delete_zone(
    state: &AppState,
    job: &JobToRun,
    zone_id: Uuid,
    zone: &DomainName,
) -> Result<Value, DispatchError> {
    let Some((server, _)) = pick_server(state, job.tenant_id, "DNS").await? else {
        return Err(DispatchError::Retryable(
            "this tenant has no active DNS server".into(),
        ));
    };
    set_job_server(state, job.id, server).await?;
    let out = run_on(state, job, server, DeleteDnsZone { zone: zone.clone() }).await?;
    store::delete_zone(&state.db, zone_id)
        .await
        .map_err(db_error)?;
    Ok(json!({ "zoneId": zone_id, "zone": zone, "serverId": server, "deleted": out.deleted }))
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
    let zone_id = store::ensure_zone(&state.db, job.tenant_id, domain_id)
        .await
        .map_err(db_error)?
        .ok_or_else(|| permanent("the domain's zone belongs to another tenant".into()))?;
    // One push per zone at a time: a second sync waits here and then reads the records as
    // they are after the first, so the last push to PowerDNS is never an older set. The lock
    // lives in a transaction, so a dropped job releases it with its connection.
    let mut zone_lock = state.db.begin().await.map_err(db_error)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 5381))")
        .bind(zone_id)
        .execute(&mut *zone_lock)
        .await
        .map_err(db_error)?;
    let mut records = store::stored_records(&state.db, zone_id)
        .await
        .map_err(|e| match e {
            StoredRecordsError::Db(e) => db_error(e),
            invalid => permanent(invalid.to_string()),
        })?;
    let operator_sync = matches!(sync, Sync::Operator);
    let was_synced = || async {
        store::was_synced(&state.db, zone_id)
            .await
            .map_err(db_error)
    };
    if records.is_empty() && (!operator_sync || !was_synced().await?) {
        let hosting = matches!(sync, Sync::Order { hosting: true });
        records = records_for(state, job, zone, domain_id, hosting).await?;
        store::insert_records(&state.db, job.tenant_id, zone_id, &records)
            .await
            .map_err(db_error)?;
    }
    let command = SyncDnsZone::new(zone.clone(), nameservers, soa, records)
        .map_err(|e| permanent(format!("the zone would be invalid: {e}")))?;

    set_job_server(state, job.id, dns_server).await?;
    let output = run_on(state, job, dns_server, command).await?;
    store::record_sync(&state.db, zone_id, job.id, output.serial)
        .await
        .map_err(db_error)?;
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
