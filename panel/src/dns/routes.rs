//! `/api/dns/zones` (spec §8.2): the tenant's zones and their records. The panel's rows are
//! the desired state; every change queues a sync (a PROVISION_DNS job that pushes the zone
//! whole to the tenant's DNS server) and answers 202 with the job id. Syncs of one zone that
//! are still waiting are shared: ten edits in a row push the zone once or twice, not ten
//! times.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use chrono::{DateTime, Utc};
use mpanel_protocol::{
    DomainName,
    dns::{DnsRecord, RecordData, RecordName, SoaSpec, SyncDnsZone, Ttl},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::domains;
use crate::http::openapi::{Errors, ListParams};
use crate::{
    app::AppState,
    audit::{self, Entry},
    auth::{
        current::CurrentUser,
        permissions::{Require, perm},
    },
    dns::{job as zones, store as zone_store},
    http::{
        client::ClientMeta,
        error::{ApiError, ApiResult},
        extract::{ApiJson, IdPath},
        list::{ListQuery, Page, contains_pattern, fetch_page},
    },
    jobs::{self, payload::JobPayload, store},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(detail))
        .routes(routes!(sync))
        .routes(routes!(records, add_record))
        .routes(routes!(update_record, delete_record))
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsZone {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub domain_id: Uuid,
    /// The domain's name (the zone's name).
    pub domain: String,
    pub pdns_id: Option<i32>,
    /// The SOA serial the DNS server reported at the last sync.
    pub soa_serial: Option<i32>,
    /// `false` from a change until the sync that publishes it succeeds.
    pub is_synced: bool,
    pub last_sync_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "z.id, z.tenant_id, z.domain_id, d.name AS domain, z.pdns_id, z.soa_serial, \
     z.is_synced, z.last_sync_at, z.created_at, z.updated_at";
const FROM: &str = "FROM dns_zones z JOIN domains d ON d.id = z.domain_id";

/// A stored record of a zone.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = DnsStoredRecord)]
pub struct Record {
    pub id: Uuid,
    /// Relative to the zone: `@` for the apex, `www`, `_dmarc`.
    pub name: String,
    /// `A`, `AAAA`, `CNAME`, `MX`, `TXT`, `NS`, `SRV` or `CAA`.
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: String,
    /// The presentation form, as PowerDNS serves it.
    pub content: String,
    pub ttl: i32,
    pub priority: Option<i32>,
    /// The typed data (like a record body's `data`); `null` for records that predate
    /// typed records.
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const RECORD_COLUMNS: &str = "id, name, type, content, ttl, priority, data, created_at, updated_at";

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct Filter {
    domain_id: Option<Uuid>,
    is_synced: Option<bool>,
    /// Part of the domain name.
    domain: Option<String>,
}

/// The tenant's DNS zones, newest first. Sortable by createdAt, updatedAt, domain,
/// lastSyncAt.
#[utoipa::path(get, path = "/zones", tag = "dns", operation_id = "listDnsZones", security(("bearer" = [])),
    params(ListParams, Filter),
    responses((status = 200, description = "A page of DNS zones", body = Page<DnsZone>), Errors))]
async fn list(
    State(state): State<AppState>,
    user: Require<perm::DnsRead>,
    query: ListQuery<Filter>,
) -> ApiResult<Json<Page<DnsZone>>> {
    let order = query.sorting.order_by(
        &[
            ("createdAt", "z.created_at"),
            ("updatedAt", "z.updated_at"),
            ("domain", "d.name"),
            ("lastSyncAt", "z.last_sync_at"),
        ],
        "z.created_at",
    )?;
    let f = &query.filter;
    let domain_like = f.domain.as_deref().map(contains_pattern);
    const WHERE: &str = "z.tenant_id = $1 AND ($2::uuid IS NULL OR z.domain_id = $2)
        AND ($3::boolean IS NULL OR z.is_synced = $3) AND ($4::text IS NULL OR d.name LIKE $4)";
    let args = crate::pg_args![user.tenant_id, f.domain_id, f.is_synced, domain_like];
    let from_where = format!("{FROM} WHERE {WHERE}");
    let page = fetch_page(&state.db, COLUMNS, &from_where, &order, query.window, args).await?;
    Ok(Json(page))
}

async fn find(db: impl sqlx::PgExecutor<'_>, tenant: Uuid, id: Uuid) -> ApiResult<DnsZone> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} {FROM} WHERE z.id = $1 AND z.tenant_id = $2"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("DNS zone"))
}

async fn zone_records(db: impl sqlx::PgExecutor<'_>, zone: Uuid) -> ApiResult<Vec<Record>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RECORD_COLUMNS} FROM dns_records WHERE zone_id = $1 ORDER BY name, type, content"
    )))
    .bind(zone)
    .fetch_all(db)
    .await?)
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = DnsZoneDetail)]
struct ZoneDetail {
    #[serde(flatten)]
    zone: DnsZone,
    /// The nameservers the zone is published with (the panel's DNS_NAMESERVERS).
    #[schema(value_type = Vec<String>)]
    nameservers: Vec<DomainName>,
    records: Vec<Record>,
}

