//! Group commit for the hub's database and Redis work: every connection hands its lookups,
//! presence writes and metrics samples to one of three writer tasks, each of which takes
//! whatever has queued up while its previous round trip ran and does it all in one
//! statement (`UNNEST` of arrays) and one Redis pipeline.
//!
//! Why: a reconnect storm made every connection do its own SELECT, a transaction of two
//! UPDATEs, a SELECT of waiting commands, a Redis SET and a metrics INSERT through the one
//! pool the API and the worker share. 10,000 agents coming back at once queued 50,000 round
//! trips there; the pool's 5 s wait ran out, the connection was dropped after its TLS
//! handshake had already been paid for, and the agent tried again later. Batched, the storm
//! costs a few hundred statements, and:
//!
//! - **The hub never holds more than three pool connections** (one per writer), whatever
//!   the number of agents connecting, so the API, the worker and the periodic duties keep
//!   the rest of the pool.
//! - **No added latency when idle**: a writer flushes at once when it has anything; batches
//!   only form while a flush is running (no timer).
//! - **Order per server is kept**: within one flush the last presence operation on a server
//!   decides its row (an offline after an online of the same server leaves it offline), as
//!   the one-statement-at-a-time code did.
//! - **Bounded**: each queue holds [`QUEUE`] items and a flush at most [`MAX_BATCH`]; a
//!   connect waits for room (back-pressure on the handshake path), while metrics samples
//!   and periodic touches are dropped when their queue is full (the next one replaces them).
//! - **Same answers**: the lookup checks the certificate's agent, serial and server in
//!   PostgreSQL after every handshake exactly as before (revocation by another replica is
//!   honoured); the waiting commands are read after the connection is registered, as before.

use std::{collections::HashMap, sync::Arc};

use anyhow::Context;
use chrono::{DateTime, Utc};
use mpanel_protocol::messages::{Hello, MetricsReport};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{commands::Waiting, presence};
use crate::app::AppState;

/// Items a queue holds before senders wait (connects) or samples are dropped (metrics).
const QUEUE: usize = 8192;
/// Items written by one flush: bounds a statement's parameters and one transaction's locks.
const MAX_BATCH: usize = 1000;

/// What the database says about the agent of a certificate.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AgentRow {
    pub tenant_id: Uuid,
    pub server_id: Uuid,
    pub agent_revoked: bool,
    pub server_deleted: bool,
    pub cert_known: bool,
    pub cert_revoked: bool,
}

type Reply<T> = oneshot::Sender<Result<T, Arc<anyhow::Error>>>;

struct Lookup {
    agent_id: Uuid,
    serial_hex: String,
    reply: Reply<Option<AgentRow>>,
}

/// An accepted connection, as `mark_online` wrote it.
pub struct Online {
    pub server_id: Uuid,
    pub agent_id: Uuid,
    pub conn_id: u64,
    pub version: String,
    pub hostname: String,
    /// `server_role[]` in PostgreSQL's array syntax, e.g. `{WEB,DNS}`.
    pub roles: String,
}

impl Online {
    pub fn new(server_id: Uuid, agent_id: Uuid, conn_id: u64, hello: &Hello) -> Online {
        let roles: Vec<String> = presence::server_roles(&hello.roles)
            .iter()
            .filter_map(|r| serde_json::to_value(r).ok()?.as_str().map(str::to_owned))
            .collect();
        Online {
            server_id,
            agent_id,
            conn_id,
            version: hello.agent_version.as_str().to_owned(),
            hostname: hello.hostname.as_str().to_owned(),
            roles: format!("{{{}}}", roles.join(",")),
        }
    }
}

enum Presence {
    /// Marks online, refreshes the Redis key and answers the commands waiting for it.
    Online(Online, Reply<Vec<Waiting>>),
    Offline(Uuid, Reply<()>),
    /// `last_seen_at` of a connected server and its agent.
    Touch {
        server_id: Uuid,
        agent_id: Uuid,
    },
    /// The Redis presence key of a connected server.
    Refresh {
        server_id: Uuid,
        agent_id: Uuid,
        conn_id: u64,
        version: String,
    },
}

struct Sample {
    tenant_id: Uuid,
    server_id: Uuid,
    report: MetricsReport,
}

/// The hub's handle on its writers; cheap to share, one per hub.
pub struct HubStore {
    lookups: mpsc::Sender<Lookup>,
    presence: mpsc::Sender<Presence>,
    metrics: mpsc::Sender<Sample>,
}

