//! The demo's servers: for each role that runs for real, its sandbox (a private nginx,
//! PowerDNS with sqlite3, or the Postfix maps plus a Dovecot), a server row made through the
//! API and a real agent enrolled with a one-time token and started. With HTTPS, the web
//! agent's ACME directory is a local pebble whose DNS resolves the demo's domain to the web
//! sandbox, as in the harness's HTTPS test.

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use mpanel_tests::{
    TestApp,
    api::authed,
    dovecot::Dovecot,
    fleet::{AgentProc, add_server, enrollment_token, hub_addr},
    pdns::{API_KEY, Pdns},
    pebble::{CHALLTESTSRV, PEBBLE, Pebble},
    web::WebSandbox,
};
use tokio::time::Instant;

use crate::{order::DOMAIN, tools::Role};

/// How long the demo's certificates are valid: Let's Encrypt's 90 days, so the agent's
/// renewal (at two thirds of it) never happens while one watches.
const CERTIFICATE_VALIDITY_SECS: u64 = 90 * 24 * 3600;

/// The local ACME test CA the web agent gets the site's certificate from.
pub struct Acme {
    pub pebble: Pebble,
    /// pebble's root (PEM) in its directory under the work directory, for curl.
    pub root: PathBuf,
    /// pebble's and its DNS's processes (the harness does not say them).
    pub pids: Vec<u32>,
}

/// The sandboxes and agents of the roles that run for real (`None`: simulated).
#[derive(Default)]
pub struct Fleet {
    pub web: Option<WebSandbox>,
    pub pdns: Option<Pdns>,
    pub mail_dir: Option<tempfile::TempDir>,
    pub dovecot: Option<Dovecot>,
    /// With HTTPS (a real web role and pebble installed).
    pub acme: Option<Acme>,
    pub agents: Vec<AgentProc>,
}

impl Fleet {
    /// Starts `roles` through `app` as the operator `admin`, and waits until their agents
    /// are online; with `https` the web agent gets its certificates from a local pebble.
    pub async fn start(
        app: &TestApp,
        admin: &str,
        roles: &[Role],
        https: bool,
    ) -> anyhow::Result<Fleet> {
        let mut fleet = Fleet::default();
        let hub = hub_addr(app).await;
        for role in roles {
            fleet.start_role(app, admin, hub, *role, https).await?;
        }
        if let Some(dir) = &fleet.mail_dir {
            let users = dir.path().join("users");
            std::fs::write(&users, "").context("create the Dovecot passwd-file")?;
            let dovecot = Dovecot::start(&users).map_err(anyhow::Error::msg)?;
            println!(
                "mail: Dovecot IMAP on 127.0.0.1:{} (pid {})",
                dovecot.port,
                dovecot.pid()
            );
            fleet.dovecot = Some(dovecot);
        }
        wait_online(app, admin, roles.len()).await?;
        Ok(fleet)
    }

    async fn start_role(
        &mut self,
        app: &TestApp,
        admin: &str,
        hub: SocketAddr,
        role: Role,
        https: bool,
    ) -> anyhow::Result<()> {
        let (name, server_role, ip, config) = match role {
            Role::Web => {
                let web = WebSandbox::start();
                let web_toml = if https {
                    println!(
                        "web: nginx on 127.0.0.1:{}, its sites' HTTPS on :{} (sandbox {})",
                        web.port,
                        web.https_port,
                        web.dir.path().display()
                    );
                    let acme = start_acme(web.port);
                    let web_toml =
                        web.agent_toml_acme(&acme.pebble.directory(), &acme.pebble.tls_ca());
                    self.acme = Some(acme);
                    web_toml
                } else {
                    println!(
                        "web: nginx on 127.0.0.1:{} (sandbox {})",
                        web.port,
                        web.dir.path().display()
                    );
                    web.agent_toml()
                };
                let config = format!("roles = [\"web\"]\n{web_toml}");
                self.web = Some(web);
                ("srv1-web", "WEB", "192.0.2.80", config)
            }
            Role::Dns => {
                let pdns = Pdns::start().await;
                let key_file = pdns.dir.path().join("api-key");
                std::fs::write(&key_file, API_KEY).context("write the PowerDNS API key")?;
                println!(
                    "dns: PowerDNS on 127.0.0.1:{} (its API on :{}, sandbox {})",
                    pdns.dns_port,
                    pdns.api_port,
                    pdns.dir.path().display()
                );
                let config = format!(
                    "roles = [\"dns\"]\n[dns]\napi_url = \"{}\"\napi_key_file = \"{}\"\n",
                    pdns.api_url(),
                    key_file.display()
                );
                self.pdns = Some(pdns);
                ("dns-core", "DNS", "192.0.2.53", config)
            }
            Role::Mail => {
                let dir = tempfile::tempdir().context("the mail sandbox")?;
                // Dovecot's mail processes run as the mailboxes' owner (vmail_uid).
                std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                    .context("chmod the mail sandbox")?;
                let md = dir.path().display().to_string();
                println!("mail: Postfix maps and Dovecot users under {md}");
                let config = format!(
                    "roles = [\"mail\"]\n[mail]\nvmail_uid = 5000\nvmail_gid = 5000\n\
                     reload = false\nvirtual_mailbox_domains = \"{md}/virtual_mailbox_domains\"\n\
                     virtual_mailbox_maps = \"{md}/virtual_mailbox_maps\"\n\
                     passwd_file = \"{md}/users\"\nvmail_root = \"{md}/vmail\"\n"
                );
                self.mail_dir = Some(dir);
                ("mail-core", "MAIL", "192.0.2.25", config)
            }
        };
        let server = add_server(app, admin, name, server_role, ip).await;
        let token = enrollment_token(app, admin, &server).await;
        let mut agent = AgentProc::enroll(app, name, &token).await;
        write_agent_config(&agent, hub, &config)?;
        agent.start();
        println!(
            "{}: server {name} ({server_role}) added, its agent enrolled and started (pid {})",
            role.name(),
            agent.pid()
        );
        self.agents.push(agent);
        Ok(())
    }