/// A zone with its nameservers and records.
#[utoipa::path(get, path = "/zones/{id}", tag = "dns", operation_id = "getDnsZone", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The zone's id")),
    responses((status = 200, description = "The zone, its nameservers and its records", body = ZoneDetail), Errors))]
async fn detail(
    State(state): State<AppState>,
    user: Require<perm::DnsRead>,
    IdPath(id): IdPath,
) -> ApiResult<Json<ZoneDetail>> {
    let zone = find(&state.db, user.tenant_id, id).await?;
    let records = zone_records(&state.db, id).await?;
    Ok(Json(ZoneDetail {
        zone,
        nameservers: state.config.dns.nameservers.clone(),
        records,
    }))
}

/// All the records of a zone (not paged).
#[derive(Serialize, ToSchema)]
struct DnsRecordList {
    items: Vec<Record>,
    total: usize,
}

/// The records of a zone, by name, type and content.
#[utoipa::path(get, path = "/zones/{id}/records", tag = "dns", operation_id = "listDnsRecords", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The zone's id")),
    responses((status = 200, description = "All the zone's records", body = DnsRecordList), Errors))]
async fn records(
    State(state): State<AppState>,
    user: Require<perm::DnsRead>,
    IdPath(id): IdPath,
) -> ApiResult<Json<DnsRecordList>> {
    find(&state.db, user.tenant_id, id).await?;
    let records = zone_records(&state.db, id).await?;
    Ok(Json(DnsRecordList {
        total: records.len(),
        items: records,
    }))
}

/// Either `domainId` or `domain`, not both.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateDnsZone {
    /// An existing domain of the tenant, or…
    domain_id: Option<Uuid>,
    /// …a domain name (the domain row is created when new).
    #[schema(format = Hostname)]
    domain: Option<String>,
}

/// The answer of `POST /api/dns/zones`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct DnsZoneCreated {
    zone: DnsZone,
    /// The PROVISION_DNS job that publishes the zone.
    job_id: Uuid,
}

/// The answer of `POST /api/dns/zones/{id}/sync`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct DnsZoneSyncAccepted {
    job_id: Uuid,
    zone_id: Uuid,
    /// `PENDING`.
    status: String,
}

/// The answer of the routes that change records: the sync job and the zone's records now.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct DnsRecordsChanged {
    job_id: Uuid,
    zone_id: Uuid,
    records: Vec<Record>,
}

/// A zone for a domain: the row now, the zone on the DNS server by the queued job (with the
/// default records when the zone has none).
#[utoipa::path(post, path = "/zones", tag = "dns", operation_id = "createDnsZone", security(("bearer" = [])),
    request_body = CreateDnsZone,
    responses((status = 202, description = "The zone row is made and its sync queued", body = DnsZoneCreated), Errors))]