fn flat<T>(
    r: Result<Result<T, Arc<anyhow::Error>>, oneshot::error::RecvError>,
) -> anyhow::Result<T> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow::anyhow!("{e:#}")),
        Err(_) => anyhow::bail!("the hub's writer stopped"),
    }
}

impl HubStore {
    /// Starts the three writers; each ends once every handle is dropped and its queue is
    /// empty, so what connections enqueued while closing is still written.
    pub fn start(state: &AppState) -> (Arc<HubStore>, Vec<tokio::task::JoinHandle<()>>) {
        let (lookups, lookup_rx) = mpsc::channel(QUEUE);
        let (presence, presence_rx) = mpsc::channel(QUEUE);
        let (metrics, metrics_rx) = mpsc::channel(QUEUE);
        let tasks = vec![
            tokio::spawn(run(state.clone(), lookup_rx, lookup_batch)),
            tokio::spawn(run(state.clone(), presence_rx, presence_batch)),
            tokio::spawn(run(state.clone(), metrics_rx, metrics_batch)),
        ];
        (
            Arc::new(HubStore {
                lookups,
                presence,
                metrics,
            }),
            tasks,
        )
    }

    /// The agent row of a certificate, `None` when no such agent exists.
    pub async fn agent(
        &self,
        agent_id: Uuid,
        serial_hex: &str,
    ) -> anyhow::Result<Option<AgentRow>> {
        let (reply, rx) = oneshot::channel();
        self.lookups
            .send(Lookup {
                agent_id,
                serial_hex: serial_hex.to_owned(),
                reply,
            })
            .await
            .map_err(|_| anyhow::anyhow!("the hub's writer stopped"))?;
        flat(rx.await)
    }

    /// Marks the server online (PostgreSQL and Redis); returns the commands waiting for it.
    pub async fn online(&self, online: Online) -> anyhow::Result<Vec<Waiting>> {
        let (reply, rx) = oneshot::channel();
        self.presence
            .send(Presence::Online(online, reply))
            .await
            .map_err(|_| anyhow::anyhow!("the hub's writer stopped"))?;
        flat(rx.await)
    }

    pub async fn offline(&self, server_id: Uuid) -> anyhow::Result<()> {
        let (reply, rx) = oneshot::channel();
        self.presence
            .send(Presence::Offline(server_id, reply))
            .await
            .map_err(|_| anyhow::anyhow!("the hub's writer stopped"))?;
        flat(rx.await)
    }

    /// Best effort: a full queue drops it (the next touch, 30 s later, does the same).
    pub fn touch(&self, server_id: Uuid, agent_id: Uuid) {
        let _ = self.presence.try_send(Presence::Touch {
            server_id,
            agent_id,
        });
    }

    /// Best effort, like [`HubStore::touch`]; the key's TTL outlives two missed refreshes.
    pub fn refresh(&self, server_id: Uuid, agent_id: Uuid, conn_id: u64, version: &str) {
        let _ = self.presence.try_send(Presence::Refresh {
            server_id,
            agent_id,
            conn_id,
            version: version.to_owned(),
        });
    }

    /// Queues a sample for storing; `false` when the queue is full and it was dropped.
    pub fn metrics(&self, tenant_id: Uuid, server_id: Uuid, report: MetricsReport) -> bool {
        self.metrics
            .try_send(Sample {
                tenant_id,
                server_id,
                report,
            })
            .is_ok()
    }
}

/// One writer: waits for an item, takes what else is queued (up to [`MAX_BATCH`]) and
/// flushes it; repeats until every sender is gone.
async fn run<T, F>(state: AppState, mut rx: mpsc::Receiver<T>, flush: F)
where
    F: AsyncFn(&AppState, Vec<T>),
{
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        flush(&state, std::mem::take(&mut batch)).await;
    }
}

