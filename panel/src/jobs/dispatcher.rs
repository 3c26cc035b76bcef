//! The dispatcher turns a claimed job into work on a server. The worker knows nothing of
//! servers: it hands each job to a `Dispatcher` and records the outcome. [`Fleet`] runs each
//! payload's own executor (its `JobKind::run`); [`Simulate`] pretends, for development;
//! [`Split`] simulates only the jobs `JOB_SIMULATE` names (the roles a development machine
//! has no server software for) and hands the rest to the fleet.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI32, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::payload::JobPayload;
use crate::{app::AppState, model::JobType};

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
    /// What this run holds of its worker, its active slot given back while it waits.
    pub slot: Slot,
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
            slot: Slot::default(),
        }
    }

    /// The same, holding `slot` for as long as it runs.
    pub fn holding(self, slot: Slot) -> JobToRun {
        JobToRun { slot, ..self }
    }

    /// Gives the job's active slot back while it waits for something outside (a turn at a
    /// server, an agent's answer) — unless its kind may hold a database connection across
    /// its commands: a DNS zone sync holds its zone's advisory lock, a pooled connection,
    /// until its command is answered (`dns::job`), and the lifecycle jobs that span several
    /// roles may run one. Those keep their slot, so the connections held that way stay
    /// bounded by `JOB_ACTIVE_MAX`, well within the pool.
    pub fn step_away(&self) -> Away<'_> {
        match JobRole::of(&self.payload) {
            Some(JobRole::Web | JobRole::Mail | JobRole::Backup | JobRole::Vps) => {
                self.slot.step_away()
            }
            Some(JobRole::Dns) | None => self.slot.stay(),
        }
    }

    /// The step number of the command about to be sent.
    pub fn next_step(&self) -> i32 {
        self.steps.fetch_add(1, Ordering::Relaxed)
    }
}

/// What a running job holds of its worker: one of its `WORKER_CONCURRENCY` places, until
/// the job ends, and one of its `JOB_ACTIVE_MAX` active slots while the job does work of its
/// own (database, hashing) — given back while it waits for something outside: its turn at
/// a server, its agent's answer ([`JobToRun::step_away`]). So jobs waiting on agents are many
/// and cheap, the work the panel itself does stays bounded, and a queue at one busy server
/// never holds the slots other servers' jobs need.
///
/// No wait here can close a cycle: a job waits for an active slot only while it holds no
/// turn (it steps away before taking one and comes back after giving it up), and a job that
/// holds a turn waits for nothing but its agent (a job that keeps its active slot may wait
/// for a turn in it; the turn's holders never wait for an active slot meanwhile).
#[derive(Default)]
pub struct Slot {
    /// The worker's place, held until the job ends (dropped with it).
    _place: Option<OwnedSemaphorePermit>,
    /// The active slot, while the job works.
    active: Mutex<Option<OwnedSemaphorePermit>>,
    /// Where active slots come from.
    actives: Option<Arc<Semaphore>>,
}

impl Slot {
    /// A job read under the worker's `place` and `active` slot (taken from `actives`).
    pub fn new(
        place: OwnedSemaphorePermit,
        active: OwnedSemaphorePermit,
        actives: Arc<Semaphore>,
    ) -> Slot {
        Slot {
            _place: Some(place),
            active: Mutex::new(Some(active)),
            actives: Some(actives),
        }
    }

    /// Keeps the active slot while the job waits ([`JobToRun::step_away`]).
    fn stay(&self) -> Away<'_> {
        Away {
            slot: self,
            had: false,
        }
    }

    /// Gives the active slot back while the job waits for something outside; the job takes
    /// one again with [`Away::back`] before it works again.
    fn step_away(&self) -> Away<'_> {
        let gave = self.active.lock().unwrap_or_else(|e| e.into_inner()).take();
        Away {
            slot: self,
            had: gave.is_some(),
        }
    }
}

/// A job away from its active slot ([`JobToRun::step_away`]).
#[must_use = "a job that stepped away comes back before it works again"]
pub struct Away<'a> {
    slot: &'a Slot,
    /// Whether it gave a slot back (an inner step of a job already away gives none).
    had: bool,
}