async fn create(
    State(state): State<AppState>,
    user: Require<perm::DnsWrite>,
    client: ClientMeta,
    ApiJson(body): ApiJson<CreateDnsZone>,
) -> ApiResult<(StatusCode, Json<DnsZoneCreated>)> {
    let mut tx = state.db.begin().await?;
    let (domain_id, name): (Uuid, String) = match (body.domain_id, body.domain) {
        (Some(id), None) => {
            sqlx::query_as("SELECT id, name FROM domains WHERE id = $1 AND tenant_id = $2")
                .bind(id)
                .bind(user.tenant_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| ApiError::Unprocessable {
                    message: "no such domain in this tenant".into(),
                    field: "domainId".into(),
                })?
        }
        (None, Some(name)) => {
            let name =
                DomainName::parse(&name).map_err(|e| ApiError::field("domain", e.to_string()))?;
            let existing: Option<(Uuid, Uuid)> =
                sqlx::query_as("SELECT id, tenant_id FROM domains WHERE name = $1")
                    .bind(name.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            match existing {
                Some((_, tenant)) if tenant != user.tenant_id => {
                    return Err(ApiError::Conflict(format!(
                        "{name} is registered elsewhere"
                    )));
                }
                Some((id, _)) => (id, name.to_string()),
                None => {
                    let id = domains::store::insert(&mut tx, user.tenant_id, None, &name, true)
                        .await?
                        .ok_or_else(|| {
                            ApiError::Conflict(format!("{name} is being added right now"))
                        })?;
                    (id, name.to_string())
                }
            }
        }
        _ => {
            return Err(ApiError::field(
                "domainId",
                "give either domainId or domain",
            ));
        }
    };
    let Some(zone) = zone_store::insert_zone(&mut tx, user.tenant_id, domain_id).await? else {
        return Err(ApiError::Conflict(format!("{name} already has a DNS zone")));
    };
    let job = queue_sync(&mut tx, &state, &user, zone, domain_id, &name).await?;
    audit::record(
        &mut tx,
        Entry::by(
            &user,
            &client,
            "dns.zone.create",
            json!({ "zoneId": zone, "domain": name, "jobId": job }),
        ),
    )
    .await?;
    tx.commit().await?;
    jobs::enqueue_after_commit(&state, &[job]).await;
    let zone = find(&state.db, user.tenant_id, zone).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(DnsZoneCreated { zone, job_id: job }),
    ))
}

/// Pushes the zone whole to the DNS server again (or joins the sync already waiting).
#[utoipa::path(post, path = "/zones/{id}/sync", tag = "dns", operation_id = "syncDnsZone", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The zone's id")),
    responses((status = 202, description = "The sync is queued", body = DnsZoneSyncAccepted), Errors))]
async fn sync(
    State(state): State<AppState>,
    user: Require<perm::DnsSync>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<(StatusCode, Json<DnsZoneSyncAccepted>)> {
    let mut tx = state.db.begin().await?;
    let zone = find(&mut *tx, user.tenant_id, id).await?;
    let job = queue_sync(&mut tx, &state, &user, id, zone.domain_id, &zone.domain).await?;
    audit::record(
        &mut tx,
        Entry::by(
            &user,
            &client,
            "dns.zone.sync",
            json!({ "zoneId": id, "domain": zone.domain, "jobId": job }),
        ),
    )
    .await?;
    tx.commit().await?;
    jobs::enqueue_after_commit(&state, &[job]).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(DnsZoneSyncAccepted {
            job_id: job,
            zone_id: id,
            status: "PENDING".to_owned(),
        }),
    ))
}