async fn lookup_batch(state: &AppState, batch: Vec<Lookup>) {
    let agents: Vec<Uuid> = batch.iter().map(|l| l.agent_id).collect();
    let serials: Vec<&str> = batch.iter().map(|l| l.serial_hex.as_str()).collect();
    #[derive(sqlx::FromRow)]
    struct Found {
        agent_id: Uuid,
        serial: String,
        #[sqlx(flatten)]
        row: AgentRow,
    }
    let found: Result<Vec<Found>, _> = sqlx::query_as(
        "SELECT q.agent_id, q.serial, a.tenant_id, a.server_id,
                a.revoked_at IS NOT NULL AS agent_revoked,
                s.deleted_at IS NOT NULL AS server_deleted,
                c.id IS NOT NULL AS cert_known,
                COALESCE(c.revoked_at IS NOT NULL, false) AS cert_revoked
           FROM UNNEST($1::uuid[], $2::text[]) AS q(agent_id, serial)
           JOIN agents a ON a.id = q.agent_id
           JOIN servers s ON s.id = a.server_id
           LEFT JOIN agent_certificates c ON c.agent_id = a.id AND c.serial = q.serial",
    )
    .bind(&agents)
    .bind(&serials)
    .fetch_all(&state.db)
    .await;
    match found {
        Ok(rows) => {
            let by_key: HashMap<(Uuid, String), AgentRow> = rows
                .into_iter()
                .map(|f| ((f.agent_id, f.serial), f.row))
                .collect();
            for l in batch {
                // The same certificate twice in one batch: both get the row.
                let row = by_key.get(&(l.agent_id, l.serial_hex)).cloned();
                let _ = l.reply.send(Ok(row));
            }
        }
        Err(e) => {
            let e = Arc::new(anyhow::Error::new(e).context("look up the agent"));
            for l in batch {
                let _ = l.reply.send(Err(e.clone()));
            }
        }
    }
}

/// Per server, what its row ends as after this batch.
enum Final {
    Online(usize),
    Offline,
    Touch(Uuid),
}

async fn presence_batch(state: &AppState, batch: Vec<Presence>) {
    let mut last: HashMap<Uuid, Final> = HashMap::new();
    for (i, op) in batch.iter().enumerate() {
        match op {
            Presence::Online(o, _) => {
                last.insert(o.server_id, Final::Online(i));
            }
            Presence::Offline(server, _) => {
                last.insert(*server, Final::Offline);
            }
            // A touch never undoes an offline (nor needs to follow an online) of this batch.
            Presence::Touch {
                server_id,
                agent_id,
            } => {
                last.entry(*server_id).or_insert(Final::Touch(*agent_id));
            }
            Presence::Refresh { .. } => {}
        }
    }
    let written = write_presence(state, &batch, &last).await;
    let waiting = match &written {
        Ok(()) => waiting_for(state, &batch).await,
        Err(e) => Err(e.clone()),
    };
    redis_presence(state, &batch, &last).await;
    let mut waiting_by_server: HashMap<Uuid, Vec<Waiting>> = HashMap::new();
    match waiting {
        Ok(rows) => {
            for row in rows {
                waiting_by_server
                    .entry(row.server_id)
                    .or_default()
                    .push(row);
            }
        }
        // The connections go on without them: the router's periodic look sends them once
        // the database answers.
        Err(e) if written.is_ok() => {
            tracing::warn!(
                error = format!("{e:#}"),
                "could not read the commands waiting for agents"
            )
        }
        Err(_) => {}
    }
    for op in batch {
        match op {
            Presence::Online(o, reply) => {
                let answer = match &written {
                    Err(e) => Err(e.clone()),
                    Ok(()) => Ok(waiting_by_server.remove(&o.server_id).unwrap_or_default()),
                };
                let _ = reply.send(answer);
            }
            Presence::Offline(_, reply) => {
                let _ = reply.send(written.clone());
            }
            Presence::Touch { .. } | Presence::Refresh { .. } => {}
        }
    }
}

