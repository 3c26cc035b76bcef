//! Real agents for the fleet tests: `mpanel-agent enroll` and `mpanel-agent run` as child
//! processes with their own state directory and config file, their stderr kept for
//! assertions (executions, journal answers), and the hub address read from the panel's log.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Child,
};

use crate::{
    TestApp,
    api::authed,
    panel::{self, wait_for},
};

/// The address of the fleet hub from the panel's `"fleet hub listening"` line (the latest
/// one, so it follows a restart).
pub async fn hub_addr(app: &TestApp) -> SocketAddr {
    wait_for(
        "the fleet hub to listen",
        Duration::from_secs(30),
        || async {
            app.log_lines().iter().rev().find_map(|line| {
                let v: Value = serde_json::from_str(line).ok()?;
                (v["message"] == "fleet hub listening")
                    .then(|| v["addr"].as_str()?.parse().ok())
                    .flatten()
            })
        },
    )
    .await
}

/// Issues an enrollment token for `server_id`; returns the token.
pub async fn enrollment_token(app: &TestApp, bearer: &str, server_id: &str) -> String {
    let body = authed(app, bearer)
        .post(
            &format!("/api/servers/{server_id}/enrollment-token"),
            &serde_json::json!({}),
        )
        .await
        .expect(201);
    body["token"].as_str().expect("token").to_owned()
}

/// One agent: its directory (state, config, journal) and, while running, its process.
pub struct AgentProc {
    pub name: String,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl AgentProc {
    /// Enrolls a new agent with `token` through the real binary; panics on failure.
    pub async fn enroll(app: &TestApp, name: &str, token: &str) -> AgentProc {
        let dir = tempfile::tempdir().expect("agent dir");
        let mut cmd = panel::command("mpanel-agent", dir.path());
        cmd.args([
            "enroll",
            "--panel",
            &format!("http://{}", app.addr),
            "--hostname",
            name,
        ])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("MPANEL_ENROLL_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("enroll finished within 60s")
            .expect("run mpanel-agent enroll");
        assert!(
            out.status.success(),
            "enroll {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        AgentProc {
            name: name.to_owned(),
            dir,
            child: None,
            log: Arc::default(),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    /// Writes `agent.toml` pointing at `hub`, with `extra` TOML lines appended.
    pub fn configure(&self, hub: SocketAddr, extra: &str) {
        self.configure_hubs(&[hub], extra);
    }

    /// Writes `agent.toml` with every hub of `hubs` (`hub_url = [..]`: the agent fails over
    /// between them), with `extra` TOML lines appended.
    pub fn configure_hubs(&self, hubs: &[SocketAddr], extra: &str) {
        let hub_urls: Vec<String> = hubs.iter().map(|h| format!("\"wss://{h}\"")).collect();
        let hub = hub_urls.join(", ");
        let text = format!(
            "state_dir = {state:?}\nhostname = {name:?}\nhub_url = [{hub}]\nreconnect_min = \"200ms\"\n\
             reconnect_max = \"2s\"\nshutdown_timeout = \"5s\"\nlog_level = \"mpanel_agent=debug,warn\"\n{extra}\n",
            state = self.state_dir().to_str().unwrap(),
            name = self.name,
        );
        std::fs::write(self.config_path(), text).expect("write agent.toml");
    }

    /// Starts `mpanel-agent run --config …`.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let mut cmd = panel::command("mpanel-agent", self.dir.path());
        cmd.arg("run")
            .arg("--config")
            .arg(self.config_path())
            .env_remove("MPANEL_AGENT_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn mpanel-agent run");
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        let name = self.name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{name}] {line}");
                log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        self.child = Some(child);
    }

    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("agent is running") as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// SIGKILL and wait: no chance to finish anything.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("agent is running");
        child.start_kill().expect("SIGKILL");
        let _ = child.wait().await;
    }

    /// SIGTERM and wait for the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().unwrap();
        tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("agent exited within 20s of SIGTERM")
            .expect("wait for agent")
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("agent is running");
        tokio::time::timeout(within, child.wait())
            .await
            .expect("agent exited in time")
            .expect("wait for agent")
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Log lines containing every one of `needles`.
    pub fn count(&self, needles: &[&str]) -> usize {
        self.log_lines()
            .iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Waits (30 s at most) until at least `n` log lines contain every one of `needles`, and
    /// returns how many do: the agent's stderr is read by a task that may lag behind it, so
    /// "exactly n" is asserted on this, not on an immediate count.
    pub async fn wait_count(&self, needles: &[&str], n: usize) -> usize {
        crate::wait_for(
            &format!("{n} agent log line(s) with {needles:?}"),
            Duration::from_secs(30),
            || async { (self.count(needles) >= n).then_some(()) },
        )
        .await;
        self.count(needles)
    }

    /// The agent's journal, one JSON value per entry.
    pub fn journal(&self) -> Vec<Value> {
        read_jsonl(&self.state_dir().join("journal.jsonl"))
    }

    /// `enrollment.json`.
    pub fn enrollment(&self) -> Value {
        let text = std::fs::read_to_string(self.state_dir().join("enrollment.json"))
            .expect("enrollment.json");
        serde_json::from_str(&text).expect("enrollment.json is JSON")
    }
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// How long the provisioning tests wait for a job.
pub const JOB_WAIT: Duration = Duration::from_secs(60);

/// A server of `role` (WEB, DNS, MAIL, …) made through the API as `token`; its id.
pub async fn add_server(app: &TestApp, token: &str, name: &str, role: &str, ip: &str) -> String {
    let body = serde_json::json!({ "name": name, "role": role, "ipAddress": ip });
    authed(app, token)
        .post("/api/servers", &body)
        .await
        .expect(201)["id"]
        .as_str()
        .expect("a server id")
        .to_owned()
}

/// Waits until job `id` is `status`; a job that ends FAILED on the way to another status
/// fails the test at once, with the job (and its lastError) in the message.
pub async fn wait_job_status(app: &TestApp, token: &str, id: &str, status: &str) -> Value {
    wait_for(&format!("job {id} to be {status}"), JOB_WAIT, || async {
        let j = authed(app, token)
            .get(&format!("/api/jobs/{id}"))
            .await
            .expect(200);
        if status != "FAILED" {
            assert_ne!(j["status"], "FAILED", "{j}");
        }
        (j["status"] == status).then_some(j)
    })
    .await
}