impl Away<'_> {
    /// Waits for an active slot again (at once when one is free).
    pub async fn back(self) {
        let Some(actives) = self.slot.actives.as_ref().filter(|_| self.had) else {
            return;
        };
        let permit = actives
            .clone()
            .acquire_owned()
            .await
            .expect("the worker's semaphore is never closed");
        *self.slot.active.lock().unwrap_or_else(|e| e.into_inner()) = Some(permit);
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
/// touching any server — for wiring up a marketing site or a staging panel. It waits as a
/// fleet job waits for its agent: away from its active slot, in its turn at the tenant's
/// server of the job's role when there is one (`JOB_MAX_PER_SERVER`); its result says which
/// server and when its pretend work began and ended.
pub struct Simulate {
    pub delay: Duration,
    state: AppState,
}

impl Dispatcher for Simulate {
    fn dispatch<'a>(&'a self, job: &'a JobToRun) -> DispatchFuture<'a> {
        Box::pin(async move {
            let server = match JobRole::of(&job.payload).and_then(JobRole::server_role) {
                Some(role) => super::agent::pick_server(&self.state, job.tenant_id, role)
                    .await?
                    .map(|(id, _)| id),
                None => None,
            };
            // Pretending to wait for an agent, as the fleet's jobs do: away from the slot.
            let away = job.step_away();
            let turn = match server {
                Some(server) => Some(super::agent::take_turn(&self.state, server).await),
                None => None,
            };
            let began = chrono::Utc::now();
            tokio::time::sleep(self.delay).await;
            let ended = chrono::Utc::now();
            drop(turn);
            away.back().await;
            Ok(json!({
                "simulated": true,
                "type": job.payload.job_type(),
                "serverId": server,
                "began": began,
                "ended": ended,
            }))
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

/// The server software a job needs, as `JOB_SIMULATE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobRole {
    Web,
    Dns,
    Mail,
    Backup,
    Vps,
}

impl JobRole {
    const ALL: [(&'static str, JobRole); 5] = [
        ("web", JobRole::Web),
        ("dns", JobRole::Dns),
        ("mail", JobRole::Mail),
        ("backup", JobRole::Backup),
        ("vps", JobRole::Vps),
    ];

    /// The `server_role` of the servers that run this role's jobs (none for VPS hosts yet).
    fn server_role(self) -> Option<&'static str> {
        match self {
            JobRole::Web => Some("WEB"),
            JobRole::Dns => Some("DNS"),
            JobRole::Mail => Some("MAIL"),
            JobRole::Backup => Some("DB"),
            JobRole::Vps => None,
        }
    }

    /// The one role whose server runs `payload`; `None` for a kind that spans several roles
    /// (or none), which only its job type can name in `JOB_SIMULATE`.
    pub fn of(payload: &JobPayload) -> Option<JobRole> {
        KINDS_OF_ROLE
            .iter()
            .find(|(_, kinds)| kinds.contains(&payload.kind()))
            .map(|(role, _)| *role)
    }
}

/// The job kinds (by tag) each role's server runs. A tag that is no kind (yet) never
/// matches; every kind must be named here or in the tests' `KINDS_OF_SEVERAL_ROLES`.
const KINDS_OF_ROLE: &[(JobRole, &[&str])] = &[
    (
        JobRole::Web,
        &[
            "orderSite",
            "createHostingAccount",
            "suspendSite",
            "unsuspendSite",
            "terminateSite",
            // The site's HTTPS certificate: the web agent runs the ACME order.
            "orderCertificate",
            "issueCertificate",
        ],
    ),
    (JobRole::Dns, &["orderZone", "syncZone"]),
    (
        JobRole::Mail,
        &[
            "orderMailbox",
            "createMailAccount",
            "resetMailPassword",
            "disableMailbox",
            "enableMailbox",
        ],
    ),
    (JobRole::Backup, &["runBackup"]),
    (JobRole::Vps, &["orderVps", "vpsAction"]),
];

/// One entry of `JOB_SIMULATE`: every job of a role, or every job of one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimulatedJobs {
    Role(JobRole),
    Type(JobType),
}

impl SimulatedJobs {
    fn covers(self, payload: &JobPayload) -> bool {
        match self {
            SimulatedJobs::Role(role) => JobRole::of(payload) == Some(role),
            SimulatedJobs::Type(kind) => payload.job_type() == kind,
        }
    }
}

/// Parses `JOB_SIMULATE`: comma-separated roles (`web`, `dns`, `mail`, `backup`, `vps`) or
/// job types (`PROVISION_DNS`, …).
pub fn parse_simulated(value: &str) -> Result<Vec<SimulatedJobs>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            if let Some((_, role)) = JobRole::ALL.iter().find(|(name, _)| *name == item) {
                return Ok(SimulatedJobs::Role(*role));
            }
            serde_json::from_value::<JobType>(Value::String(item.to_owned()))
                .map(SimulatedJobs::Type)
                .map_err(|_| {
                    format!(
                        "'{item}' is neither a role (web, dns, mail, backup, vps) nor a job \
                         type (e.g. PROVISION_DNS)"
                    )
                })
        })
        .collect()
}

