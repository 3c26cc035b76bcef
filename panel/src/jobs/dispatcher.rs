//! The dispatcher turns a claimed job into work on a server. The worker knows nothing of
//! servers: it hands each job to a `Dispatcher` and records the outcome. [`Fleet`] runs each
//! payload's own executor (its `JobKind::run`); [`Simulate`] pretends, for development.

use std::{
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicI32, Ordering},
    time::Duration,
};

use serde_json::{Value, json};
use uuid::Uuid;

use super::payload::JobPayload;
use crate::app::AppState;

/// A claimed job, its payload decoded.
pub struct JobToRun {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub order_id: Option<Uuid>,
    pub payload: JobPayload,
    pub attempt: i32,
    /// Commands sent so far in this run: the step number of the next one
    /// (`fleet::route` reuses an earlier run's command of the same step).
    pub steps: AtomicI32,
}

impl JobToRun {
    pub fn new(
        id: Uuid,
        tenant_id: Uuid,
        order_id: Option<Uuid>,
        payload: JobPayload,
        attempt: i32,
    ) -> JobToRun {
        JobToRun {
            id,
            tenant_id,
            order_id,
            payload,
            attempt,
            steps: AtomicI32::new(0),
        }
    }

    /// The step number of the command about to be sent.
    pub fn next_step(&self) -> i32 {
        self.steps.fetch_add(1, Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// Worth another attempt later (server offline, timeout, busy).
    #[error("{0}")]
    Retryable(String),
    /// Will fail the same way again (bad payload, unsupported on that server).
    #[error("{0}")]
    Permanent(String),
}

pub type DispatchFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Value, DispatchError>> + Send + 'a>>;

pub trait Dispatcher: Send + Sync + 'static {
    fn dispatch<'a>(&'a self, job: &'a JobToRun) -> DispatchFuture<'a>;
}

/// `JOB_DISPATCHER=simulate` (development only): each job "succeeds" after a delay without
/// touching any server — for wiring up a marketing site or a staging panel.
pub struct Simulate {
    pub delay: Duration,
}

impl Dispatcher for Simulate {
    fn dispatch<'a>(&'a self, job: &'a JobToRun) -> DispatchFuture<'a> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            Ok(json!({ "simulated": true, "type": job.payload.job_type() }))
        })
    }
}

/// `JOB_DISPATCHER=fleet`: each job's executor, which sends its commands to the agents.
pub struct Fleet {
    state: AppState,
}

impl Dispatcher for Fleet {
    fn dispatch<'a>(&'a self, job: &'a JobToRun) -> DispatchFuture<'a> {
        Box::pin(job.payload.run(&self.state, job))
    }
}

/// The dispatcher the configuration asks for.
pub fn for_state(state: &AppState) -> std::sync::Arc<dyn Dispatcher> {
    let cfg = &state.config.jobs;
    match cfg.dispatcher {
        crate::config::DispatcherKind::Fleet => std::sync::Arc::new(Fleet {
            state: state.clone(),
        }),
        crate::config::DispatcherKind::Simulate => std::sync::Arc::new(Simulate {
            delay: cfg.simulate_delay,
        }),
    }
}
