//! The dispatcher turns a claimed job into work on a server. The worker knows nothing of
//! servers: it hands each job to a `Dispatcher` and records the outcome. The agent fleet
//! implements the real one; until a panel has it, jobs wait and retry.

use std::{future::Future, pin::Pin, time::Duration};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::model::JobType;

pub struct JobToRun {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub kind: JobType,
    pub payload: Value,
    pub attempt: i32,
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
            Ok(json!({ "simulated": true, "type": job.kind }))
        })
    }
}

/// The dispatcher the configuration asks for.
pub fn for_state(state: &crate::app::AppState) -> std::sync::Arc<dyn Dispatcher> {
    let cfg = &state.config.jobs;
    match cfg.dispatcher {
        crate::config::DispatcherKind::Fleet => {
            std::sync::Arc::new(crate::provisioning::FleetDispatcher::new(state.clone()))
        }
        crate::config::DispatcherKind::Simulate => std::sync::Arc::new(Simulate {
            delay: cfg.simulate_delay,
        }),
    }
}