/// `JOB_SIMULATE=…` beside the fleet: the jobs it names are simulated, the rest run for real.
pub struct Split {
    simulated: Vec<SimulatedJobs>,
    simulate: Simulate,
    fleet: Fleet,
}

impl Dispatcher for Split {
    fn dispatch<'a>(&'a self, job: &'a JobToRun) -> DispatchFuture<'a> {
        if self.simulated.iter().any(|s| s.covers(&job.payload)) {
            self.simulate.dispatch(job)
        } else {
            self.fleet.dispatch(job)
        }
    }
}

/// The dispatcher the configuration asks for.
pub fn for_state(state: &AppState) -> std::sync::Arc<dyn Dispatcher> {
    let cfg = &state.config.jobs;
    let simulate = Simulate {
        delay: cfg.simulate_delay,
        state: state.clone(),
    };
    let fleet = Fleet {
        state: state.clone(),
    };
    match cfg.dispatcher {
        crate::config::DispatcherKind::Fleet if cfg.simulate.is_empty() => {
            std::sync::Arc::new(fleet)
        }
        crate::config::DispatcherKind::Fleet => {
            tracing::warn!(
                simulated = ?cfg.simulate,
                "JOB_SIMULATE: these jobs only pretend to run (development only)"
            );
            std::sync::Arc::new(Split {
                simulated: cfg.simulate.clone(),
                simulate,
                fleet,
            })
        }
        crate::config::DispatcherKind::Simulate => std::sync::Arc::new(simulate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The job kinds no single role runs: a subscription's lifecycle steps act on its site,
    /// its mailboxes and its zone at once. `JOB_SIMULATE` can name them only by job type.
    const KINDS_OF_SEVERAL_ROLES: &[&str] = &[
        "suspendSubscription",
        "unsuspendSubscription",
        "terminateSubscription",
    ];

    #[test]
    fn job_simulate_takes_roles_and_job_types() {
        assert_eq!(
            parse_simulated(" dns, mail ,PROVISION_HOSTING,").unwrap(),
            [
                SimulatedJobs::Role(JobRole::Dns),
                SimulatedJobs::Role(JobRole::Mail),
                SimulatedJobs::Type(JobType::ProvisionHosting),
            ]
        );
        assert!(parse_simulated("").unwrap().is_empty());
        let err = parse_simulated("dns,ftp").unwrap_err();
        assert!(
            err.contains("'ftp'") && err.contains("PROVISION_DNS"),
            "{err}"
        );
    }

    #[test]
    fn every_job_kind_has_its_role_or_is_known_to_span_several() {
        let named: Vec<&str> = KINDS_OF_ROLE
            .iter()
            .flat_map(|(_, kinds)| kinds.iter().copied())
            .chain(KINDS_OF_SEVERAL_ROLES.iter().copied())
            .collect();
        for kind in JobPayload::KINDS {
            assert!(
                named.contains(kind),
                "job kind '{kind}': add it to KINDS_OF_ROLE (the role whose server runs it) or \
                 KINDS_OF_SEVERAL_ROLES (tests of jobs/dispatcher.rs), so JOB_SIMULATE knows it"
            );
        }
    }
}
