//! The real `mpanel` binary, started as a child process on a random port against the test's
//! own database and Redis key prefix.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
    sync::oneshot,
};

use crate::db::TestDb;

pub const JWT_SECRET: &str = "test-jwt-secret-0123456789-abcdefghijklmnop";
pub const INTERNAL_KEY: &str = "test-internal-key-0123456789";
/// The backup scripts' key (`BACKUP_REPORT_SECRET`), distinct from the marketing key.
pub const BACKUP_REPORT_KEY: &str = "test-backup-report-key-0123456789";
pub const STRIPE_SECRET: &str = "whsec_test_0123456789abcdef";

pub fn redis_url() -> String {
    std::env::var("MPANEL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// Path of a workspace binary. Cargo builds `mpanel` and `mpanel-agent` next to the test
/// executables (`target/<profile>/deps/..`) whenever their packages' tests are built.
pub fn bin_path(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("MPANEL_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("current test executable");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` (the README's test command does)",
        path.display()
    );
    path
}

/// A `Command` for a workspace binary with a clean panel environment (every variable of
/// `mpanel::config::VARIABLES` cleared, so a developer's shell or `.env` never leaks into a
/// test), run in `dir`.
pub fn command(name: &str, dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(bin_path(name));
    for var in mpanel::config::VARIABLES {
        cmd.env_remove(var);
    }
    cmd.current_dir(dir).kill_on_drop(true);
    cmd
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub db: TestDb,
    pub redis_prefix: String,
    pub http: reqwest::Client,
    /// Working directory and data dir of the panel (holds its CA, log file …).
    pub dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Every line the panel printed on stdout, across restarts.
    log: Arc<Mutex<Vec<String>>>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(&[]).await
    }

    /// Starts the panel with the test defaults, overridden by `extra`.
    pub async fn spawn_with(extra: &[(&str, &str)]) -> TestApp {
        let db = TestDb::create().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let redis_prefix = format!("mpanel-test:{}:", uuid::Uuid::new_v4().simple());
        let mut env: Vec<(String, String)> = [
            ("MPANEL_ENV", "development"),
            ("HOST", "127.0.0.1"),
            ("PORT", "0"),
            ("DATABASE_URL", db.url.as_str()),
            ("REDIS_URL", redis_url().as_str()),
            ("REDIS_KEY_PREFIX", redis_prefix.as_str()),
            ("JWT_SECRET", JWT_SECRET),
            ("MARKETING_WEBHOOK_SECRET", INTERNAL_KEY),
            ("BACKUP_REPORT_SECRET", BACKUP_REPORT_KEY),
            ("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET),
            ("AGENT_LISTEN_ADDR", "127.0.0.1:0"),
            ("MPANEL_DATA_DIR", dir.path().to_str().unwrap()),
            ("RUST_LOG", "info"),
            ("SHUTDOWN_TIMEOUT", "10s"),
            ("DNS_NAMESERVERS", "ns1.example.test,ns2.example.test"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push((k.to_string(), v.to_string()));
        }

        let mut app = TestApp {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            db,
            redis_prefix,
            http: http_client(),
            dir,
            env,
            child: None,
            log: Arc::default(),
        };
        app.start().await;
        app
    }

    /// The running panel's process id.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("the panel is running")
    }

    /// Starts (or restarts) the panel process and waits until it listens.
    pub async fn start(&mut self) {
        let mut cmd = command("mpanel", self.dir.path());
        cmd.arg("serve")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn mpanel serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(forward_logs(stdout, tx, self.log.clone()));
        let addr = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("mpanel serve did not start listening within 30s")
            .expect("mpanel serve exited before listening (see its log above)");
        self.addr = addr;
        self.child = Some(child);
    }

    /// The panel's log lines so far (JSON, one per line).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    /// The environment the panel runs with (database, Redis prefix, secrets …).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// Starts `mpanel worker` against this app's database and Redis, with `extra` on top
    /// of the panel's environment. The child is killed when dropped.
    pub fn spawn_worker(&self, extra: &[(&str, &str)]) -> Child {
        let mut cmd = command("mpanel", self.dir.path());
        cmd.arg("worker")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(extra.iter().copied())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        cmd.spawn().expect("spawn mpanel worker")
    }

    /// Runs `mpanel <args>` against this app's database, feeding `stdin`.
    pub async fn run_cli(&self, args: &[&str], stdin: &str) -> std::process::Output {
        let mut cmd = command("mpanel", self.dir.path());
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn mpanel");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("mpanel command finished within 60s")
            .expect("mpanel command ran")
    }

    /// Creates an operator through the real CLI; returns its JSON summary.
    pub async fn create_admin(
        &self,
        tenant: &str,
        email: &str,
        role: &str,
        password: &str,
    ) -> Value {
        let out = self
            .run_cli(
                &[
                    "create-admin",
                    "--tenant",
                    tenant,
                    "--email",
                    email,
                    "--role",
                    role,
                    "--password-stdin",
                ],
                &format!("{password}\n"),
            )
            .await;
        assert!(
            out.status.success(),
            "create-admin failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("create-admin prints JSON")
    }

    /// Sends `signal` to the running panel (SIGSTOP makes it a silent peer).
    pub fn signal(&self, signal: i32) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("panel is running") as i32;
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("panel is running");
        let pid = child.id().expect("running child has a pid") as i32;
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("panel exited within 20s of SIGTERM")
            .expect("wait for panel")
    }

    /// SIGKILL: the panel dies without a word, as in a crash.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("panel is running");
        child.start_kill().expect("SIGKILL");
        let _ = child.wait().await;
    }

    /// SIGTERM; waits at most `within` and returns the exit status and how long it took.
    pub async fn terminate_timed(
        &mut self,
        within: Duration,
    ) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        let mut child = self.child.take().expect("panel is running");
        let pid = child.id().expect("running child has a pid") as i32;
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let status = tokio::time::timeout(within, child.wait())
            .await
            .unwrap_or_else(|_| panic!("the panel did not exit within {within:?} of SIGTERM"))
            .expect("wait for panel");
        (status, started.elapsed())
    }

    /// Stops the panel and removes the test's database and Redis keys.
    pub async fn cleanup(mut self) {
        if self.child.is_some() {
            self.terminate().await;
        }
        delete_redis_keys(&self.redis_prefix).await;
        let TestApp { db, .. } = self;
        db.cleanup().await;
    }
}

/// Echoes the panel's log lines into the test output and reports the address it bound.
async fn forward_logs(
    stdout: tokio::process::ChildStdout,
    tx: oneshot::Sender<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
) {
    let mut tx = Some(tx);
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("[panel] {line}");
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line.clone());
        if tx.is_some()
            && let Ok(v) = serde_json::from_str::<Value>(&line)
            && v["message"] == "http listening"
            && let Some(addr) = v["addr"].as_str().and_then(|a| a.parse().ok())
        {
            let _ = tx.take().unwrap().send(addr);
        }
    }
}

pub async fn delete_redis_keys(prefix: &str) {
    let Ok(client) = redis::Client::open(redis_url()) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

/// A reqwest client for the tests. The workspace's reqwest is built with rustls and no
/// default crypto provider (the agent chooses ring), so one is installed first.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// Polls `probe` until it returns `Some`, or panics after `deadline` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    let mut delay = Duration::from_millis(10);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}
