//! A worker: takes job ids from the stream, claims each job in PostgreSQL, runs it through
//! the dispatcher while renewing its lease, records the outcome, acknowledges the message.
//! Runs inside `mpanel serve` and alone as `mpanel worker`; any number may run at once.
//!
//! It reads a job when it has both a free place (`WORKER_CONCURRENCY`: jobs claimed at once,
//! most of them waiting on agents, which costs a task and no database connection) and a
//! free active slot (`JOB_ACTIVE_MAX`: jobs doing work of the panel's own — database,
//! hashing — at once). A job gives its active slot back while it waits for its turn at a
//! server (`JOB_MAX_PER_SERVER`) and for its agent's answer ([`JobToRun::step_away`]; a job
//! that may hold a database connection meanwhile keeps it).
//!
//! **An order's next step runs next.** When a job succeeds, the dependants it released (an
//! order's zone after its site) are pushed to the stream and also run at once by the same
//! worker, as soon as it has a place and an active slot, instead of behind every job the
//! burst queued before them. The stream's copy stays the safety net (a worker that dies, a
//! shutdown): read later, it finds the job done or held and is acknowledged.

use std::{sync::Arc, time::Duration};

use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use super::{
    dispatcher::{DispatchError, Dispatcher, JobToRun, Slot},
    payload::JobPayload,
    queue::{self, Delivery},
    store::{self, Failure},
};
use crate::{app::AppState, util::pause};

/// What a job's task needs to go on with the jobs it released.
#[derive(Clone)]
struct Ctx {
    places: Arc<Semaphore>,
    actives: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Cancelled when the shutdown timeout passes with jobs still running.
    abort: CancellationToken,
}

impl Ctx {
    /// A place and an active slot, as the read loop takes them; `None` at shutdown.
    async fn slot(&self) -> Option<Slot> {
        let place = tokio::select! {
            p = self.places.clone().acquire_owned() => p.ok()?,
            _ = self.shutdown.cancelled() => return None,
        };
        let active = tokio::select! {
            p = self.actives.clone().acquire_owned() => p.ok()?,
            _ = self.shutdown.cancelled() => return None,
        };
        Some(Slot::new(place, active, self.actives.clone()))
    }
}

/// How long one read waits on the stream before looking around again.
const READ_BLOCK: Duration = Duration::from_secs(2);

pub struct Worker {
    state: AppState,
    dispatcher: Arc<dyn Dispatcher>,
    /// Unique per process: the consumer name in Redis and the lock holder in PostgreSQL.
    id: String,
}

