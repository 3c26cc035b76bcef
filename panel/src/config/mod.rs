//! The panel's configuration: every environment variable is read once, here, into typed values.
//!
//! Validation collects *every* problem before reporting, so an operator fixes a broken env
//! file in one pass. Secrets are `SecretString`s: their `Debug` prints a mask, and nothing
//! in this module logs a value. The names of spec §3 are kept (PORT, HOST, DATABASE_URL,
//! REDIS_URL, JWT_*, SMTP_*, POWERDNS_*, MAILCORE_*, MARKETING_WEBHOOK_SECRET,
//! STRIPE_WEBHOOK_SECRET, APP_URL); new ones follow the same style and are documented in
//! `.env.example`.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::secrets::CredentialsKey;

pub use mpanel_protocol::duration::parse_duration;

/// Development gets local defaults so `mpanel serve` starts on a fresh machine; production
/// insists that every secret and address is set explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub environment: Environment,
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub jwt: JwtConfig,
    pub smtp: Option<SmtpConfig>,
    /// `CREDENTIALS_KEY`: seals credentials waiting for a welcome e-mail and queued e-mail
    /// bodies. Required in production; `None` in development makes the panel use a random
    /// key for the process (see `secrets::Sealer::from_config`).
    pub credentials_key: Option<CredentialsKey>,
    pub powerdns: ExternalApi,
    pub mailcore: ExternalApi,
    /// `x-internal-key` of the marketing backend and internal callers (spec §9.2).
    pub marketing_webhook_secret: SecretString,
    /// `x-internal-key` of the backup scripts' `POST /api/backups/report` only, so that a
    /// leaked marketing key cannot forge backup results (and the other way round).
    pub backup_report_secret: SecretString,
    /// Stripe's `whsec_…` signing secret for `POST /api/webhooks/stripe`.
    pub stripe_webhook_secret: SecretString,
    /// `METRICS_TOKEN`: the bearer token of `GET /metrics`; unset, the route does not exist.
    pub metrics_token: Option<SecretString>,
    /// Base URL for links in e-mails.
    pub app_url: Url,
    pub log: LogConfig,
    pub fleet: FleetConfig,
    pub jobs: JobsConfig,
    pub dns: DnsConfig,
    pub data_dir: PathBuf,
    /// How long SIGTERM waits for in-flight requests and jobs before giving up.
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub host: IpAddr,
    /// 0 asks the OS for a free port (tests do this).
    pub port: u16,
    pub max_body_bytes: usize,
    /// Peers whose `X-Forwarded-For` is believed (nginx in front of the panel).
    pub trusted_proxies: Vec<IpAddr>,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// May carry a password, hence secret.
    pub url: SecretString,
    pub max_connections: u32,
    /// Development only: create the database when it does not exist.
    pub create_if_missing: bool,
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: SecretString,
    /// Every key the panel writes starts with this, so several installs (or tests) can share
    /// one Redis.
    pub key_prefix: String,
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub secret: SecretString,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    /// Default: 587 with STARTTLS, 465 with implicit TLS, 25 in plain.
    pub port: u16,
    pub user: Option<String>,
    pub pass: Option<SecretString>,
    pub from: String,
    pub tls: SmtpTls,
}

/// `SMTP_TLS`: how the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// `starttls` (default): plain connect, then STARTTLS, which must succeed.
    StartTls,
    /// `tls`: TLS from the first byte (port 465, "SMTPS").
    Tls,
    /// `none`: no encryption. Production accepts it only for a relay on the loopback
    /// interface (a local Postfix), since e-mails carry customers' credentials.
    None,
}

/// An HTTP API of another service (kept from spec §3; in this design the DNS and mail agents
/// talk to PowerDNS and the mail stack locally, so the panel only carries these for tools
/// that still want them).
#[derive(Debug, Clone, Default)]
pub struct ExternalApi {
    pub url: Option<Url>,
    pub key: Option<SecretString>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A tracing filter directive (`RUST_LOG` wins over `LOG_LEVEL`).
    pub filter: String,
    /// Also write the JSON log to this file (spec §10).
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Where the agents' mTLS WebSocket listener binds.
    pub listen_addr: SocketAddr,
    /// The address agents dial, as handed out with enrollment tokens.
    pub public_url: Url,
    pub ca_cert_path: PathBuf,
    pub ca_key_path: PathBuf,
    /// Each side of an agent connection sends a heartbeat this often and drops a peer that
    /// stayed silent for two intervals (`AGENT_HEARTBEAT_INTERVAL`).
    pub heartbeat_interval: Duration,
    /// How often agents are asked to report metrics (`AGENT_METRICS_INTERVAL`).
    pub metrics_interval: Duration,
    /// How long metrics samples are kept (`AGENT_METRICS_RETENTION`).
    pub metrics_retention: Duration,
    /// Unauthenticated handshakes (TLS, WebSocket, Hello) in flight at once
    /// (`AGENT_HANDSHAKES_MAX`); a connection beyond it is closed at once.
    pub max_handshakes: usize,
    /// The same, from one source address (`AGENT_HANDSHAKES_PER_IP`), so one host's flood
    /// cannot take the slots of the others.
    pub handshakes_per_ip: usize,
}

