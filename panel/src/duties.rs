//! The periodic duties of every panel process — `serve` (whatever `RUN_WORKER` says) and
//! each standalone `worker`: the queue's sweeper, subscription expiry and the e-mail
//! outbox. Each is safe to run in any number of processes at once (row locks taken with
//! `FOR UPDATE SKIP LOCKED`, claims decided in PostgreSQL), so none is elected.
//!
//! The fleet's own duties (metrics pruning, the revoked-serial reload, stale presence) run
//! with the hub, in `fleet::presence::maintenance`.

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{app::AppState, jobs::sweeper, notify, subscriptions::expiry};

/// Starts the duties on `tracker`; they stop when `shutdown` is cancelled.
pub fn spawn(tracker: &TaskTracker, state: &AppState, shutdown: &CancellationToken) {
    tracker.spawn(sweeper::run(state.clone(), shutdown.clone()));
    tracker.spawn(expiry::run(state.clone(), shutdown.clone()));
    tracker.spawn(notify::run_outbox(state.clone(), shutdown.clone()));
}