impl Worker {
    pub fn new(state: AppState, dispatcher: Arc<dyn Dispatcher>) -> Worker {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
        let id = format!(
            "{host}-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Worker {
            state,
            dispatcher,
            id,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs until `shutdown`; then waits (up to the shutdown timeout) for running jobs.
    /// Jobs still running after that keep their lease and are taken over once it expires.
    pub async fn run(self, shutdown: CancellationToken) {
        let cfg = self.state.config.jobs.clone();
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(cfg.concurrency));
        let active_max = cfg.active_max.min(cfg.concurrency);
        let actives = Arc::new(Semaphore::new(active_max));
        let this = Arc::new(self);
        // Cancelled when the shutdown timeout passes with jobs still running.
        let abort = CancellationToken::new();
        tracing::info!(
            worker = %this.id,
            concurrency = cfg.concurrency,
            active_max,
            max_per_server = cfg.max_per_server,
            "worker started"
        );
        let mut group_ready = false;
        let ctx = Ctx {
            places: permits.clone(),
            actives: actives.clone(),
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
            abort: abort.clone(),
        };

        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
                _ = shutdown.cancelled() => break,
            };
            let active = tokio::select! {
                p = actives.clone().acquire_owned() => p.expect("semaphore is never closed"),
                _ = shutdown.cancelled() => break,
            };
            if !group_ready {
                match queue::ensure_group(&this.state.redis).await {
                    Ok(()) => group_ready = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "job queue unavailable (Redis); retrying");
                        if pause(&shutdown, Duration::from_secs(1)).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let next = tokio::select! {
                n = queue::next(&this.state.redis, &this.id, cfg.lease, READ_BLOCK) => n,
                _ = shutdown.cancelled() => break,
            };
            match next {
                Ok(Some(delivery)) => {
                    let worker = this.clone();
                    let ctx = ctx.clone();
                    let slot = Slot::new(permit, active, actives.clone());
                    tracker.spawn(async move {
                        worker.handle(delivery, slot, ctx).await;
                    });
                }
                Ok(None) => drop((permit, active)),
                Err(e) => {
                    drop((permit, active));
                    // NOGROUP: Redis restarted without its data; recreate the group, and have
                    // the sweeper push again, now, the pending jobs whose messages were lost.
                    group_ready = e.code() != Some("NOGROUP");
                    if !group_ready {
                        match store::forget_enqueued(&this.state.db).await {
                            Ok(jobs) => tracing::warn!(
                                jobs,
                                "the job stream was lost (Redis restarted empty); pending jobs will be pushed again"
                            ),
                            Err(cause) => {
                                tracing::warn!(error = %cause, "could not mark pending jobs for pushing again")
                            }
                        }
                    }
                    tracing::warn!(error = %e, "reading the job queue failed; retrying");
                    if pause(&shutdown, Duration::from_secs(1)).await {
                        break;
                    }
                }
            }
        }

        tracing::info!(worker = %this.id, "worker stopping: waiting for running jobs");
        tracker.close();
        // Most of the timeout for the jobs to finish; the rest to hand back those that did
        // not (a job waiting on an agent nobody can reach would hold the process for its
        // whole command deadline).
        let grace = this.state.config.shutdown_timeout;
        let hand_back_time = (grace / 5).clamp(Duration::from_millis(200), Duration::from_secs(3));
        if tokio::time::timeout(grace.saturating_sub(hand_back_time), tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("jobs still running at shutdown; handing them back to other workers");
            abort.cancel();
            if tokio::time::timeout(hand_back_time, tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!("jobs could not be handed back in time; their leases will expire");
            }
        }
    }

    /// Runs the delivered job holding `slot` (given back once it is done), acknowledges, and
    /// goes on with the dependants it released.
    async fn handle(self: Arc<Self>, delivery: Delivery, slot: Slot, ctx: Ctx) {
        let mut released = Vec::new();
        if let Some(job_id) = delivery.job_id {
            match self
                .run_traced(job_id, Some(&delivery.message_id), slot, &ctx.abort)
                .await
            {
                Some(ids) => released = ids,
                // Not acknowledged: the message is reclaimed after the lease, and the
                // sweeper recovers the row either way.
                None => return,
            }
        }
        if let Err(e) = queue::ack(&self.state.redis, &delivery.message_id).await {
            tracing::warn!(error = %e, "could not acknowledge a job message; it may be seen again");
        }
        self.go_on(released, &ctx);
    }

    /// Runs each released dependant in a task of its own once a place and an active slot
    /// are free; during shutdown they are left to the stream.
    fn go_on(self: &Arc<Self>, released: Vec<uuid::Uuid>, ctx: &Ctx) {
        for job_id in released {
            if ctx.shutdown.is_cancelled() {
                return;
            }
            let (worker, ctx2) = (self.clone(), ctx.clone());
            ctx.tracker.spawn(async move {
                let Some(slot) = ctx2.slot().await else {
                    return;
                };
                if let Some(next) = worker.run_traced(job_id, None, slot, &ctx2.abort).await {
                    worker.go_on(next, &ctx2);
                }
            });
        }
    }

    /// [`Worker::run_job`] in the job's span; `None` when its bookkeeping failed (logged).
    async fn run_traced(
        &self,
        job_id: uuid::Uuid,
        message_id: Option<&str>,
        slot: Slot,
        abort: &CancellationToken,
    ) -> Option<Vec<uuid::Uuid>> {
        let span = tracing::info_span!("job", job_id = %job_id, worker = %self.id);
        match self
            .run_job(job_id, message_id, slot, abort)
            .instrument(span)
            .await
        {
            Ok(released) => Some(released),
            Err(e) => {
                tracing::error!(job_id = %job_id, error = format!("{e:#}"), "job bookkeeping failed");
                None
            }
        }
    }

