//! The sweeper repairs what the queue can lose, from PostgreSQL's truth, in every panel
//! process (`crate::duties`):
//! - jobs that never reached Redis (down at commit) or whose messages Redis lost, and
//!   retries that became due, are pushed to the stream;
//! - jobs whose worker died (lease expired) go back to PENDING.
//!
//! Several sweepers may run: row locks with SKIP LOCKED keep them from doing the same work,
//! and a job pushed twice is still run once (the claim in PostgreSQL decides).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{queue, store};
use crate::{app::AppState, util::pause};

/// A pushed job not taken within this long is pushed again (Redis may have lost it).
const REPUSH_AFTER: Duration = Duration::from_secs(120);
const BATCH: i64 = 200;

pub async fn run(state: AppState, shutdown: CancellationToken) {
    let every = state.config.jobs.sweep_interval;
    loop {
        if let Err(e) = sweep(&state).await {
            tracing::warn!(error = format!("{e:#}"), "sweep failed; trying again");
        }
        if pause(&shutdown, every).await {
            return;
        }
    }
}

pub async fn sweep(state: &AppState) -> anyhow::Result<()> {
    recover_lost(state).await?;
    push_due(state).await?;
    Ok(())
}

async fn recover_lost(state: &AppState) -> anyhow::Result<()> {
    let lost = store::recover_expired(&state.db, BATCH).await?;
    if lost > 0 {
        tracing::warn!(jobs = lost, "recovered jobs of lost workers");
    }
    Ok(())
}

async fn push_due(state: &AppState) -> anyhow::Result<()> {
    let pushed = store::push_due(&state.db, REPUSH_AFTER, BATCH, |due| {
        let redis = state.redis.clone();
        async move { queue::push(&redis, &due).await }
    })
    .await?;
    if pushed > 0 {
        tracing::info!(jobs = pushed, "pushed due jobs to the queue");
    }
    Ok(())
}