/// What the panel puts in every zone it provisions.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// `DNS_NAMESERVERS`: the zones' NS set, first one the SOA primary. Empty: DNS jobs fail
    /// with a message saying so, and `serve` and `worker` warn at start.
    pub nameservers: Vec<mpanel_protocol::DomainName>,
    /// `DNS_HOSTMASTER`; default `hostmaster@<zone>`.
    pub hostmaster: Option<mpanel_protocol::EmailAddress>,
}

/// Which dispatcher runs jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatcherKind {
    /// The agent fleet (the real thing).
    Fleet,
    /// Development only: jobs succeed after a delay, touching nothing.
    Simulate,
}

#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Whether `mpanel serve` also runs a worker (`mpanel worker` runs one alone).
    pub run_worker: bool,
    /// Jobs one worker process has claimed at once (`WORKER_CONCURRENCY`). Most of them wait
    /// on agents, which costs a task and no database connection, so this may be well above
    /// the pool.
    pub concurrency: usize,
    /// Of those, how many do work of the panel's own at once — database, hashing
    /// (`JOB_ACTIVE_MAX`, at most `concurrency`): a job waiting for its turn at a server or
    /// for its agent's answer holds none ([`crate::jobs::dispatcher::Slot`]).
    pub active_max: usize,
    /// Commands one worker process has in flight to one server's agent at once
    /// (`JOB_MAX_PER_SERVER`); further jobs for that server wait for their turn
    /// (`jobs::agent::run_on`).
    pub max_per_server: usize,
    /// How long a worker holds a job before others may take it over; renewed while it runs.
    pub lease: Duration,
    pub max_attempts: i32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How often due jobs are (re-)pushed to Redis and lost workers' jobs recovered.
    pub sweep_interval: Duration,
    pub dispatcher: DispatcherKind,
    pub simulate_delay: Duration,
    /// `JOB_SIMULATE` (development only): roles or job types whose jobs the simulate
    /// dispatcher runs while the fleet runs the rest — for a machine that lacks some role's
    /// server software (`mpanel-dev`). Empty: the dispatcher above runs every job.
    pub simulate: Vec<crate::jobs::dispatcher::SimulatedJobs>,
}

/// Every problem found in the environment, one per line.
#[derive(Debug)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem{}):",
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        write!(f, "See .env.example for every variable and its meaning.")
    }
}

impl std::error::Error for ConfigError {}

