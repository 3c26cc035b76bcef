//! A web server for the web role's agent in a temp-dir sandbox: its own passwd files (the
//! agent runs `useradd --prefix`), and a real nginx started from a private config on a free
//! loopback port that includes the vhosts the agent writes.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

pub const NGINX: &str = "/usr/sbin/nginx";

pub struct WebSandbox {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// A free loopback port for the sites' HTTPS servers (see [`WebSandbox::agent_toml_acme`]).
    pub https_port: u16,
    running: bool,
}

impl WebSandbox {
    /// Creates the sandbox and starts nginx (stopped on drop).
    pub fn start() -> WebSandbox {
        assert!(
            Path::new(NGINX).exists(),
            "nginx is missing: install nginx-light (.ci/run does)"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.path();
        for sub in [
            "root/etc",
            "root/home",
            "sites",
            "php/8.2/pool.d",
            "run",
            "log",
            "tmp",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        for f in ["passwd", "group", "shadow", "gshadow"] {
            std::fs::write(d.join("root/etc").join(f), "").unwrap();
        }
        // As Debian's: userdel removes the group useradd --user-group made with the user.
        std::fs::write(d.join("root/etc/login.defs"), "USERGROUPS_ENAB yes\n").unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = format!(
            "user root root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/log/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  \
             proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n  \
             uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n  \
             server {{ listen 127.0.0.1:{port} default_server; return 444; }}\n  \
             include {d}/sites/*.conf;\n}}\n",
            d = d.display()
        );
        std::fs::write(d.join("nginx.conf"), conf).unwrap();
        let https_port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut sandbox = WebSandbox {
            dir,
            port,
            https_port,
            running: false,
        };
        let status = Command::new(NGINX)
            .args(sandbox.nginx_args())
            .status()
            .unwrap();
        assert!(status.success(), "nginx did not start");
        sandbox.running = true;
        sandbox
    }

    fn nginx_args(&self) -> Vec<String> {
        let d = self.dir.path().display();
        vec![
            "-p".into(),
            d.to_string(),
            "-e".into(),
            format!("{d}/log/error.log"),
            "-c".into(),
            format!("{d}/nginx.conf"),
        ]
    }

    fn argv_toml(&self, extra: &[&str]) -> String {
        let mut v = vec![format!("\"{NGINX}\"")];
        v.extend(self.nginx_args().iter().map(|a| format!("\"{a}\"")));
        v.extend(extra.iter().map(|a| format!("\"{a}\"")));
        format!("[{}]", v.join(", "))
    }

    /// The agent's `[web]` section for this sandbox (php-fpm is not installed: no pool
    /// checks or reloads).
    pub fn agent_toml(&self) -> String {
        let d = self.dir.path().display();
        format!(
            "[web]\nusers_prefix = \"{d}/root\"\nhome_root = \"/home\"\nsites_dir = \"{d}/sites\"\n\
             log_dir = \"{d}/log\"\npool_dir = \"{d}/php/{{php}}/pool.d\"\nsocket_dir = \"{d}/run\"\n\
             archive_dir = \"{d}/archive\"\nlisten = [\"127.0.0.1:{port}\"]\n\
             nginx_test = {test}\nnginx_reload = {reload}\nphp_fpm_test = []\nphp_fpm_reload = []\n",
            port = self.port,
            test = self.argv_toml(&["-t", "-q"]),
            reload = self.argv_toml(&["-s", "reload"]),
        )
    }

    /// [`WebSandbox::agent_toml`] with HTTPS: sites' certificates from the ACME server at
    /// `directory` (whose own TLS chains to `ca_file`, e.g. pebble's), served on
    /// `https_port`, with certificates and challenges inside the sandbox.
    pub fn agent_toml_acme(&self, directory: &str, ca_file: &Path) -> String {
        let d = self.dir.path().display();
        format!(
            "{}https_port = {}\ncert_dir = \"{d}/certs\"\nchallenge_dir = \"{d}/acme-challenge\"\n\
             acme_directory = \"{directory}\"\nacme_ca_file = \"{}\"\n",
            self.agent_toml(),
            self.https_port,
            ca_file.display(),
        )
    }

    /// `curl https://host:https_port/` resolved to this nginx and trusting only `root` (PEM
    /// file): status and body, or curl's error.
    pub fn get_https(&self, host: &str, root: &Path) -> Result<(u16, String), String> {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", "--cacert"])
            .arg(root)
            .arg("--resolve")
            .arg(format!("{host}:{}:127.0.0.1", self.https_port))
            .args(["-w", "\n%{http_code}"])
            .arg(format!("https://{host}:{}/", self.https_port))
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "curl {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').ok_or("no status")?;
        Ok((code.parse().map_err(|_| "no status")?, body.to_owned()))
    }

    /// Waits until `host` answers `status` over HTTPS with a chain to `root` (a site with a
    /// certificate only redirects on port 80); its body.
    pub fn wait_for_https(&self, host: &str, root: &Path, status: u16) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.get_https(host, root);
            if let Ok((s, body)) = &got
                && *s == status
            {
                return body.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{host} never answered {status} over HTTPS; last: {got:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    /// `GET /` with `Host: host`: status and body; `None` when nginx drops the request.
    pub fn get(&self, host: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    }

    /// Waits (nginx reloads asynchronously) until `host` answers `status` (`None`: is not
    /// served at all); returns the body.
    pub fn wait_for(&self, host: &str, status: Option<u16>) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.get(host);
            match (&got, status) {
                (Some((s, body)), Some(want)) if *s == want => return body.clone(),
                (None, None) => return String::new(),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "{host} never answered {status:?}; last: {got:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The sandbox's passwd line of `user`.
    pub fn passwd_line(&self, user: &str) -> Option<String> {
        self.read("root/etc/passwd")
            .lines()
            .find(|l| l.starts_with(&format!("{user}:")))
            .map(str::to_owned)
    }

    /// `nginx -t` on the sandbox's configuration, as the e2e test's independent check.
    pub fn nginx_config_ok(&self) -> bool {
        Command::new(NGINX)
            .args(self.nginx_args())
            .args(["-t", "-q"])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for WebSandbox {
    fn drop(&mut self) {
        if self.running {
            let _ = Command::new(NGINX)
                .args(self.nginx_args())
                .args(["-s", "stop"])
                .status();
        }
    }
}
