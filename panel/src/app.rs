//! Building and running the panel: connect to PostgreSQL and Redis, migrate, bind, serve
//! until SIGTERM/SIGINT, then drain in-flight requests within `SHUTDOWN_TIMEOUT`.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    auth::tokens::TokenKeys,
    config::Config,
    db, duties,
    fleet::{Fleet, ca::CertificateAuthority, hub::Hub},
    http, jobs,
    redis::Redis,
    secrets::Sealer,
};

/// What every handler and background task shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: PgPool,
    pub redis: Redis,
    pub tokens: Arc<TokenKeys>,
    /// The fleet's certificate authority, created on the panel's first start.
    pub ca: Arc<CertificateAuthority>,
    /// The agents connected to this panel and the commands waiting for them.
    pub fleet: Arc<Fleet>,
    /// Seals credentials waiting for a welcome e-mail and queued e-mail bodies
    /// (`CREDENTIALS_KEY`).
    pub sealer: Arc<Sealer>,
    /// This process's figures for `GET /metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl AppState {
    /// Connects to both stores; migrates when configured to.
    pub async fn connect(config: Config) -> anyhow::Result<AppState> {
        let db = db::connect(&config.database).await?;
        if config.database.migrate_on_start {
            db::migrate(&db).await?;
        }
        let redis = Redis::new(&config.redis)?;
        if let Err(e) = redis.ping().await {
            // Not fatal: PostgreSQL is the truth and work is re-queued once Redis is back.
            tracing::warn!(error = %e, "Redis is not reachable yet; continuing");
        }
        let fleet = config.fleet.clone();
        let ca = tokio::task::spawn_blocking(move || {
            CertificateAuthority::load_or_create(&fleet.ca_cert_path, &fleet.ca_key_path)
        })
        .await
        .context("loading the fleet CA")?
        .context("the fleet certificate authority (CA_CERT_PATH, CA_KEY_PATH)")?;
        Ok(AppState {
            ca: Arc::new(ca),
            fleet: Arc::new(Fleet::new()),
            tokens: Arc::new(TokenKeys::new(&config.jwt)),
            sealer: Arc::new(Sealer::from_config(config.credentials_key.as_ref())),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            config: Arc::new(config),
            db,
            redis,
        })
    }
}

pub struct Application {
    listener: TcpListener,
    hub: Hub,
    state: AppState,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let addr = SocketAddr::new(config.http.host, config.http.port);
        let mut state = AppState::connect(config).await?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (HOST/PORT)"))?;
        let hub = Hub::bind(&state).await?;
        // Before anything else holds the configuration: with PORT=0 or AGENT_LISTEN_ADDR=…:0
        // the default APP_URL and AGENT_PUBLIC_URL carry port 0 until the OS has picked one.
        let http_addr = listener
            .local_addr()
            .context("the HTTP listener's address")?;
        let mut config = (*state.config).clone();
        bound_ports(&mut config, http_addr, hub.local_addr());
        state.config = Arc::new(config);
        Ok(Application {
            listener,
            hub,
            state,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then gives in-flight requests
    /// `SHUTDOWN_TIMEOUT` to finish.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let grace = self.state.config.shutdown_timeout;
        let router = http::router(self.state.clone());
        tracing::info!(addr = %addr, "http listening");
        let server = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let server = tokio::spawn(async move { server.await });
        let hub = tokio::spawn(self.hub.run(self.state.clone(), shutdown.clone()));
        let periodic = TaskTracker::new();
        duties::spawn(&periodic, &self.state, &shutdown);
        periodic.close();
        let worker = self.state.config.jobs.run_worker.then(|| {
            let dispatcher = jobs::dispatcher::for_state(&self.state);
            tokio::spawn(
                jobs::worker::Worker::new(self.state.clone(), dispatcher).run(shutdown.clone()),
            )
        });
        shutdown.cancelled().await;
        tracing::info!("shutting down: draining in-flight requests");
        match tokio::time::timeout(grace, server).await {
            Ok(joined) => joined.context("http server task")?.context("http server")?,
            Err(_) => tracing::warn!(
                timeout_secs = grace.as_secs(),
                "in-flight requests did not finish in time; exiting anyway"
            ),
        }
        // The hub bounds its own wait for agent connections by the same timeout.
        let _ = hub.await;
        if let Some(worker) = worker {
            // The worker bounds its own wait for running jobs by the same timeout.
            let _ = worker.await;
        }
        if tokio::time::timeout(grace, periodic.wait()).await.is_err() {
            tracing::warn!("periodic duties did not stop in time; exiting anyway");
        }
        self.state.db.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Puts the ports the OS picked into the URLs that still say port 0 (the defaults of `APP_URL`
/// and `AGENT_PUBLIC_URL` under `PORT=0` / `AGENT_LISTEN_ADDR=…:0`), so enrollment answers
/// and e-mail links name the real ports. A configured URL has a real port and is kept.
fn bound_ports(config: &mut Config, http: SocketAddr, hub: SocketAddr) {
    for (url, bound) in [
        (&mut config.app_url, http),
        (&mut config.fleet.public_url, hub),
    ] {
        if url.port() == Some(0) {
            // Only fails for URLs without a host, which the config refuses.
            let _ = url.set_port(Some(bound.port()));
        }
    }
}

/// Cancels the token on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
        token.cancel();
    });
}