/// Values copied from the spec's example env file: accepting them in production would
/// publish the secret.
const PLACEHOLDER_SECRETS: &[&str] = &["CHANGE_ME", "super-secret-jwt-key", "changeme", "secret"];

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(&std::env::vars().collect())
    }

    /// Reads the given variables (tests pass a map instead of touching the process env).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let mut r = Reader {
            vars,
            problems: Vec::new(),
        };
        let environment = match r.get("MPANEL_ENV").or_else(|| r.get("NODE_ENV")).as_deref() {
            None | Some("development") | Some("dev") | Some("test") => Environment::Development,
            Some("production") | Some("prod") => Environment::Production,
            Some(other) => {
                r.problem(format!(
                    "MPANEL_ENV: '{other}' is not an environment (use development or production)"
                ));
                Environment::Development
            }
        };
        let prod = environment == Environment::Production;

        let host = r
            .parsed("HOST", |v| {
                v.parse::<IpAddr>().map_err(|_| "not an IP address".into())
            })
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let port = r.number("PORT", 2271u16);
        let max_body_bytes = r.number("MAX_BODY_BYTES", 1024 * 1024usize);
        let trusted_proxies = r
            .parsed("TRUSTED_PROXIES", |v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.parse::<IpAddr>()
                            .map_err(|_| format!("'{s}' is not an IP address"))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap_or_else(|| vec![IpAddr::from([127, 0, 0, 1]), "::1".parse().unwrap()]);

        let database_url = r.secret_or_dev_default(
            "DATABASE_URL",
            prod,
            "postgres://postgres@127.0.0.1:5432/mpanel",
            |v| match Url::parse(v) {
                Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") => Ok(()),
                Ok(u) => Err(format!(
                    "scheme '{}' is not postgres:// or postgresql://",
                    u.scheme()
                )),
                Err(e) => Err(format!("not a URL ({e})")),
            },
        );
        let max_connections = r.number("DATABASE_MAX_CONNECTIONS", 10u32);
        if max_connections == 0 {
            r.problem("DATABASE_MAX_CONNECTIONS: must be at least 1".into());
        }
        let migrate_on_start = r.boolean("MIGRATE_ON_START", true);

        let redis_url =
            r.secret_or_dev_default("REDIS_URL", prod, "redis://127.0.0.1:6379/0", |v| {
                match Url::parse(v) {
                    Ok(u) if matches!(u.scheme(), "redis" | "rediss" | "unix" | "redis+unix") => {
                        Ok(())
                    }
                    Ok(u) => Err(format!(
                        "scheme '{}' is not redis:// or rediss://",
                        u.scheme()
                    )),
                    Err(e) => Err(format!("not a URL ({e})")),
                }
            });
        let key_prefix = r
            .parsed("REDIS_KEY_PREFIX", |v| {
                if !v.is_empty()
                    && v.len() <= 64
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b":_-.".contains(&b))
                {
                    Ok(v.to_owned())
                } else {
                    Err("use 1-64 letters, digits or : _ - .".into())
                }
            })
            .unwrap_or_else(|| "mpanel:".to_owned());

        let jwt_secret = r.secret("JWT_SECRET", prod, 32);
        let access_ttl = r.duration("JWT_ACCESS_EXPIRES_IN", Duration::from_secs(15 * 60));
        let refresh_ttl = r.duration("JWT_REFRESH_EXPIRES_IN", Duration::from_secs(7 * 86_400));
        if access_ttl < Duration::from_secs(10) || access_ttl > Duration::from_secs(86_400) {
            r.problem("JWT_ACCESS_EXPIRES_IN: must be between 10s and 24h".into());
        }
        if refresh_ttl <= access_ttl || refresh_ttl > Duration::from_secs(365 * 86_400) {
            r.problem(
                "JWT_REFRESH_EXPIRES_IN: must be longer than JWT_ACCESS_EXPIRES_IN and at most 365d"
                    .into(),
            );
        }

        let smtp = r.smtp(prod);
        let credentials_key = r.credentials_key(prod);
        let powerdns = r.external_api("POWERDNS_API_URL", "POWERDNS_API_KEY");
        let mailcore = r.external_api("MAILCORE_API_URL", "MAILCORE_API_KEY");
        let marketing_webhook_secret = r.secret("MARKETING_WEBHOOK_SECRET", prod, 16);
        let backup_report_secret = r.secret("BACKUP_REPORT_SECRET", prod, 16);
        let stripe_webhook_secret = r.secret("STRIPE_WEBHOOK_SECRET", prod, 16);
        let metrics_token = match r.get("METRICS_TOKEN") {
            Some(v) if v.len() < 16 => {
                r.problem("METRICS_TOKEN: must be at least 16 characters".into());
                None
            }
            v => v.map(SecretString::from),
        };

        let app_url = r
            .url("APP_URL", prod)
            .unwrap_or_else(|| Url::parse(&format!("http://127.0.0.1:{port}")).unwrap());

        let filter = r
            .get("RUST_LOG")
            .or_else(|| r.get("LOG_LEVEL"))
            .unwrap_or_else(|| "info".to_owned());
        let log_file = r.get("LOG_FILE").map(PathBuf::from);

        let data_dir = r
            .get("MPANEL_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                if prod {
                    PathBuf::from("/var/lib/mpanel")
                } else {
                    PathBuf::from("./data")
                }
            });
        let listen_addr = r
            .parsed("AGENT_LISTEN_ADDR", |v| {
                v.parse::<SocketAddr>()
                    .map_err(|_| "not an address like 0.0.0.0:2272".into())
            })
            .unwrap_or_else(|| {
                if prod {
                    SocketAddr::from(([0, 0, 0, 0], 2272))
                } else {
                    SocketAddr::from(([127, 0, 0, 1], 2272))
                }
            });
        let public_url = r.url("AGENT_PUBLIC_URL", prod).unwrap_or_else(|| {
            Url::parse(&format!("wss://127.0.0.1:{}", listen_addr.port())).unwrap()
        });
        if !matches!(public_url.scheme(), "wss" | "https") {
            r.problem("AGENT_PUBLIC_URL: must be a wss:// URL (agents only speak TLS)".into());
        }
        let ca_cert_path = r
            .get("CA_CERT_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("ca/ca.crt"));
        let ca_key_path = r
            .get("CA_KEY_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("ca/ca.key"));
        let heartbeat_interval = r.duration("AGENT_HEARTBEAT_INTERVAL", Duration::from_secs(15));
        let max_handshakes = r.number("AGENT_HANDSHAKES_MAX", 512usize).max(1);
        let handshakes_per_ip = r.number("AGENT_HANDSHAKES_PER_IP", 16usize).max(1);
        if heartbeat_interval < Duration::from_secs(1)
            || heartbeat_interval > Duration::from_secs(300)
        {
            r.problem("AGENT_HEARTBEAT_INTERVAL: must be between 1s and 5m".into());
        }
        let metrics_interval = r.duration("AGENT_METRICS_INTERVAL", Duration::from_secs(60));
        if metrics_interval < Duration::from_secs(1) || metrics_interval > Duration::from_secs(3600)
        {
            r.problem("AGENT_METRICS_INTERVAL: must be between 1s and 1h".into());
        }
        let metrics_retention =
            r.duration("AGENT_METRICS_RETENTION", Duration::from_secs(7 * 86_400));
        if metrics_retention < Duration::from_secs(3600)
            || metrics_retention > Duration::from_secs(90 * 86_400)
        {
            r.problem("AGENT_METRICS_RETENTION: must be between 1h and 90d".into());
        }

        let shutdown_timeout = r.duration("SHUTDOWN_TIMEOUT", Duration::from_secs(30));

        let jobs = JobsConfig {
            run_worker: r.boolean("RUN_WORKER", true),
            concurrency: r.number("WORKER_CONCURRENCY", DEFAULT_WORKER_CONCURRENCY),
            active_max: r.number("JOB_ACTIVE_MAX", DEFAULT_JOB_ACTIVE_MAX),
            max_per_server: r.number("JOB_MAX_PER_SERVER", DEFAULT_JOB_MAX_PER_SERVER),
            lease: r.duration("JOB_LEASE", Duration::from_secs(60)),
            max_attempts: r.number("JOB_MAX_ATTEMPTS", 5i32),
            retry_base: r.duration("JOB_RETRY_BASE", Duration::from_secs(5)),
            retry_max: r.duration("JOB_RETRY_MAX", Duration::from_secs(600)),
            sweep_interval: r.duration("JOB_SWEEP_INTERVAL", Duration::from_secs(2)),
            dispatcher: match r.get("JOB_DISPATCHER").as_deref() {
                None | Some("fleet") => DispatcherKind::Fleet,
                Some("simulate") if !prod => DispatcherKind::Simulate,
                Some("simulate") => {
                    r.problem("JOB_DISPATCHER: simulate is for development only".into());
                    DispatcherKind::Fleet
                }
                Some(other) => {
                    r.problem(format!(
                        "JOB_DISPATCHER: '{other}' is not fleet or simulate"
                    ));
                    DispatcherKind::Fleet
                }
            },
            simulate_delay: r.duration("JOB_SIMULATE_DELAY", Duration::from_millis(50)),
            simulate: r
                .parsed("JOB_SIMULATE", |v| {
                    if prod {
                        return Err("simulated jobs are for development only".into());
                    }
                    crate::jobs::dispatcher::parse_simulated(v)
                })
                .unwrap_or_default(),
        };
        let dns = DnsConfig {
            nameservers: r
                .parsed("DNS_NAMESERVERS", |v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| {
                            mpanel_protocol::DomainName::parse(s).map_err(|e| format!("'{s}': {e}"))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .unwrap_or_default(),
            hostmaster: r.parsed("DNS_HOSTMASTER", |v| {
                mpanel_protocol::EmailAddress::parse(v).map_err(|e| e.to_string())
            }),
        };
        if !(1..=1024).contains(&jobs.concurrency) {
            r.problem("WORKER_CONCURRENCY: must be between 1 and 1024".into());
        }
        if !(1..=256).contains(&jobs.active_max) {
            r.problem("JOB_ACTIVE_MAX: must be between 1 and 256".into());
        }
        if !(1..=256).contains(&jobs.max_per_server) {
            r.problem("JOB_MAX_PER_SERVER: must be between 1 and 256".into());
        }
        if !(1..=100).contains(&jobs.max_attempts) {
            r.problem("JOB_MAX_ATTEMPTS: must be between 1 and 100".into());
        }
        if jobs.lease < Duration::from_secs(1) {
            r.problem("JOB_LEASE: must be at least 1s".into());
        }
        if jobs.sweep_interval < Duration::from_millis(100) {
            r.problem("JOB_SWEEP_INTERVAL: must be at least 100ms".into());
        }

        if !r.problems.is_empty() {
            return Err(ConfigError {
                problems: r.problems,
            });
        }
        Ok(Config {
            environment,
            http: HttpConfig {
                host,
                port,
                max_body_bytes,
                trusted_proxies,
            },
            database: DatabaseConfig {
                url: database_url,
                max_connections,
                create_if_missing: !prod,
                migrate_on_start,
            },
            redis: RedisConfig {
                url: redis_url,
                key_prefix,
            },
            jwt: JwtConfig {
                secret: jwt_secret,
                access_ttl,
                refresh_ttl,
            },
            smtp,
            credentials_key,
            powerdns,
            mailcore,
            marketing_webhook_secret,
            backup_report_secret,
            stripe_webhook_secret,
            metrics_token,
            app_url,
            log: LogConfig {
                filter,
                file: log_file,
            },
            fleet: FleetConfig {
                listen_addr,
                public_url,
                ca_cert_path,
                ca_key_path,
                heartbeat_interval,
                metrics_interval,
                metrics_retention,
                max_handshakes,
                handshakes_per_ip,
            },
            jobs,
            dns,
            data_dir,
            shutdown_timeout,
        })
    }

    pub fn is_production(&self) -> bool {
        self.environment == Environment::Production
    }
}

/// `WORKER_CONCURRENCY`'s default: jobs waiting on agents cost a task each, not a connection.
pub const DEFAULT_WORKER_CONCURRENCY: usize = 64;
/// `JOB_ACTIVE_MAX`'s default: the panel's own work for jobs (database round trips, argon2
/// hashes of 64 MiB) a few at a time, well within the pool and the cores of a small host.
pub const DEFAULT_JOB_ACTIVE_MAX: usize = 4;
/// `JOB_MAX_PER_SERVER`'s default: enough to keep an agent's queue full (the web agent runs
/// its commands one at a time), few enough that one busy server cannot take every slot.
pub const DEFAULT_JOB_MAX_PER_SERVER: usize = 8;

/// Every environment variable the panel reads, declared once: [`Config::from_vars`] may read
/// no other (checked in debug builds), `.env.example` documents each (a test compares them),
/// and the test harness clears exactly these before it starts a panel.
pub const VARIABLES: &[&str] = &[
    "MPANEL_ENV",
    "NODE_ENV",
    "HOST",
    "PORT",
    "MAX_BODY_BYTES",
    "TRUSTED_PROXIES",
    "DATABASE_URL",
    "DATABASE_MAX_CONNECTIONS",
    "MIGRATE_ON_START",
    "REDIS_URL",
    "REDIS_KEY_PREFIX",
    "JWT_SECRET",
    "JWT_ACCESS_EXPIRES_IN",
    "JWT_REFRESH_EXPIRES_IN",
    "CREDENTIALS_KEY",
    "POWERDNS_API_URL",
    "POWERDNS_API_KEY",
    "MAILCORE_API_URL",
    "MAILCORE_API_KEY",
    "MARKETING_WEBHOOK_SECRET",
    "BACKUP_REPORT_SECRET",
    "STRIPE_WEBHOOK_SECRET",
    "METRICS_TOKEN",
    "APP_URL",
    "RUST_LOG",
    "LOG_LEVEL",
    "LOG_FILE",
    "MPANEL_DATA_DIR",
    "AGENT_LISTEN_ADDR",
    "AGENT_PUBLIC_URL",
    "CA_CERT_PATH",
    "CA_KEY_PATH",
    "AGENT_HEARTBEAT_INTERVAL",
    "AGENT_METRICS_INTERVAL",
    "AGENT_METRICS_RETENTION",
    "AGENT_HANDSHAKES_MAX",
    "AGENT_HANDSHAKES_PER_IP",
    "SHUTDOWN_TIMEOUT",
    "RUN_WORKER",
    "WORKER_CONCURRENCY",
    "JOB_ACTIVE_MAX",
    "JOB_MAX_PER_SERVER",
    "JOB_LEASE",
    "JOB_MAX_ATTEMPTS",
    "JOB_RETRY_BASE",
    "JOB_RETRY_MAX",
    "JOB_SWEEP_INTERVAL",
    "JOB_DISPATCHER",
    "JOB_SIMULATE_DELAY",
    "JOB_SIMULATE",
    "DNS_NAMESERVERS",
    "DNS_HOSTMASTER",
    "SMTP_TLS",
    "SMTP_HOST",
    "SMTP_PORT",
    "SMTP_USER",
    "SMTP_PASS",
    "EMAIL_FROM",
];

/// Accepted spellings that `.env.example` leaves out: `NODE_ENV` (the spec's name for
/// `MPANEL_ENV`) and `RUST_LOG` (the usual name for `LOG_LEVEL`).
#[cfg(test)]
const ALIASES: &[&str] = &["NODE_ENV", "RUST_LOG"];

/// Parsed and validated for the spec's sake, but read by nothing: the agents hold the
/// PowerDNS API key and drive Postfix/Dovecot themselves. `serve` warns when they are set.
pub const UNUSED: &[&str] = &[
    "POWERDNS_API_URL",
    "POWERDNS_API_KEY",
    "MAILCORE_API_URL",
    "MAILCORE_API_KEY",
];

/// Reads variables and records problems instead of stopping at the first one.
struct Reader<'a> {
    vars: &'a HashMap<String, String>,
    problems: Vec<String>,
}

impl Reader<'_> {
    /// An unset or empty variable is absent: env files often carry `NAME=`.
    fn get(&self, name: &str) -> Option<String> {
        debug_assert!(
            VARIABLES.contains(&name),
            "{name} is read but not declared in config::VARIABLES"
        );
        self.vars
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn problem(&mut self, p: String) {
        self.problems.push(p);
    }

    fn parsed<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let raw = self.get(name)?;
        match parse(&raw) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(format!("{name}: {e}"));
                None
            }
        }
    }

    fn number<T: std::str::FromStr>(&mut self, name: &str, default: T) -> T {
        self.parsed(name, |v| {
            v.parse::<T>()
                .map_err(|_| format!("'{v}' is not a valid number here"))
        })
        .unwrap_or(default)
    }

    fn boolean(&mut self, name: &str, default: bool) -> bool {
        self.parsed(name, |v| match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(format!("'{v}' is not true or false")),
        })
        .unwrap_or(default)
    }

    fn duration(&mut self, name: &str, default: Duration) -> Duration {
        self.parsed(name, parse_duration).unwrap_or(default)
    }

    fn url(&mut self, name: &str, required: bool) -> Option<Url> {
        if self.get(name).is_none() {
            if required {
                self.problem(format!("{name}: required in production"));
            }
            return None;
        }
        self.parsed(name, |v| {
            Url::parse(v).map_err(|e| format!("not a URL ({e})"))
        })
    }

    /// A secret connection string: required in production, a local default otherwise.
    fn secret_or_dev_default(
        &mut self,
        name: &str,
        prod: bool,
        dev_default: &str,
        check: impl FnOnce(&str) -> Result<(), String>,
    ) -> SecretString {
        match self.get(name) {
            Some(v) => {
                if let Err(e) = check(&v) {
                    // The value may hold a password: name the rule, never echo it.
                    self.problem(format!("{name}: {e}"));
                }
                SecretString::from(v)
            }
            None if prod => {
                self.problem(format!("{name}: required in production"));
                SecretString::from(String::new())
            }
            None => SecretString::from(dev_default.to_owned()),
        }
    }

    /// A signing or shared secret: required in production; in development an unset one is
    /// replaced by a random value for this process only, so nothing is ever open by default.
    fn secret(&mut self, name: &str, prod: bool, min_len: usize) -> SecretString {
        match self.get(name) {
            Some(v) => {
                if v.len() < min_len {
                    self.problem(format!("{name}: must be at least {min_len} characters"));
                } else if prod
                    && PLACEHOLDER_SECRETS
                        .iter()
                        .any(|p| v.eq_ignore_ascii_case(p))
                {
                    self.problem(format!(
                        "{name}: still the example value; generate one (e.g. openssl rand -hex 32)"
                    ));
                }
                SecretString::from(v)
            }
            None if prod => {
                self.problem(format!("{name}: required in production"));
                SecretString::from(String::new())
            }
            None => SecretString::from(crate::util::random_token(32)),
        }
    }

    /// `CREDENTIALS_KEY`: 64 hex characters; required in production, and there not one a
    /// person typed (all-same bytes, short repeated patterns).
    fn credentials_key(&mut self, prod: bool) -> Option<CredentialsKey> {
        let Some(raw) = self.get("CREDENTIALS_KEY") else {
            if prod {
                self.problem(
                    "CREDENTIALS_KEY: required in production (seals customers' credentials until \
                     they are e-mailed; generate one with openssl rand -hex 32)"
                        .into(),
                );
            }
            return None;
        };
        match CredentialsKey::parse_hex(&raw) {
            Ok(key) if prod && key.is_weak() => {
                self.problem(
                    "CREDENTIALS_KEY: too regular to be a random key; generate one with \
                     openssl rand -hex 32"
                        .into(),
                );
                None
            }
            Ok(key) => Some(key),
            Err(e) => {
                self.problem(format!("CREDENTIALS_KEY: {e}"));
                None
            }
        }
    }

    fn smtp(&mut self, prod: bool) -> Option<SmtpConfig> {
        // Read before SMTP_HOST so a bad value is reported even without a relay.
        let tls = self
            .parsed("SMTP_TLS", |v| match v.to_ascii_lowercase().as_str() {
                "starttls" => Ok(SmtpTls::StartTls),
                "tls" => Ok(SmtpTls::Tls),
                "none" => Ok(SmtpTls::None),
                _ => Err(format!("'{v}' is not starttls, tls or none")),
            })
            .unwrap_or(SmtpTls::StartTls);
        let Some(host) = self.get("SMTP_HOST") else {
            if prod {
                self.problem(
                    "SMTP_HOST: required in production (customers get their credentials by e-mail)"
                        .into(),
                );
            }
            return None;
        };
        let port = self.number(
            "SMTP_PORT",
            match tls {
                SmtpTls::StartTls => 587u16,
                SmtpTls::Tls => 465,
                SmtpTls::None => 25,
            },
        );
        if prod && tls == SmtpTls::None && !is_loopback_host(&host) {
            self.problem(
                "SMTP_TLS: none sends customers' credentials in clear; in production it is \
                 only accepted for a relay on this machine (SMTP_HOST=127.0.0.1, ::1 or \
                 localhost)"
                    .into(),
            );
        }
        let user = self.get("SMTP_USER");
        let pass = self.get("SMTP_PASS").map(SecretString::from);
        if user.is_some() != pass.is_some() {
            self.problem("SMTP_USER and SMTP_PASS: set both or neither".into());
        }
        if prod
            && pass
                .as_ref()
                .is_some_and(|p| PLACEHOLDER_SECRETS.contains(&p.expose_secret()))
        {
            self.problem("SMTP_PASS: still the example value".into());
        }
        let from = match self.get("EMAIL_FROM") {
            Some(f) if mpanel_protocol::EmailAddress::parse(&f).is_ok() => f,
            Some(_) => {
                self.problem("EMAIL_FROM: not an e-mail address".into());
                String::new()
            }
            None => {
                self.problem("EMAIL_FROM: required when SMTP_HOST is set".into());
                String::new()
            }
        };
        Some(SmtpConfig {
            host,
            port,
            user,
            pass,
            from,
            tls,
        })
    }

    fn external_api(&mut self, url_var: &str, key_var: &str) -> ExternalApi {
        ExternalApi {
            url: self.url(url_var, false),
            key: self.get(key_var).map(SecretString::from),
        }
    }
}

