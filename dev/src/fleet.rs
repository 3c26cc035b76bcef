//! The demo's servers: for each role that runs for real, its sandbox (a private nginx,
//! PowerDNS with sqlite3, or the Postfix maps plus a Dovecot), a server row made through the
//! API and a real agent enrolled with a one-time token and started.

use std::{net::SocketAddr, os::unix::fs::PermissionsExt, path::Path, time::Duration};

use anyhow::{Context, bail};
use mpanel_tests::{
    TestApp,
    api::authed,
    dovecot::Dovecot,
    fleet::{AgentProc, add_server, enrollment_token, hub_addr},
    pdns::{API_KEY, Pdns},
    web::WebSandbox,
};
use tokio::time::Instant;

use crate::tools::Role;

/// The sandboxes and agents of the roles that run for real (`None`: simulated).
#[derive(Default)]
pub struct Fleet {
    pub web: Option<WebSandbox>,
    pub pdns: Option<Pdns>,
    pub mail_dir: Option<tempfile::TempDir>,
    pub dovecot: Option<Dovecot>,
    pub agents: Vec<AgentProc>,
}

impl Fleet {
    /// Starts `roles` through `app` as the operator `admin`, and waits until their agents
    /// are online.
    pub async fn start(app: &TestApp, admin: &str, roles: &[Role]) -> anyhow::Result<Fleet> {
        let mut fleet = Fleet::default();
        let hub = hub_addr(app).await;
        for role in roles {
            fleet.start_role(app, admin, hub, *role).await?;
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
    ) -> anyhow::Result<()> {
        let (name, server_role, ip, config) = match role {
            Role::Web => {
                let web = WebSandbox::start();
                println!(
                    "web: nginx on 127.0.0.1:{} (sandbox {})",
                    web.port,
                    web.dir.path().display()
                );
                let config = format!("roles = [\"web\"]\n{}", web.agent_toml());
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

    /// The processes it runs: the agents, nginx's master, PowerDNS, Dovecot.
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
        pids
    }

    /// Stops the agents and Dovecot and waits for them; nginx and PowerDNS stop when their
    /// sandboxes are dropped, which removes every sandbox directory.
    pub async fn stop(mut self) {
        for agent in &mut self.agents {
            agent.terminate().await;
        }
        if let Some(mut dovecot) = self.dovecot.take() {
            dovecot.stop();
        }
    }
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