/// A PROVISION_DNS job for the zone: the one still waiting, if any, else a new one.
async fn queue_sync(
    tx: &mut sqlx::PgConnection,
    state: &AppState,
    user: &CurrentUser,
    zone: Uuid,
    domain_id: Uuid,
    domain: &str,
) -> ApiResult<Uuid> {
    let domain = DomainName::parse(domain)
        .map_err(|e| anyhow::anyhow!("stored zone name {domain:?}: {e}"))?;
    zone_store::mark_unsynced(&mut *tx, zone).await?;
    let waiting: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE tenant_id = $1 AND type = 'PROVISION_DNS'
            AND dns_zone_id = $2 AND status = 'PENDING' LIMIT 1",
    )
    .bind(user.tenant_id)
    .bind(zone)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(job) = waiting {
        return Ok(job);
    }
    let payload = JobPayload::from(zones::SyncZone {
        zone_id: zone,
        domain_id,
        domain,
        requested_by: user.id,
    });
    Ok(store::insert(
        tx,
        user.tenant_id,
        None,
        &payload,
        state.config.jobs.max_attempts,
    )
    .await?)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DnsRecordBody {
    /// Relative to the zone: `@` for the apex, or labels of `a-z 0-9 _ -` separated by dots
    /// (`www`, `_dmarc`, `_sip._tcp`); stored lowercase.
    #[schema(value_type = String, min_length = 1, max_length = 253)]
    name: RecordName,
    /// Seconds (default 3600).
    #[schema(value_type = Option<u32>, minimum = 60, maximum = 604800)]
    ttl: Option<Ttl>,
    /// `{"type":"A","address":"192.0.2.1"}`, `{"type":"MX","priority":10,"exchange":"…"}`.
    #[schema(value_type = DnsRecordData)]
    data: RecordData,
}

/// The fields to change; the others keep their value.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DnsRecordPatch {
    /// Relative to the zone, as in a new record.
    #[schema(value_type = Option<String>, min_length = 1, max_length = 253)]
    name: Option<RecordName>,
    #[schema(value_type = Option<u32>, minimum = 60, maximum = 604800)]
    ttl: Option<Ttl>,
    #[schema(value_type = Option<DnsRecordData>)]
    data: Option<RecordData>,
}

/// The data of a record, typed per record type (this mirrors `mpanel_protocol::dns::RecordData`,
/// which is what parses it).
#[derive(Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "UPPERCASE", deny_unknown_fields)]
#[allow(dead_code)]
enum DnsRecordData {
    A {
        #[schema(format = Ipv4)]
        address: String,
    },
    Aaaa {
        #[schema(format = Ipv6)]
        address: String,
    },
    Cname {
        /// A domain name.
        #[schema(format = Hostname)]
        target: String,
    },
    Mx {
        #[schema(maximum = 65535)]
        priority: u16,
        /// A domain name.
        #[schema(format = Hostname)]
        exchange: String,
    },
    Txt {
        /// Printable ASCII (space included) without `"` or `\`.
        #[schema(min_length = 1, max_length = 2048)]
        text: String,
    },
    /// A delegation (not at the apex: its NS set is the panel's nameservers).
    Ns {
        /// A domain name.
        #[schema(format = Hostname)]
        host: String,
    },
    Srv {
        #[schema(maximum = 65535)]
        priority: u16,
        #[schema(maximum = 65535)]
        weight: u16,
        #[schema(maximum = 65535)]
        port: u16,
        /// A domain name.
        #[schema(format = Hostname)]
        target: String,
    },
    /// `critical` sets flags 128 (else 0).
    Caa {
        critical: bool,
        tag: DnsCaaTag,
        /// The certificate authority's domain (`letsencrypt.org`).
        #[schema(format = Hostname)]
        value: String,
    },
}

/// The CAA property tags mPanel writes.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum DnsCaaTag {
    Issue,
    Issuewild,
}

const DEFAULT_TTL: u32 = 3_600;

/// Adds a record; the whole zone must stay valid (CNAME rules, one TTL per RRset…).
#[utoipa::path(post, path = "/zones/{id}/records", tag = "dns", operation_id = "createDnsRecord", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The zone's id")),
    request_body = DnsRecordBody,
    responses((status = 202, description = "The record is stored and the sync queued", body = DnsRecordsChanged), Errors))]
