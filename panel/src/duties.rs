//! The periodic duties of every panel process — `serve` (whatever `RUN_WORKER` says) and
//! each standalone `worker` — and how each stays right with any number of processes:
//!
//! | duty | where | why it is safe |
//! |---|---|---|
//! | queue sweeper (push due jobs, recover lost leases) | everywhere | row locks `FOR UPDATE SKIP LOCKED`; a job pushed twice still runs once (the claim decides) |
//! | subscription lifecycle dates (period end, warning, suspension, termination) | everywhere | `FOR UPDATE SKIP LOCKED` batches; each step moves the date that selected it in the same transaction |
//! | site certificates expiring unrenewed (e-mail to the tenant's admins) | everywhere | `FOR UPDATE SKIP LOCKED` batches; the serial warned of is kept in the same transaction |
//! | e-mail outbox | everywhere | one row lock per message, held until its outcome is recorded |
//! | fleet notifications ([`router`]) | everywhere | each process acts only for the agents it holds and the commands it waits for |
//!
//! The fleet's own duties run with each replica's hub, in `fleet::presence::maintenance`: the
//! revoked-serial reload (a cache per process, so everywhere), stale presence (idempotent,
//! everywhere) and the pruning of metrics and finished commands (elected: one replica at a
//! time under an advisory lock, as the deletes would only wait on each other).

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    app::AppState, fleet::router, hosting::tls, jobs::sweeper, notify, subscriptions::expiry,
};

/// Starts the duties on `tracker`; they stop when `shutdown` is cancelled.
pub fn spawn(tracker: &TaskTracker, state: &AppState, shutdown: &CancellationToken) {
    tracker.spawn(sweeper::run(state.clone(), shutdown.clone()));
    tracker.spawn(expiry::run(state.clone(), shutdown.clone()));
    tracker.spawn(tls::expiry::run(state.clone(), shutdown.clone()));
    tracker.spawn(notify::run_outbox(state.clone(), shutdown.clone()));
    // Not a duty but as needed in every process: commands to and from agents held elsewhere.
    tracker.spawn(router::run(state.clone(), shutdown.clone()));
}