    /// Claims and runs one job; returns the dependants its success released.
    async fn run_job(
        &self,
        job_id: uuid::Uuid,
        message_id: Option<&str>,
        slot: Slot,
        abort: &CancellationToken,
    ) -> anyhow::Result<Vec<uuid::Uuid>> {
        let cfg = &self.state.config.jobs;
        let state = &self.state;
        let Some(job) = store::claim(&state.db, job_id, &self.id, cfg.lease).await? else {
            tracing::debug!("not ours to run (done, not due, or held by a live worker)");
            return Ok(Vec::new());
        };
        if job.attempts > job.max_attempts {
            // Its workers kept dying mid-job: stop feeding it to new ones.
            let error = "gave up: workers were lost while running this job";
            store::fail(state, &job, &self.id, error, None).await?;
            return Ok(Vec::new());
        }
        let payload = match JobPayload::from_stored(job.kind, job.payload.clone()) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::error!(error = %e, "job payload is not valid; failing it");
                store::fail(state, &job, &self.id, &e.to_string(), None).await?;
                return Ok(Vec::new());
            }
        };
        tracing::info!(kind = payload.kind(), attempt = job.attempts, "job started");

        let waited = (chrono::Utc::now() - job.run_at)
            .to_std()
            .unwrap_or_default();
        state.metrics.job_wait.observe(waited.as_secs_f64());
        let started = std::time::Instant::now();
        let keeper = self.keep_lease(job.id, message_id.map(str::to_owned));
        let to_run =
            JobToRun::new(job.id, job.tenant_id, job.order_id, payload, job.attempts).holding(slot);
        let outcome = tokio::select! {
            outcome = self.dispatcher.dispatch(&to_run) => outcome,
            _ = abort.cancelled() => {
                keeper.cancel();
                // Its commands stay in `agent_commands`: the next run sends them again under
                // the same ids, so an agent that already acted answers from its journal.
                if store::hand_back(&state.db, job.id, job.tenant_id, &self.id).await? {
                    tracing::warn!("job handed back at shutdown");
                    if let Err(e) = queue::push(&state.redis, &[job.id]).await {
                        tracing::debug!(error = %e, "could not push the handed-back job; the sweeper will");
                    }
                }
                return Ok(Vec::new());
            }
        };
        keeper.cancel();
        let kind = to_run.payload.kind();
        let outcome_label = match &outcome {
            Ok(_) => "success",
            Err(DispatchError::Retryable(_)) if job.attempts < job.max_attempts => "retry",
            Err(_) => "failed",
        };
        state.metrics.job(kind, outcome_label, started.elapsed());

        match outcome {
            Ok(result) => match store::succeed(state, &job, &to_run, &self.id, result).await? {
                Some(released) => {
                    tracing::info!(kind = to_run.payload.kind(), "job succeeded");
                    return Ok(released);
                }
                None => tracing::warn!("job finished after its lease was lost; result discarded"),
            },
            Err(err) => {
                let retry_in = match &err {
                    DispatchError::Retryable(_) => {
                        Some(store::backoff(cfg.retry_base, cfg.retry_max, job.attempts))
                    }
                    DispatchError::Permanent(_) => None,
                };
                match store::fail(state, &job, &self.id, &err.to_string(), retry_in).await? {
                    Some(Failure::Retrying(d)) => {
                        tracing::warn!(error = %err, retry_in_secs = d.as_secs_f64(), "job attempt failed")
                    }
                    Some(Failure::Failed) => tracing::error!(error = %err, "job failed"),
                    None => tracing::warn!("job failed after its lease was lost"),
                }
            }
        }
        Ok(Vec::new())
    }

    /// Renews the job's lease in PostgreSQL and its message's idle time in Redis at a third
    /// of the lease, until cancelled.
    fn keep_lease(&self, job_id: uuid::Uuid, message_id: Option<String>) -> CancellationToken {
        let stop = CancellationToken::new();
        let (state, worker, guard) = (self.state.clone(), self.id.clone(), stop.clone());
        let lease = state.config.jobs.lease;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease / 3);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = guard.cancelled() => return,
                }
                match store::extend_lease(&state.db, job_id, &worker, lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(%job_id, "lease lost to another worker");
                        return;
                    }
                    Err(e) => tracing::warn!(%job_id, error = %e, "could not renew lease"),
                }
                if let Some(message_id) = &message_id {
                    let _ = queue::touch(&state.redis, &worker, message_id).await;
                }
            }
        });
        stop
    }
}
