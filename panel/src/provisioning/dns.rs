//! PROVISION_DNS: the domain's zone on the tenant's DNS server, with the default record set
//! (apex and www → the hosting server, MX → `mail.<zone>` when the tenant has a mail server,
//! SPF, DMARC) and the configured nameservers. Success records the DnsZone row.

use std::net::IpAddr;

use mpanel_protocol::{
    DomainName, EmailAddress,
    dns::{DefaultRecords, DnsRecord, RecordData, RecordName, SoaSpec, SyncDnsZone, Ttl},
};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{db_error, pick_server, run_on, set_job_server};
use crate::{
    app::AppState,
    jobs::dispatcher::{DispatchError, JobToRun},
};

const TTL_SECS: u32 = 3_600;

pub async fn provision(state: &AppState, job: &JobToRun) -> Result<Value, DispatchError> {
    let permanent = |m: String| DispatchError::Permanent(m);
    let zone = job.payload["domain"]
        .as_str()
        .map(DomainName::parse)
        .ok_or_else(|| permanent("the job has no domain".into()))?
        .map_err(|e| permanent(format!("the job's domain: {e}")))?;
    let domain_id = job.payload["domainId"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| permanent("the job has no domainId".into()))?;

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
    let records = records_for(state, job, &zone, domain_id).await?;
    let command = SyncDnsZone::new(zone.clone(), nameservers, soa, records)
        .map_err(|e| permanent(format!("the zone would be invalid: {e}")))?;

    set_job_server(state, job.id, dns_server).await?;
    let output = run_on(state, dns_server, command).await?;
    record_zone(state, job.tenant_id, domain_id, output.serial).await?;
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
    let hosting = job.payload["productType"] == "SHARED_HOSTING";
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

/// The DnsZone row of the domain: synced, with the serial the agent reported.
async fn record_zone(
    state: &AppState,
    tenant: Uuid,
    domain: Uuid,
    serial: u32,
) -> Result<(), DispatchError> {
    let serial = i32::try_from(serial).unwrap_or(i32::MAX);
    let updated = sqlx::query(
        "UPDATE dns_zones SET is_synced = true, soa_serial = $3, last_sync_at = now()
          WHERE tenant_id = $1 AND domain_id = $2",
    )
    .bind(tenant)
    .bind(domain)
    .bind(serial)
    .execute(&state.db)
    .await
    .map_err(db_error)?;
    if updated.rows_affected() == 0 {
        sqlx::query(
            "INSERT INTO dns_zones (tenant_id, domain_id, soa_serial, is_synced, last_sync_at)
             VALUES ($1, $2, $3, true, now())",
        )
        .bind(tenant)
        .bind(domain)
        .bind(serial)
        .execute(&state.db)
        .await
        .map_err(db_error)?;
    }
    Ok(())
}
