//! The fleet's notifications, in every panel process (`serve` and each `worker`): one
//! `LISTEN` connection of its own (not from the request pool) on [`CHANNEL`].
//!
//! - `cmd <server> <id>`: a command waits; when this process holds `server`'s agent, it
//!   reads the row and writes the command to the connection.
//! - `res <id>`: an outcome was stored; when this process waits for `id`, it reads it.
//! - `close <agent|-> <serial,…>`: an agent was revoked elsewhere; its connections here are
//!   closed and its serials refused from now on.
//!
//! Notifications can be missed (the listening connection drops, PostgreSQL restarts), so
//! every [`LOOK_EVERY`] — and at once after a reconnect — the same work is done from the
//! rows: waiting commands of agents held here, outcomes of commands waited for here.

use std::time::Duration;

use mpanel_protocol::messages::Outcome;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    commands::{self, CHANNEL},
    route::{open_envelope, open_outcome},
};
use crate::app::AppState;

/// How often the rows are looked at, whatever the notifications said.
pub const LOOK_EVERY: Duration = Duration::from_secs(2);

/// Listens until `shutdown`, reconnecting as needed.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let mut look = tokio::time::interval(LOOK_EVERY);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut listener = match listen(&state).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "fleet notifications unavailable; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        look_at_rows(&state).await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = look.tick() => look_at_rows(&state).await,
                n = listener.try_recv() => match n {
                    Ok(Some(n)) => on_notification(&state, n.payload()),
                    // The connection was lost and is re-established on the next call:
                    // whatever was said meanwhile is in the rows.
                    Ok(None) => look_at_rows(&state).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "fleet notifications lost; reconnecting");
                        break;
                    }
                },
            }
        }
    }
}

async fn listen(state: &AppState) -> sqlx::Result<PgListener> {
    // Its own connection: a LISTEN holds one for good.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with((*state.db.connect_options()).clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

fn on_notification(state: &AppState, payload: &str) {
    let mut words = payload.split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some("cmd"), Some(server), Some(id)) => {
            let (Ok(server), Ok(id)) = (server.parse::<Uuid>(), id.parse::<Uuid>()) else {
                return;
            };
            if state.fleet.is_connected(server) {
                let state = state.clone();
                tokio::spawn(async move { deliver_rows(&state, vec![(id, server)]).await });
            }
        }
        (Some("res"), Some(id), None) => {
            let Ok(id) = id.parse::<Uuid>() else { return };
            if state.fleet.is_waiting(id) {
                let state = state.clone();
                tokio::spawn(async move { collect(&state, vec![id]).await });
            }
        }
        (Some("close"), Some(agent), Some(serials)) => {
            let agent = agent.parse::<Uuid>().ok();
            let serials: Vec<String> = serials
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            state.fleet.revoked.insert_all(serials.iter().cloned());
            state.fleet.disconnect(agent, &serials, "revoked");
        }
        _ => tracing::debug!(payload, "unknown fleet notification"),
    }
}

/// Tells every panel process to close the connections of a revoked agent.
pub async fn announce_revocation(
    db: impl sqlx::PgExecutor<'_>,
    agent: Option<Uuid>,
    serials: &[String],
) -> sqlx::Result<()> {
    let agent = agent.map_or_else(|| "-".to_owned(), |a| a.to_string());
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(format!("close {agent} {}", serials.join(",")))
        .execute(db)
        .await?;
    Ok(())
}

/// The periodic look (and the one after a reconnect).
async fn look_at_rows(state: &AppState) {
    let waited = state.fleet.waiting_ids();
    if !waited.is_empty() {
        collect(state, waited).await;
    }
    if state.fleet.connected_count() == 0 {
        return;
    }
    match commands::waiting(&state.db, None).await {
        Ok(rows) => {
            let rows = state
                .fleet
                .unsent_here(rows.into_iter().map(|r| (r.id, r.server_id)).collect());
            if !rows.is_empty() {
                deliver_rows(state, rows).await;
            }
        }
        Err(e) => tracing::debug!(error = %e, "could not look for waiting commands"),
    }
}

/// Reads these commands and writes each to its agent's connection here.
async fn deliver_rows(state: &AppState, rows: Vec<(Uuid, Uuid)>) {
    let mut delivered = Vec::new();
    for (id, server) in rows {
        let row = match commands::waiting_one(&state.db, id).await {
            Ok(Some(row)) if row.server_id == server => row,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "could not read a waiting command");
                continue;
            }
        };
        match open_envelope(state, &row.envelope) {
            Ok(envelope) => {
                if state.fleet.deliver(server, &envelope) {
                    tracing::debug!(server_id = %server, command_id = %id, "command sent for another process");
                    delivered.push(id);
                }
            }
            Err(reason) => fail_unreadable(state, server, id, &reason).await,
        }
    }
    if !delivered.is_empty() {
        let _ = commands::mark_delivered(&state.db, &delivered).await;
    }
}

/// A row this process cannot open: its sender is told why instead of waiting in vain.
pub async fn fail_unreadable(state: &AppState, server: Uuid, id: Uuid, reason: &str) {
    tracing::error!(server_id = %server, command_id = %id, "{reason}");
    let outcome = Outcome::error("panel_misconfigured", reason, false);
    if let Ok(bytes) = serde_json::to_vec(&outcome) {
        let _ = commands::complete(&state.db, server, id, state.sealer.seal(&bytes), false).await;
    }
}

/// Reads the stored outcomes of these commands and hands them to their senders here.
async fn collect(state: &AppState, ids: Vec<Uuid>) {
    match commands::outcomes(&state.db, &ids).await {
        Ok(found) => {
            for (id, sealed) in found {
                let outcome = open_outcome(state, &sealed).unwrap_or_else(|e| {
                    Outcome::error("panel_misconfigured", &e.to_string(), false)
                });
                state.fleet.resolve(id, outcome);
            }
        }
        Err(e) => tracing::debug!(error = %e, "could not read command outcomes"),
    }
}