    /// The processes it runs: the agents, nginx's master, PowerDNS, Dovecot, pebble and its
    /// DNS.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.agents.iter().map(|a| a.pid() as u32).collect();
        if let Some(web) = &self.web
            && let Ok(pid) = web.read("nginx.pid").trim().parse()
        {
            pids.push(pid);
        }
        if let Some(pdns) = &self.pdns
            && let Some(pid) = pdns_pid(pdns.dir.path())
        {
            pids.push(pid);
        }
        if let Some(dovecot) = &self.dovecot {
            pids.push(dovecot.pid());
        }
        if let Some(acme) = &self.acme {
            pids.extend(&acme.pids);
        }
        pids
    }

    /// Stops the agents and Dovecot and waits for them, then pebble (killed and waited for
    /// when dropped, its directory removed); nginx and PowerDNS stop when their sandboxes are
    /// dropped, which removes every sandbox directory.
    pub async fn stop(mut self) {
        for agent in &mut self.agents {
            agent.terminate().await;
        }
        if let Some(mut dovecot) = self.dovecot.take() {
            dovecot.stop();
        }
        drop(self.acme.take());
    }
}

/// pebble fetching its HTTP-01 challenges from the web sandbox's nginx on `http_port`, its
/// DNS pointing the demo's domain and its `www.` at that nginx, and its root written to a
/// file (it changes at every start).
fn start_acme(http_port: u16) -> Acme {
    let pebble = Pebble::start(http_port, CERTIFICATE_VALIDITY_SECS);
    let www = format!("www.{DOMAIN}");
    for host in [DOMAIN, www.as_str()] {
        pebble.point(host, "127.0.0.1");
    }
    let root = pebble.root();
    let pids = children_running(&[PEBBLE, CHALLTESTSRV]);
    let shown: Vec<String> = pids.iter().map(u32::to_string).collect();
    println!(
        "acme: pebble, a local ACME test CA, at {} (its DNS resolves {DOMAIN} and {www} to the \
         web sandbox's 127.0.0.1; pids {})",
        pebble.directory(),
        shown.join(" "),
    );
    Acme { pebble, root, pids }
}

/// This process's children whose executable is one of `executables` (from `/proc`).
fn children_running(executables: &[&str]) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // `pid (comm) state ppid …`: the command may hold spaces and parentheses.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(me)
        })
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| executables.iter().any(|e| exe == Path::new(e)))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Waits until `n` agents are online, as the API says.
async fn wait_online(app: &TestApp, admin: &str, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + crate::demo::STEP;
    loop {
        let servers = authed(app, admin).get("/api/servers").await;
        let online: Vec<&str> = servers.body["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|s| s["agentOnline"] == true)
                    .filter_map(|s| s["name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        if online.len() >= n {
            if n > 0 {
                println!("fleet: {} online", online.join(", "));
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {online:?} of {n} agents came online in time");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// PowerDNS writes its pid beside its control socket.
fn pdns_pid(socket_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(socket_dir.join("pdns.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The agent's configuration as the harness writes it, but with quieter logs (they go to
/// the demo's log file).
fn write_agent_config(agent: &AgentProc, hub: SocketAddr, extra: &str) -> anyhow::Result<()> {
    let text = format!(
        "state_dir = {state:?}\nhostname = {name:?}\nhub_url = [\"wss://{hub}\"]\n\
         reconnect_min = \"200ms\"\nreconnect_max = \"2s\"\nshutdown_timeout = \"5s\"\n\
         log_level = \"mpanel_agent=info,warn\"\n{extra}\n",
        state = agent.state_dir().display().to_string(),
        name = agent.name,
    );
    std::fs::write(agent.config_path(), text).context("write agent.toml")
}