/// Whether `host` names this machine: a loopback IP (`127.0.0.0/8`, `::1`, with or without
/// brackets) or `localhost`.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Config {
    /// The variables of [`UNUSED`] this configuration sets (for a start-up warning).
    pub fn unused_settings(&self) -> Vec<&'static str> {
        let set = |api: &ExternalApi| (api.url.is_some(), api.key.is_some());
        let (pdns_url, pdns_key) = set(&self.powerdns);
        let (mail_url, mail_key) = set(&self.mailcore);
        [pdns_url, pdns_key, mail_url, mail_key]
            .into_iter()
            .zip(UNUSED)
            .filter_map(|(is_set, name)| is_set.then_some(*name))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn development_starts_with_nothing_set() {
        let c = Config::from_vars(&vars(&[])).expect("defaults are valid");
        assert_eq!(c.environment, Environment::Development);
        assert_eq!(c.http.port, 2271);
        assert_eq!(c.jwt.access_ttl, Duration::from_secs(900));
        assert!(c.database.create_if_missing);
        // No fixed development secret: nothing is open by default.
        assert!(c.jwt.secret.expose_secret().len() >= 32);
    }

    #[test]
    fn production_lists_every_missing_secret_at_once() {
        let err = Config::from_vars(&vars(&[("MPANEL_ENV", "production")])).unwrap_err();
        let all = err.to_string();
        for name in [
            "DATABASE_URL",
            "REDIS_URL",
            "JWT_SECRET",
            "MARKETING_WEBHOOK_SECRET",
            "BACKUP_REPORT_SECRET",
            "STRIPE_WEBHOOK_SECRET",
            "APP_URL",
            "SMTP_HOST",
            "CREDENTIALS_KEY",
        ] {
            assert!(all.contains(name), "{name} missing from:\n{all}");
        }
    }

    #[test]
    fn bad_values_are_named_and_secrets_are_not_echoed() {
        let err = Config::from_vars(&vars(&[
            ("PORT", "http"),
            ("DATABASE_URL", "mysql://root:hunter2@db/x"),
            ("JWT_SECRET", "short"),
            ("JWT_ACCESS_EXPIRES_IN", "15 minutes"),
            ("HOST", "everywhere"),
        ]))
        .unwrap_err();
        let all = err.to_string();
        assert_eq!(err.problems.len(), 5, "{all}");
        assert!(!all.contains("hunter2"), "password leaked: {all}");
        for name in [
            "PORT",
            "DATABASE_URL",
            "JWT_SECRET",
            "JWT_ACCESS_EXPIRES_IN",
            "HOST",
        ] {
            assert!(all.contains(name), "{name} missing from:\n{all}");
        }
    }

    #[test]
    fn debug_output_masks_secrets() {
        let c = Config::from_vars(&vars(&[
            ("JWT_SECRET", "a-very-long-jwt-secret-value-0123456789"),
            ("DATABASE_URL", "postgres://mpanel:hunter2@db/mpanel"),
        ]))
        .unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("a-very-long-jwt-secret"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn production_refuses_the_spec_example_values() {
        let err = Config::from_vars(&vars(&[
            ("MPANEL_ENV", "production"),
            ("MARKETING_WEBHOOK_SECRET", "CHANGE_ME"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("MARKETING_WEBHOOK_SECRET"));
    }
    /// A production environment complete but for what a test changes.
    fn production(extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut v = vars(&[
            ("MPANEL_ENV", "production"),
            ("DATABASE_URL", "postgres://mpanel@db/mpanel"),
            ("REDIS_URL", "redis://127.0.0.1:6379/0"),
            ("JWT_SECRET", "a-very-long-jwt-secret-value-0123456789"),
            ("MARKETING_WEBHOOK_SECRET", "marketing-0123456789abcdef"),
            ("BACKUP_REPORT_SECRET", "backups-0123456789abcdef"),
            ("STRIPE_WEBHOOK_SECRET", "whsec_0123456789abcdef"),
            ("APP_URL", "https://panel.example.com"),
            ("AGENT_PUBLIC_URL", "wss://panel.example.com:2272"),
            ("SMTP_HOST", "smtp.example.com"),
            ("EMAIL_FROM", "no-reply@example.com"),
            (
                "CREDENTIALS_KEY",
                "3f1c9a7be2d45068a1f4c3b2e9d8076f5a4b3c2d1e0f98a7b6c5d4e3f2a1b0c9",
            ),
        ]);
        v.extend(vars(extra));
        v
    }

    #[test]
    fn production_with_everything_set_starts() {
        let c = Config::from_vars(&production(&[])).expect("a complete production env");
        assert!(c.credentials_key.is_some());
        let smtp = c.smtp.expect("smtp");
        assert_eq!(smtp.tls, SmtpTls::StartTls);
        assert_eq!(smtp.port, 587);
        assert!(!format!("{:?}", c.credentials_key).contains("3f1c9a7b"));
    }

    #[test]
    fn credentials_key_must_be_64_hex_characters() {
        for (bad, rule) in [
            ("3f1c9a7be2d45068", "64 hex characters"),
            (
                "zz1c9a7be2d45068a1f4c3b2e9d8076f5a4b3c2d1e0f98a7b6c5d4e3f2a1b0c9",
                "hex",
            ),
        ] {
            for env in [
                vars(&[("CREDENTIALS_KEY", bad)]),
                production(&[("CREDENTIALS_KEY", bad)]),
            ] {
                let err = Config::from_vars(&env).unwrap_err();
                assert_eq!(err.problems.len(), 1, "{err}");
                let all = err.to_string();
                assert!(
                    all.contains("CREDENTIALS_KEY") && all.contains(rule),
                    "{all}"
                );
                assert!(!all.contains(bad), "the key is echoed: {all}");
            }
        }
    }

    #[test]
    fn production_refuses_a_weak_credentials_key() {
        for weak in ["0".repeat(64), "deadbeef".repeat(8)] {
            let err = Config::from_vars(&production(&[("CREDENTIALS_KEY", &weak)])).unwrap_err();
            assert!(err.to_string().contains("CREDENTIALS_KEY"), "{err}");
        }
        // Development takes what it is given (tests use simple keys).
        let dev = Config::from_vars(&vars(&[("CREDENTIALS_KEY", &"0".repeat(64))])).unwrap();
        assert!(dev.credentials_key.is_some());
        assert!(
            Config::from_vars(&vars(&[]))
                .unwrap()
                .credentials_key
                .is_none()
        );
    }

    #[test]
    fn smtp_tls_modes_and_their_default_ports() {
        for (mode, tls, port) in [
            ("starttls", SmtpTls::StartTls, 587),
            ("TLS", SmtpTls::Tls, 465),
            ("none", SmtpTls::None, 25),
        ] {
            let c = Config::from_vars(&vars(&[
                ("SMTP_HOST", "smtp.example.com"),
                ("EMAIL_FROM", "no-reply@example.com"),
                ("SMTP_TLS", mode),
            ]))
            .unwrap();
            let smtp = c.smtp.unwrap();
            assert_eq!((smtp.tls, smtp.port), (tls, port), "{mode}");
        }
        let err = Config::from_vars(&vars(&[("SMTP_TLS", "ssl")])).unwrap_err();
        assert!(err.to_string().contains("SMTP_TLS"), "{err}");
    }

    #[test]
    fn simulated_jobs_are_for_development_only() {
        let err = Config::from_vars(&production(&[("JOB_SIMULATE", "dns")])).unwrap_err();
        assert_eq!(
            err.problems,
            ["JOB_SIMULATE: simulated jobs are for development only"]
        );
        let c = Config::from_vars(&vars(&[("JOB_SIMULATE", "dns,mail")])).unwrap();
        assert_eq!(c.jobs.simulate.len(), 2);
    }

    #[test]
    fn worker_concurrency_active_jobs_and_the_per_server_cap_are_bounded() {
        let c = Config::from_vars(&vars(&[])).unwrap();
        assert_eq!(
            (c.jobs.concurrency, c.jobs.active_max, c.jobs.max_per_server),
            (
                DEFAULT_WORKER_CONCURRENCY,
                DEFAULT_JOB_ACTIVE_MAX,
                DEFAULT_JOB_MAX_PER_SERVER
            )
        );
        // An active limit above the concurrency is allowed (the worker takes the lower).
        let c = Config::from_vars(&vars(&[
            ("WORKER_CONCURRENCY", "1024"),
            ("JOB_ACTIVE_MAX", "256"),
            ("JOB_MAX_PER_SERVER", "1"),
        ]))
        .unwrap();
        assert_eq!(
            (c.jobs.concurrency, c.jobs.active_max, c.jobs.max_per_server),
            (1024, 256, 1)
        );
        let err = Config::from_vars(&vars(&[("JOB_ACTIVE_MAX", "0")])).unwrap_err();
        assert_eq!(err.problems, ["JOB_ACTIVE_MAX: must be between 1 and 256"]);
        for (value, problem) in [
            ("0", "JOB_MAX_PER_SERVER: must be between 1 and 256"),
            ("257", "JOB_MAX_PER_SERVER: must be between 1 and 256"),
            (
                "eight",
                "JOB_MAX_PER_SERVER: 'eight' is not a valid number here",
            ),
        ] {
            let err = Config::from_vars(&vars(&[("JOB_MAX_PER_SERVER", value)])).unwrap_err();
            assert_eq!(err.problems, [problem], "{value}");
        }
        let err = Config::from_vars(&vars(&[("WORKER_CONCURRENCY", "1025")])).unwrap_err();
        assert_eq!(
            err.problems,
            ["WORKER_CONCURRENCY: must be between 1 and 1024"]
        );
    }

    #[test]
    fn production_refuses_plain_smtp_to_another_machine() {
        let err = Config::from_vars(&production(&[("SMTP_TLS", "none")])).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(err.problems[0].starts_with("SMTP_TLS"), "{err}");
        for local in ["127.0.0.1", "127.0.1.1", "::1", "[::1]", "localhost"] {
            let c = Config::from_vars(&production(&[("SMTP_TLS", "none"), ("SMTP_HOST", local)]))
                .unwrap_or_else(|e| panic!("{local}: {e}"));
            assert_eq!(c.smtp.unwrap().tls, SmtpTls::None);
        }
        // Development may relay in plain anywhere (a test sink, a mail catcher).
        assert!(
            Config::from_vars(&vars(&[
                ("SMTP_HOST", "mailcatcher.internal"),
                ("EMAIL_FROM", "no-reply@example.com"),
                ("SMTP_TLS", "none"),
            ]))
            .is_ok()
        );
    }

    #[test]
    fn env_example_documents_exactly_the_declared_variables() {
        let example = include_str!("../../../.env.example");
        let documented: std::collections::BTreeSet<&str> = example
            .lines()
            .map(|l| l.trim_start_matches('#').trim())
            .filter_map(|l| l.split_once('=').map(|(name, _)| name))
            .filter(|n| {
                !n.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            })
            .collect();
        let declared: std::collections::BTreeSet<&str> = VARIABLES
            .iter()
            .copied()
            .filter(|v| !ALIASES.contains(v))
            .collect();
        assert_eq!(
            documented, declared,
            ".env.example and config::VARIABLES differ"
        );
        let unique: std::collections::BTreeSet<&str> = VARIABLES.iter().copied().collect();
        assert_eq!(
            unique.len(),
            VARIABLES.len(),
            "a variable is declared twice"
        );
    }

    #[test]
    fn unused_settings_are_named() {
        let config = Config::from_vars(&vars(&[
            ("POWERDNS_API_URL", "http://127.0.0.1:8081"),
            ("MAILCORE_API_KEY", "k"),
        ]))
        .unwrap();
        assert_eq!(
            config.unused_settings(),
            ["POWERDNS_API_URL", "MAILCORE_API_KEY"]
        );
    }
}