async fn add_record(
    State(state): State<AppState>,
    user: Require<perm::DnsWrite>,
    client: ClientMeta,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<DnsRecordBody>,
) -> ApiResult<(StatusCode, Json<DnsRecordsChanged>)> {
    let ttl = body
        .ttl
        .unwrap_or_else(|| Ttl::new(DEFAULT_TTL).expect("valid"));
    let record = DnsRecord::new(body.name, ttl, body.data);
    change_records(
        &state,
        &user,
        &client,
        id,
        "dns.record.create",
        None,
        |records| {
            if records.contains(&record) {
                return Err(ApiError::Conflict(
                    "the zone already has this record".into(),
                ));
            }
            records.push(record.clone());
            Ok(())
        },
    )
    .await
}

#[derive(Deserialize)]
struct RecordPath {
    id: String,
    record_id: String,
}

fn ids(path: &RecordPath) -> ApiResult<(Uuid, Uuid)> {
    match (Uuid::parse_str(&path.id), Uuid::parse_str(&path.record_id)) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        _ => Err(ApiError::NotFound("DNS record")),
    }
}

/// Changes a record (typed records only); the whole zone must stay valid.
#[utoipa::path(patch, path = "/zones/{id}/records/{record_id}", tag = "dns", operation_id = "updateDnsRecord", security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The zone's id"),
        ("record_id" = Uuid, Path, description = "The record's id"),
    ),
    request_body = DnsRecordPatch,
    responses((status = 202, description = "The record is changed and the sync queued", body = DnsRecordsChanged), Errors))]
async fn update_record(
    State(state): State<AppState>,
    user: Require<perm::DnsWrite>,
    client: ClientMeta,
    Path(path): Path<RecordPath>,
    ApiJson(body): ApiJson<DnsRecordPatch>,
) -> ApiResult<(StatusCode, Json<DnsRecordsChanged>)> {
    let (zone, record_id) = ids(&path)?;
    let old = stored_record(&state, user.tenant_id, zone, record_id).await?;
    let new = DnsRecord::new(
        body.name.unwrap_or_else(|| old.name.clone()),
        body.ttl.unwrap_or(old.ttl),
        body.data.unwrap_or_else(|| old.data.clone()),
    );
    change_records(
        &state,
        &user,
        &client,
        zone,
        "dns.record.update",
        Some(record_id),
        |records| {
            // Changed or deleted by another request since it was read.
            if !records.contains(&old) {
                return Err(ApiError::NotFound("DNS record"));
            }
            records.retain(|r| r != &old);
            if records.contains(&new) {
                return Err(ApiError::Conflict(
                    "the zone already has this record".into(),
                ));
            }
            records.push(new.clone());
            Ok(())
        },
    )
    .await
}

/// Removes a record (typed records only).
#[utoipa::path(delete, path = "/zones/{id}/records/{record_id}", tag = "dns", operation_id = "deleteDnsRecord", security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The zone's id"),
        ("record_id" = Uuid, Path, description = "The record's id"),
    ),
    responses((status = 202, description = "The record is removed and the sync queued", body = DnsRecordsChanged), Errors))]
async fn delete_record(
    State(state): State<AppState>,
    user: Require<perm::DnsWrite>,
    client: ClientMeta,
    Path(path): Path<RecordPath>,
) -> ApiResult<(StatusCode, Json<DnsRecordsChanged>)> {
    let (zone, record_id) = ids(&path)?;
    let old = stored_record(&state, user.tenant_id, zone, record_id).await?;
    change_records(
        &state,
        &user,
        &client,
        zone,
        "dns.record.delete",
        None,
        |records| {
            if !records.contains(&old) {
                return Err(ApiError::NotFound("DNS record"));
            }
            records.retain(|r| r != &old);
            Ok(())
        },
    )
    .await
}

