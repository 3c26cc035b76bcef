//! What every subcommand starts with: the real panel on a fresh database and Redis prefix
//! (the end-to-end harness), a tenant with a SUPER_ADMIN, and a note on the binaries used.

use std::time::Duration;

use mpanel_tests::{
    TestApp,
    api::{authed, org_with_roles},
    fleet::{AgentProc, add_server, enrollment_token, hub_addr},
    wait_for,
};

use crate::report::Report;

/// The tenant every subcommand sells in.
pub const TENANT: &str = "acme";

/// A running panel and its SUPER_ADMIN's access token.
pub struct Panel {
    pub app: TestApp,
    pub admin: String,
}

impl Panel {
    /// Starts `mpanel serve` with the harness's defaults overridden by `env`.
    pub async fn start(env: &[(&str, &str)]) -> Panel {
        let app = TestApp::spawn_with(env).await;
        let org = org_with_roles(&app, TENANT, &["SUPER_ADMIN"]).await;
        let admin = org.super_admin().token().to_owned();
        Panel { app, admin }
    }

    /// A server record and its real agent (no roles: it answers pings and reports health),
    /// started and online.
    pub async fn agent(&self, name: &str) -> (String, AgentProc) {
        let server = add_server(&self.app, &self.admin, name, "WEB", "192.0.2.10").await;
        let token = enrollment_token(&self.app, &self.admin, &server).await;
        let mut agent = AgentProc::enroll(&self.app, name, &token).await;
        agent.configure(hub_addr(&self.app).await, "");
        agent.start();
        wait_for(
            "the agent to be online",
            Duration::from_secs(60),
            || async {
                let list = authed(&self.app, &self.admin).get("/api/servers").await;
                let online = list.body["items"].as_array().is_some_and(|items| {
                    items
                        .iter()
                        .any(|s| s["id"] == server.as_str() && s["agentOnline"] == true)
                });
                online.then_some(())
            },
        )
        .await;
        (server, agent)
    }

    /// Stops the panel; drops its database and Redis keys and its directory.
    pub async fn cleanup(self) {
        self.app.cleanup().await;
    }
}

/// Says which build of the panel was measured (a debug build is several times slower).
pub fn note_binaries(report: &mut Report) {
    let dir = std::env::var("MPANEL_BIN_DIR").unwrap_or_default();
    let profile = if dir.contains("/release") {
        "release"
    } else if dir.contains("/debug") {
        "debug (dependencies at opt-level 2, the workspace's own code unoptimised)"
    } else {
        "unknown profile"
    };
    report.note(format!("binaries: {dir} ({profile})"));
}