/// One transaction: `servers` then `agents`, each one `UPDATE … FROM UNNEST`.
async fn write_presence(
    state: &AppState,
    batch: &[Presence],
    last: &HashMap<Uuid, Final>,
) -> Result<(), Arc<anyhow::Error>> {
    if last.is_empty() {
        return Ok(());
    }
    // Sorted, for the statements' arrays; the lock order is the SELECT … FOR UPDATE's.
    let mut servers: Vec<(&Uuid, &Final)> = last.iter().collect();
    servers.sort_by_key(|(id, _)| **id);
    let (mut s_ids, mut s_online, mut s_version) = (Vec::new(), Vec::new(), Vec::new());
    for (id, fin) in servers {
        s_ids.push(*id);
        match fin {
            Final::Online(i) => {
                let Presence::Online(o, _) = &batch[*i] else {
                    unreachable!("an index of an online")
                };
                s_online.push(true);
                s_version.push(Some(o.version.as_str()));
            }
            Final::Offline => {
                s_online.push(false);
                s_version.push(None);
            }
            Final::Touch(_) => {
                s_online.push(true);
                s_version.push(None);
            }
        }
    }
    // Every connection's Hello reaches its agent row, even one whose server went offline
    // again within this batch (as the one-connection-at-a-time writes did); the last wins.
    let mut agents: HashMap<Uuid, Option<&Online>> = HashMap::new();
    for op in batch {
        if let Presence::Online(o, _) = op {
            agents.insert(o.agent_id, Some(o));
        }
    }
    for fin in last.values() {
        if let Final::Touch(agent) = fin {
            agents.entry(*agent).or_insert(None);
        }
    }
    let mut agents: Vec<(Uuid, Option<&Online>)> = agents.into_iter().collect();
    agents.sort_by_key(|(id, _)| *id);
    let a_ids: Vec<Uuid> = agents.iter().map(|(id, _)| *id).collect();
    let a_version: Vec<Option<&str>> = agents
        .iter()
        .map(|(_, o)| o.map(|o| o.version.as_str()))
        .collect();
    let a_host: Vec<Option<&str>> = agents
        .iter()
        .map(|(_, o)| o.map(|o| o.hostname.as_str()))
        .collect();
    let a_roles: Vec<Option<&str>> = agents
        .iter()
        .map(|(_, o)| o.map(|o| o.roles.as_str()))
        .collect();
    let result: anyhow::Result<()> = async {
        let mut tx = state.db.begin().await?;
        // Rows are locked in id order before they are written: an UPDATE … FROM UNNEST may
        // visit them in any order (a hash join), and two replicas' batches sharing a server
        // (an agent moving between them) would otherwise be able to deadlock.
        sqlx::query("SELECT 1 FROM servers WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&s_ids)
            .execute(&mut *tx)
            .await
            .context("lock the servers")?;
        sqlx::query(
            "UPDATE servers s
                SET agent_online = u.online,
                    agent_version = COALESCE(u.version, s.agent_version),
                    last_seen_at = now()
               FROM UNNEST($1::uuid[], $2::bool[], $3::text[]) AS u(id, online, version)
              WHERE s.id = u.id",
        )
        .bind(&s_ids)
        .bind(&s_online)
        .bind(&s_version)
        .execute(&mut *tx)
        .await
        .context("mark servers online/offline")?;
        if !a_ids.is_empty() {
            sqlx::query("SELECT 1 FROM agents WHERE id = ANY($1) ORDER BY id FOR UPDATE")
                .bind(&a_ids)
                .execute(&mut *tx)
                .await
                .context("lock the agents")?;
            sqlx::query(
                "UPDATE agents a
                    SET last_seen_at = now(),
                        version = COALESCE(u.version, a.version),
                        hostname = COALESCE(u.hostname, a.hostname),
                        roles = COALESCE(u.roles::server_role[], a.roles)
                   FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[])
                        AS u(id, version, hostname, roles)
                  WHERE a.id = u.id",
            )
            .bind(&a_ids)
            .bind(&a_version)
            .bind(&a_host)
            .bind(&a_roles)
            .execute(&mut *tx)
            .await
            .context("update agents")?;
        }
        tx.commit().await?;
        Ok(())
    }
    .await;
    result.map_err(|e| {
        tracing::warn!(
            error = format!("{e:#}"),
            servers = s_ids.len(),
            "presence update failed"
        );
        Arc::new(e)
    })
}

/// The commands waiting for every server that connected in this batch, oldest first.
async fn waiting_for(
    state: &AppState,
    batch: &[Presence],
) -> Result<Vec<Waiting>, Arc<anyhow::Error>> {
    let servers: Vec<Uuid> = batch
        .iter()
        .filter_map(|op| match op {
            Presence::Online(o, _) => Some(o.server_id),
            _ => None,
        })
        .collect();
    if servers.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT id, server_id, envelope FROM agent_commands
          WHERE completed_at IS NULL AND deadline_at > now() AND server_id = ANY($1)
          ORDER BY created_at",
    )
    .bind(&servers)
    .fetch_all(&state.db)
    .await
    .map_err(|e| Arc::new(anyhow::Error::new(e).context("read the commands waiting")))
}

