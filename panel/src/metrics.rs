//! The panel's figures for Prometheus, served as text at `GET /metrics` when `METRICS_TOKEN`
//! is set (with `Authorization: Bearer <token>`; compared in constant time).
//!
//! Counted where they happen (one [`Metrics`] per process, in `AppState`): HTTP requests by
//! route template (never the raw path: ids would make a series each), the hub's handshakes by
//! outcome, agent commands by kind and outcome with their round trip, jobs finished by type
//! and outcome with the wait between due and claimed. Read at scrape time: agents connected
//! to this process, commands it waits for, and the queue's depth (runnable, waiting for
//! another job) from PostgreSQL.

use std::time::Duration;

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::app::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
    pub outcome: &'static str,
}

type Timings<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    // 0.5 ms … ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The counters and histograms of one process.
pub struct Metrics {
    registry: Registry,
    pub http: Timings<RouteLabels>,
    pub handshakes: Family<OutcomeLabels, Counter>,
    pub commands: Timings<KindLabels>,
    pub jobs: Timings<KindLabels>,
    pub job_wait: Histogram,
    agents: Gauge,
    waiting: Gauge,
    runnable: Gauge,
    blocked: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mpanel");
        let http = Timings::<RouteLabels>::new_with_constructor(seconds as fn() -> Histogram);
        let commands = Timings::<KindLabels>::new_with_constructor(seconds as fn() -> Histogram);
        let jobs = Timings::<KindLabels>::new_with_constructor(seconds as fn() -> Histogram);
        let handshakes = Family::<OutcomeLabels, Counter>::default();
        let job_wait = Histogram::new(exponential_buckets(0.001, 2.0, 18));
        let (agents, waiting, runnable, blocked) = (
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP requests by method, route template and status",
            http.clone(),
        );
        registry.register(
            "agent_handshakes",
            "Agent connections by how their handshake ended (accepted, refused, failed, gated)",
            handshakes.clone(),
        );
        registry.register(
            "agent_command_duration_seconds",
            "Commands sent to agents from this process, by kind and outcome (ok, error, offline, timeout, unrecorded)",
            commands.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "Jobs run by this process's worker, by type and outcome (success, retry, failed)",
            jobs.clone(),
        );
        registry.register(
            "job_wait_seconds",
            "How long a job waited between becoming due and being claimed",
            job_wait.clone(),
        );
        registry.register(
            "agents_connected",
            "Agents holding a connection to this process",
            agents.clone(),
        );
        registry.register(
            "agent_commands_waiting",
            "Commands this process waits for",
            waiting.clone(),
        );
        registry.register(
            "jobs_runnable",
            "PENDING jobs that are due and wait for no other job (all processes)",
            runnable.clone(),
        );
        registry.register(
            "jobs_blocked",
            "PENDING jobs waiting for another job to succeed (all processes)",
            blocked.clone(),
        );
        Metrics {
            registry,
            http,
            handshakes,
            commands,
            jobs,
            job_wait,
            agents,
            waiting,
            runnable,
            blocked,
        }
    }

    pub fn handshake(&self, outcome: &'static str) {
        self.handshakes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn command(&self, kind: &str, outcome: &'static str, took: Duration) {
        self.commands
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
                outcome,
            })
            .observe(took.as_secs_f64());
    }

    pub fn job(&self, kind: &str, outcome: &'static str, took: Duration) {
        self.jobs
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
                outcome,
            })
            .observe(took.as_secs_f64());
    }

    /// The text exposition, after reading the gauges.
    async fn render(&self, state: &AppState) -> Result<String, std::fmt::Error> {
        self.agents.set(state.fleet.connected_count() as i64);
        self.waiting.set(state.fleet.waiting_count() as i64);
        let depth: Result<(i64, i64), sqlx::Error> = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE after_job_id IS NULL OR dep.status = 'SUCCESS'),
                    count(*) FILTER (WHERE after_job_id IS NOT NULL AND dep.status <> 'SUCCESS')
               FROM jobs j LEFT JOIN jobs dep ON dep.id = j.after_job_id
              WHERE j.status = 'PENDING' AND j.run_at <= now()",
        )
        .fetch_one(&state.db)
        .await;
        // Without the database the gauges keep their last value; the rest is still worth a scrape.
        if let Ok((runnable, blocked)) = depth {
            self.runnable.set(runnable);
            self.blocked.set(blocked);
        }
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// `GET /metrics`: 404 unless `METRICS_TOKEN` is set, 401 without it.
pub async fn scrape(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(token) = state.config.metrics_token.as_ref() else {
        return crate::http::error::ApiError::NotFound("route").into_response();
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !bool::from(presented.as_bytes().ct_eq(token.expose_secret().as_bytes())) {
        return crate::http::error::ApiError::Unauthorized("missing or wrong metrics token".into())
            .into_response();
    }
    match state.metrics.render(&state).await {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
