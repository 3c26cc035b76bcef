//! The only writer of `dns_zones` and `dns_records`: a zone's row, its records as operators
//! edit them (each row keeps the typed record beside its presentation `content`, so nothing
//! parses zone-file text back), and what the last push to PowerDNS reported.

use mpanel_protocol::dns::{DnsRecord, RecordData};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// Binds a record's columns as the next six parameters: name, type, content, ttl, priority
/// and the typed data (works for `query` and `query_scalar` alike).
macro_rules! bind_record {
    ($query:expr, $r:expr) => {{
        let r: &DnsRecord = $r;
        $query
            .bind(r.name.as_str())
            .bind(r.kind().as_str())
            .bind(r.data.content())
            .bind(ttl(r))
            .bind(priority(r))
            .bind(serde_json::to_value(&r.data).expect("record data serializes"))
    }};
}

#[derive(Debug, thiserror::Error)]
pub enum StoredRecordsError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("a stored record of the zone is invalid: {0}")]
    Invalid(serde_json::Error),
}

/// A new zone for the domain (an operator's); `None` when the domain already has one.
pub async fn insert_zone(
    conn: &mut sqlx::PgConnection,
    tenant: Uuid,
    domain: Uuid,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar(
        "INSERT INTO dns_zones (tenant_id, domain_id) VALUES ($1, $2)
         ON CONFLICT (domain_id) DO NOTHING RETURNING id",
    )
    .bind(tenant)
    .bind(domain)
    .fetch_optional(conn)
    .await
}

/// The zone's records changed: it is out of sync until its next push.
pub async fn mark_unsynced(db: impl sqlx::PgExecutor<'_>, zone: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE dns_zones SET is_synced = false WHERE id = $1")
        .bind(zone)
        .execute(db)
        .await?;
    Ok(())
}

/// The domain's DnsZone row (created not synced); its id, `None` when the domain's zone
/// belongs to another tenant.
pub async fn ensure_zone(db: &PgPool, tenant: Uuid, domain: Uuid) -> sqlx::Result<Option<Uuid>> {
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
    .fetch_optional(db)
    .await
}

/// The zone has been pushed to its DNS server at least once.
pub async fn was_synced(db: &PgPool, zone: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT last_sync_at IS NOT NULL FROM dns_zones WHERE id = $1")
        .bind(zone)
        .fetch_one(db)
        .await
}

/// The zone's records as stored (rows without typed data, from before the API wrote them,
/// are skipped).
pub async fn stored_records(
    db: impl sqlx::PgExecutor<'_>,
    zone: Uuid,
) -> Result<Vec<DnsRecord>, StoredRecordsError> {
    let rows: Vec<(String, i32, Option<Value>)> = sqlx::query_as(
        "SELECT name, ttl, data FROM dns_records WHERE zone_id = $1 ORDER BY name, type, content",
    )
    .bind(zone)
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .filter_map(|(name, ttl, data)| data.map(|d| (name, ttl, d)))
        .map(|(name, ttl, data)| {
            let record = json!({ "name": name, "ttl": ttl, "data": data });
            serde_json::from_value::<DnsRecord>(record).map_err(StoredRecordsError::Invalid)
        })
        .collect()
}

/// Inserts a whole record set (a new zone's defaults) at once.
pub async fn insert_records(
    db: &PgPool,
    tenant: Uuid,
    zone: Uuid,
    records: &[DnsRecord],
) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    for r in records {
        insert_record(&mut tx, tenant, zone, r).await?;
    }
    tx.commit().await
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
    let query = sqlx::query_scalar(
        "INSERT INTO dns_records (tenant_id, zone_id, name, type, content, ttl, priority, data)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (zone_id, name, type, content) DO NOTHING RETURNING id",
    )
    .bind(tenant)
    .bind(zone);
    bind_record!(query, r).fetch_optional(&mut *conn).await
}

/// Makes row `id` of `zone` hold `r`, keeping its id (an edited record stays addressable).
pub async fn update_record(
    conn: &mut sqlx::PgConnection,
    zone: Uuid,
    id: Uuid,
    r: &DnsRecord,
) -> sqlx::Result<()> {
    let query = sqlx::query(
        "UPDATE dns_records SET name = $3, type = $4, content = $5, ttl = $6, priority = $7,
                data = $8
          WHERE id = $1 AND zone_id = $2",
    )
    .bind(id)
    .bind(zone);
    bind_record!(query, r).execute(&mut *conn).await?;
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
pub async fn record_sync(db: &PgPool, zone: Uuid, job: Uuid, serial: u32) -> sqlx::Result<()> {
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
    .execute(db)
    .await?;
    Ok(())
}

/// A terminated domain's zone: gone with its records (they cascade).
pub async fn delete_zone(db: &PgPool, zone: Uuid) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM dns_zones WHERE id = $1")
        .bind(zone)
        .execute(db)
        .await?;
    Ok(())
}