async fn stored_record(
    state: &AppState,
    tenant: Uuid,
    zone: Uuid,
    id: Uuid,
) -> ApiResult<DnsRecord> {
    let row: Option<(String, i32, Option<Value>)> = sqlx::query_as(
        "SELECT name, ttl, data FROM dns_records WHERE id = $1 AND zone_id = $2 AND tenant_id = $3",
    )
    .bind(id)
    .bind(zone)
    .bind(tenant)
    .fetch_optional(&state.db)
    .await?;
    let (name, ttl, data) = row.ok_or(ApiError::NotFound("DNS record"))?;
    let data = data.ok_or_else(|| {
        ApiError::Conflict("this record predates typed records and cannot be edited".into())
    })?;
    serde_json::from_value(json!({ "name": name, "ttl": ttl, "data": data }))
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored record: {e}")))
}

/// Applies `change` to the zone's records, checks the whole zone as the agent would, writes
/// the difference and queues a sync; 202 with the job and the records. Rows that did not
/// change keep their ids; `edited` is the row an update rewrites in place.
async fn change_records(
    state: &AppState,
    user: &CurrentUser,
    client: &ClientMeta,
    zone_id: Uuid,
    action: &str,
    edited: Option<Uuid>,
    change: impl FnOnce(&mut Vec<DnsRecord>) -> ApiResult<()>,
) -> ApiResult<(StatusCode, Json<DnsRecordsChanged>)> {
    let mut tx = state.db.begin().await?;
    let zone = find(&mut *tx, user.tenant_id, zone_id).await?;
    // One editor at a time per zone: the check below sees the set it replaces.
    sqlx::query("SELECT id FROM dns_zones WHERE id = $1 FOR UPDATE")
        .bind(zone_id)
        .execute(&mut *tx)
        .await?;
    let before = zone_store::stored_records(&mut *tx, zone_id)
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))?;
    let mut after = before.clone();
    change(&mut after)?;
    let name = DomainName::parse(&zone.domain)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored domain: {e}")))?;
    check_zone(state, &name, &after)?;
    let added: Vec<&DnsRecord> = after.iter().filter(|r| !before.contains(r)).collect();
    let removed: Vec<&DnsRecord> = before.iter().filter(|r| !after.contains(r)).collect();
    match (edited, removed.as_slice(), added.as_slice()) {
        (Some(id), [_], [new]) => zone_store::update_record(&mut tx, zone_id, id, new).await?,
        _ => {
            for r in &removed {
                zone_store::delete_record(&mut tx, zone_id, r).await?;
            }
            for r in &added {
                zone_store::insert_record(&mut tx, user.tenant_id, zone_id, r).await?;
            }
        }
    }
    let job = queue_sync(&mut tx, state, user, zone_id, zone.domain_id, &zone.domain).await?;
    audit::record(
        &mut tx,
        Entry::by(
            user,
            client,
            action,
            json!({
                "zoneId": zone_id, "domain": zone.domain, "jobId": job,
                "added": added, "removed": removed,
            }),
        ),
    )
    .await?;
    tx.commit().await?;
    jobs::enqueue_after_commit(state, &[job]).await;
    let records = zone_records(&state.db, zone_id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(DnsRecordsChanged {
            job_id: job,
            zone_id,
            records,
        }),
    ))
}

/// The zone rules of [`SyncDnsZone::new`] (CNAME beside other data, apex NS, TTLs of one
/// RRset…), applied before anything is stored.
fn check_zone(state: &AppState, zone: &DomainName, records: &[DnsRecord]) -> ApiResult<()> {
    let nameservers = state.config.dns.nameservers.clone();
    let Some(primary) = nameservers.first().cloned() else {
        return Err(ApiError::Conflict(
            "DNS_NAMESERVERS is not set on the panel: zones need nameservers".into(),
        ));
    };
    let hostmaster = state
        .config
        .dns
        .hostmaster
        .clone()
        .or_else(|| mpanel_protocol::EmailAddress::parse(&format!("hostmaster@{zone}")).ok())
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no hostmaster address")))?;
    let soa = SoaSpec::with_defaults(primary, hostmaster)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))?;
    SyncDnsZone::new(zone.clone(), nameservers, soa, records.to_vec()).map_err(|e| {
        ApiError::Unprocessable {
            message: format!("the zone would be invalid: {e}"),
            field: "data".into(),
        }
    })?;
    Ok(())
}
