//! More panel processes beside a [`TestApp`]: another `mpanel serve` replica or a standalone
//! `mpanel worker`, on the same database, Redis prefix, data directory (hence the same fleet
//! CA) and secrets, each with its own ports and its log kept for assertions; and the
//! three-role fleet (web, dns, mail) with real agents that may be pointed at any replicas.

use std::{
    net::SocketAddr,
    process::Stdio,
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
    fleet::{AgentProc, add_server, enrollment_token},
    panel::{self, wait_for},
    pdns::{API_KEY, Pdns},
    pebble::Pebble,
    web::WebSandbox,
};

/// A 64-hex-digit `CREDENTIALS_KEY` shared by every process of a multi-process test.
pub const SHARED_CREDENTIALS_KEY: &str =
    "4f1c2a9e7b3d5f60a8c1e2d3b4a5968778695a4b3c2d1e0f9a8b7c6d5e4f3a21";

/// Another panel process (`serve` or `worker`) of the same installation.
pub struct Process {
    pub name: String,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// `mpanel <command>` with the app's environment and `extra` on top.
    pub fn start(app: &TestApp, name: &str, command: &str, extra: &[(&str, &str)]) -> Process {
        let mut cmd = panel::command("mpanel", app.dir.path());
        cmd.arg(command)
            .envs(app.env().iter().map(|(k, v)| (k, v)))
            .envs(extra.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn mpanel");
        let stdout = child.stdout.take().unwrap();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (sink, label) = (log.clone(), name.to_owned());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{label}] {line}");
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Process {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The `field` of the latest log line whose message is `message`, once there is one.
    pub async fn logged(&self, message: &str, field: &str) -> String {
        wait_for(
            &format!("{} to log {message:?}", self.name),
            Duration::from_secs(30),
            || async {
                self.log_lines().iter().rev().find_map(|line| {
                    let v: Value = serde_json::from_str(line).ok()?;
                    (v["message"] == message).then(|| v[field].as_str().map(str::to_owned))?
                })
            },
        )
        .await
    }

    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("the process is running") as i32
    }

    /// SIGKILL: the process dies without a word, as in a crash.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.start_kill().expect("SIGKILL");
        let _ = child.wait().await;
    }

    /// SIGTERM; waits at most `within` for the exit and returns how long it took.
    pub async fn terminate(&mut self, within: Duration) -> (std::process::ExitStatus, Duration) {
        let started = std::time::Instant::now();
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        let mut child = self.child.take().expect("running");
        let status = tokio::time::timeout(within, child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {within:?} of SIGTERM", self.name))
            .expect("wait");
        (status, started.elapsed())
    }
}

/// A second `mpanel serve`: its HTTP and hub addresses and its process.
pub struct Replica {
    pub addr: SocketAddr,
    pub hub: SocketAddr,
    pub process: Process,
}

impl Replica {
    pub async fn start(app: &TestApp, name: &str, extra: &[(&str, &str)]) -> Replica {
        let process = Process::start(app, name, "serve", extra);
        let addr = process.logged("http listening", "addr").await;
        let hub = process.logged("fleet hub listening", "addr").await;
        Replica {
            addr: addr.parse().expect("an address"),
            hub: hub.parse().expect("an address"),
            process,
        }
    }