/// One pipeline: the presence keys set (online, refresh) and deleted (offline), in order.
/// A Redis outage is logged, not fatal: PostgreSQL is the truth.
async fn redis_presence(state: &AppState, batch: &[Presence], last: &HashMap<Uuid, Final>) {
    let ttl = presence::ttl_secs(state);
    let now = Utc::now();
    let mut pipe = redis::pipe();
    let mut any = false;
    let value = |agent_id: Uuid, conn_id: u64, version: &str, at: DateTime<Utc>| {
        json!({
            "agentId": agent_id,
            "version": version,
            "connId": conn_id,
            "replica": state.fleet.replica,
            "lastSeenAt": at,
        })
        .to_string()
    };
    for op in batch {
        match op {
            Presence::Online(o, _) => {
                pipe.set_ex(
                    presence::presence_key(state, o.server_id),
                    value(o.agent_id, o.conn_id, &o.version, now),
                    ttl,
                )
                .ignore();
            }
            Presence::Refresh {
                server_id,
                agent_id,
                conn_id,
                version,
            } => {
                // A refresh queued before this batch's offline must not bring the key back.
                if matches!(last.get(server_id), Some(Final::Offline)) {
                    continue;
                }
                pipe.set_ex(
                    presence::presence_key(state, *server_id),
                    value(*agent_id, *conn_id, version, now),
                    ttl,
                )
                .ignore();
            }
            Presence::Offline(server, _) => {
                pipe.del(presence::presence_key(state, *server)).ignore();
            }
            Presence::Touch { .. } => continue,
        }
        any = true;
    }
    if !any {
        return;
    }
    let mut conn = state.redis.conn();
    let r: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
    if let Err(e) = r {
        tracing::debug!(error = %e, "presence: Redis unavailable");
    }
}

async fn metrics_batch(state: &AppState, batch: Vec<Sample>) {
    let now = Utc::now();
    let n = batch.len();
    let finite = |v: f64| v.is_finite().then_some(v as f32);
    let mut cols = MetricsColumns::with_capacity(n);
    for s in &batch {
        let m = &s.report;
        // An agent clock far from ours is replaced by ours, so a wrong clock cannot hide
        // samples from the history or the pruning.
        let at = if (m.collected_at - now).num_seconds().abs() > 300 {
            now
        } else {
            m.collected_at
        };
        cols.tenant.push(s.tenant_id);
        cols.server.push(s.server_id);
        cols.at.push(at);
        cols.cpu.push(finite(f64::from(m.cpu_percent)));
        cols.used
            .push(i64::try_from(m.memory_used_bytes).unwrap_or(i64::MAX));
        cols.total
            .push(i64::try_from(m.memory_total_bytes).unwrap_or(i64::MAX));
        cols.load1.push(finite(m.load1));
        cols.load5.push(finite(m.load5));
        cols.load15.push(finite(m.load15));
        cols.uptime
            .push(i64::try_from(m.uptime_secs).unwrap_or(i64::MAX));
        cols.disks
            .push(serde_json::to_value(&m.disks).unwrap_or_else(|_| json!([])));
        cols.services
            .push(serde_json::to_value(&m.services).unwrap_or_else(|_| json!({})));
    }
    let r = sqlx::query(
        "INSERT INTO server_metrics (tenant_id, server_id, collected_at, cpu_percent,
             memory_used_bytes, memory_total_bytes, load1, load5, load15, uptime_secs, disks,
             services)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[], $4::real[],
             $5::int8[], $6::int8[], $7::real[], $8::real[], $9::real[], $10::int8[],
             $11::jsonb[], $12::jsonb[])",
    )
    .bind(&cols.tenant)
    .bind(&cols.server)
    .bind(&cols.at)
    .bind(&cols.cpu)
    .bind(&cols.used)
    .bind(&cols.total)
    .bind(&cols.load1)
    .bind(&cols.load5)
    .bind(&cols.load15)
    .bind(&cols.uptime)
    .bind(&cols.disks)
    .bind(&cols.services)
    .execute(&state.db)
    .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, samples = n, "could not store metrics");
    }
}

struct MetricsColumns {
    tenant: Vec<Uuid>,
    server: Vec<Uuid>,
    at: Vec<DateTime<Utc>>,
    cpu: Vec<Option<f32>>,
    used: Vec<i64>,
    total: Vec<i64>,
    load1: Vec<Option<f32>>,
    load5: Vec<Option<f32>>,
    load15: Vec<Option<f32>>,
    uptime: Vec<i64>,
    disks: Vec<serde_json::Value>,
    services: Vec<serde_json::Value>,
}

impl MetricsColumns {
    fn with_capacity(n: usize) -> MetricsColumns {
        MetricsColumns {
            tenant: Vec::with_capacity(n),
            server: Vec::with_capacity(n),
            at: Vec::with_capacity(n),
            cpu: Vec::with_capacity(n),
            used: Vec::with_capacity(n),
            total: Vec::with_capacity(n),
            load1: Vec::with_capacity(n),
            load5: Vec::with_capacity(n),
            load15: Vec::with_capacity(n),
            uptime: Vec::with_capacity(n),
            disks: Vec::with_capacity(n),
            services: Vec::with_capacity(n),
        }
    }
}
