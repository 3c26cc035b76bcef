//! A real PowerDNS authoritative server (sqlite3 backend, HTTP API) on free loopback ports,
//! as the DNS role's agent talks to it. Killed when dropped.

use std::{
    net::{TcpListener, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::wait_for;

pub const API_KEY: &str = "pdns-test-api-key-0123456789";
const SCHEMA: &str = "/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql";

pub struct Pdns {
    child: Child,
    pub dir: tempfile::TempDir,
    pub dns_port: u16,
    pub api_port: u16,
}

impl Drop for Pdns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for both UDP and TCP (pdns answers on both).
fn free_dns_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Pdns {
    pub async fn start() -> Pdns {
        assert!(
            Path::new(SCHEMA).exists(),
            "{SCHEMA} is missing: install pdns-server pdns-backend-sqlite3 sqlite3 dnsutils (.ci/run does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let status = Command::new("sqlite3")
            .arg(dir.path().join("pdns.db"))
            .stdin(std::fs::File::open(SCHEMA).unwrap())
            .status()
            .expect("sqlite3 runs");
        assert!(status.success());
        let dns_port = free_dns_port();
        let api_port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(
            dir.path().join("pdns.conf"),
            format!(
                "launch=gsqlite3\ngsqlite3-database={d}/pdns.db\nlocal-address=127.0.0.1\n\
                 local-port={dns_port}\napi=yes\napi-key={API_KEY}\nwebserver=yes\n\
                 webserver-address=127.0.0.1\nwebserver-port={api_port}\n\
                 webserver-allow-from=127.0.0.0/8\nguardian=no\ndaemon=no\nsocket-dir={d}\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("pdns.log")).unwrap();
        let child = Command::new("pdns_server")
            .arg(format!("--config-dir={d}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("pdns_server starts");
        let pdns = Pdns {
            child,
            dir,
            dns_port,
            api_port,
        };
        let http = crate::panel::http_client();
        let url = format!("http://127.0.0.1:{api_port}/api/v1/servers/localhost");
        wait_for("the PowerDNS API", Duration::from_secs(20), || async {
            let res = http
                .get(&url)
                .header("X-API-Key", API_KEY)
                .send()
                .await
                .ok()?;
            res.status().is_success().then_some(())
        })
        .await;
        pdns
    }

    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1", self.api_port)
    }

    /// `dig +short @127.0.0.1 -p PORT name kind`, sorted lines.
    pub fn dig(&self, name: &str, kind: &str) -> Vec<String> {
        let out = Command::new("dig")
            .args(["+short", "+time=2", "+tries=2", "@127.0.0.1", "-p"])
            .arg(self.dns_port.to_string())
            .args([name, kind])
            .output()
            .expect("dig runs");
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }
}