    /// The replica's URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// A panel for a fleet of real agents that sends its e-mail to the SMTP sink on
/// `smtp_port`: a 1 s heartbeat, sweeps and retries every 200 ms, plus `extra` (which wins).
pub async fn fleet_panel(smtp_port: u16, extra: &[(&str, &str)]) -> TestApp {
    let port = smtp_port.to_string();
    let mut env = vec![
        ("SMTP_HOST", "127.0.0.1"),
        ("SMTP_PORT", port.as_str()),
        ("SMTP_TLS", "none"),
        ("EMAIL_FROM", "welcome@panel.example"),
        ("AGENT_HEARTBEAT_INTERVAL", "1s"),
        ("JOB_SWEEP_INTERVAL", "200ms"),
        ("JOB_RETRY_BASE", "200ms"),
        ("DNS_HOSTMASTER", "hostmaster@example.test"),
    ];
    env.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    env.extend_from_slice(extra);
    TestApp::spawn_with(&env).await
}

/// The three servers of a tenant (web, dns, mail) and their real agents, over private
/// nginx, PowerDNS and mail maps.
pub struct Fleet3 {
    pub pdns: Pdns,
    pub web: WebSandbox,
    /// The ACME server the web agent gets its sites' certificates from, when the fleet
    /// started its own ([`Fleet3::start`]).
    pub pebble: Option<Pebble>,
    pub mail_dir: tempfile::TempDir,
    /// web, dns, mail — in that order.
    pub ids: [String; 3],
    pub agents: Vec<AgentProc>,
}

impl Fleet3 {
    /// Adds the servers through `app`'s API and enrolls an agent for each; `hubs[i]` are the
    /// hubs agent `i` (web, dns, mail) may dial. The agents are started. The web agent gets
    /// its certificates from a pebble of the fleet's own (every name resolving to the web
    /// sandbox), as every shared-hosting plan includes HTTPS by default.
    pub async fn start(app: &TestApp, admin: &str, hubs: [&[SocketAddr]; 3]) -> Fleet3 {
        let web = WebSandbox::start();
        let pebble = Pebble::start(web.port, 3600);
        let web_toml = web.agent_toml_acme(&pebble.directory(), &pebble.tls_ca());
        let mut fleet = Fleet3::start_with_web(app, admin, hubs, web, &web_toml).await;
        fleet.pebble = Some(pebble);
        fleet
    }

    /// [`Fleet3::start`] over a web sandbox already started, its agent's `[web]` section
    /// being `web_toml` (for HTTPS: `WebSandbox::agent_toml_acme`).
    pub async fn start_with_web(
        app: &TestApp,
        admin: &str,
        hubs: [&[SocketAddr]; 3],
        web: WebSandbox,
        web_toml: &str,
    ) -> Fleet3 {
        let pdns = Pdns::start().await;
        let mail_dir = tempfile::tempdir().unwrap();
        let web_id = add_server(app, admin, "srv1-web", "WEB", "192.0.2.80").await;
        let dns_id = add_server(app, admin, "dns-core", "DNS", "192.0.2.53").await;
        let mail_id = add_server(app, admin, "mail-core", "MAIL", "192.0.2.25").await;
        let key_file = pdns.dir.path().join("api-key");
        std::fs::write(&key_file, API_KEY).unwrap();
        let md = mail_dir.path().display().to_string();
        let configs = [
            format!("roles = [\"web\"]\n{web_toml}"),
            format!(
                "roles = [\"dns\"]\n[dns]\napi_url = \"{}\"\napi_key_file = \"{}\"\n",
                pdns.api_url(),
                key_file.display()
            ),
            format!(
                "roles = [\"mail\"]\n[mail]\nvmail_uid = 5000\nvmail_gid = 5000\nreload = false\n\
                 virtual_mailbox_domains = \"{md}/virtual_mailbox_domains\"\n\
                 virtual_mailbox_maps = \"{md}/virtual_mailbox_maps\"\n\
                 passwd_file = \"{md}/users\"\nvmail_root = \"{md}/vmail\"\n\
                 archive_dir = \"{md}/archive\"\n"
            ),
        ];
        let ids = [web_id, dns_id, mail_id];
        let mut agents = Vec::new();
        for (i, name) in ["srv1-web", "dns-core", "mail-core"].iter().enumerate() {
            let token = enrollment_token(app, admin, &ids[i]).await;
            let mut agent = AgentProc::enroll(app, name, &token).await;
            agent.configure_hubs(hubs[i], &configs[i]);
            agent.start();
            agents.push(agent);
        }
        let fleet = Fleet3 {
            pdns,
            web,
            pebble: None,
            mail_dir,
            ids,
            agents,
        };
        fleet.wait_online(app, admin).await;
        fleet
    }

    /// Waits until `host` answers `status` over HTTPS with a chain to the fleet's pebble (on
    /// port 80 a site with a certificate only redirects); its body.
    pub fn wait_https(&self, host: &str, status: u16) -> String {
        let pebble = self.pebble.as_ref();
        let root = pebble
            .expect("a fleet with its own pebble (Fleet3::start)")
            .root();
        self.web.wait_for_https(host, &root, status)
    }

    /// Waits until the three servers are online (as the API says).
    pub async fn wait_online(&self, app: &TestApp, admin: &str) {
        wait_for(
            "the three agents to be online",
            Duration::from_secs(60),
            || async {
                let servers = authed(app, admin).get("/api/servers").await.expect(200);
                let online = servers["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|s| s["agentOnline"] == true)
                    .count();
                (online == 3).then_some(())
            },
        )
        .await;
    }
}
