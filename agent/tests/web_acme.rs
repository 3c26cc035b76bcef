//! HTTPS for the web role against a real ACME server: Debian's `pebble` (Let's Encrypt's
//! test CA) with `pebble-challtestsrv` as its DNS (every name → 127.0.0.1), and a real nginx
//! in a temp-dir sandbox answering the HTTP-01 challenges on loopback. Nothing is faked:
//! pebble fetches the challenge from the vhost the agent wrote, and curl checks that the
//! site is served with a chain to pebble's root (fetched from its management port: it
//! changes at every start).
//!
//! The executor is called as a library (`executors::execute`, the daemon's entry).

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command as Process, Stdio},
    time::{Duration, Instant},
};

use mpanel_agent::{config::AgentConfig, executors::execute};
use mpanel_protocol::{
    DomainName, PhpVersion, SystemUser,
    messages::{AgentCommand, AgentMessage, Command, Outcome},
    web::{
        CreateSite, IssueCertificate, IssueCertificateOutput, SetSiteSuspended, TerminateSite,
        TerminateSiteOutput,
    },
};
use mpanel_tests::{pebble::Pebble, request_loop::RequestLoop};

const NGINX: &str = "/usr/sbin/nginx";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `ok` holds five times in a row: after a reload nginx's old worker may still
/// answer a few connections with the old configuration.
fn wait_steady(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let mut streak = 0;
    wait_until(what, within, || {
        streak = if ok() { streak + 1 } else { 0 };
        streak >= 5
    });
}

/// The web role in a temp dir with a running nginx on two free ports (HTTP, HTTPS).
struct Sandbox {
    dir: tempfile::TempDir,
    port: u16,
    https_port: u16,
    config: AgentConfig,
}

impl Sandbox {
    fn new(pebble_directory: &str, pebble_tls_ca: &Path, port: u16) -> Sandbox {
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
            "state",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        for f in ["passwd", "group", "shadow", "gshadow"] {
            std::fs::write(d.join("root/etc").join(f), "").unwrap();
        }
        let https_port = free_port();
        let nginx_conf = format!(
            "user root root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/log/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  \
             proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n  \
             uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n  \
             server {{ listen 127.0.0.1:{port} default_server; return 444; }}\n  \
             include {d}/sites/*.conf;\n}}\n",
            d = d.display()
        );
        std::fs::write(d.join("nginx.conf"), nginx_conf).unwrap();
        let nginx = |args: &[&str]| -> String {
            let mut v: Vec<String> = Self::nginx_args(d)
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect();
            v.insert(0, format!("\"{NGINX}\""));
            v.extend(args.iter().map(|a| format!("\"{a}\"")));
            format!("[{}]", v.join(", "))
        };
        let toml = format!(
            r#"
            roles = ["web"]
            state_dir = "{d}/state"
            [web]
            users_prefix = "{d}/root"
            home_root = "/home"
            sites_dir = "{d}/sites"
            log_dir = "{d}/log"
            pool_dir = "{d}/php/{{php}}/pool.d"
            socket_dir = "{d}/run"
            archive_dir = "{d}/archive"
            listen = ["127.0.0.1:{port}"]
            nginx_test = {test}
            nginx_reload = {reload}
            php_fpm_test = []
            php_fpm_reload = []
            https_port = {https_port}
            cert_dir = "{d}/certs"
            challenge_dir = "{d}/acme-challenge"
            acme_directory = "{pebble_directory}"
            acme_ca_file = "{ca}"
            acme_contact = "mailto:ops@example.test"
            "#,
            d = d.display(),
            ca = pebble_tls_ca.display(),
            test = nginx(&["-t", "-q"]),
            reload = nginx(&["-s", "reload"]),
        );
        let config = AgentConfig::parse(&toml).unwrap();
        let status = Process::new(NGINX)
            .args(Self::nginx_args(d))
            .status()
            .unwrap();
        assert!(status.success(), "nginx did not start");
        Sandbox {
            dir,
            port,
            https_port,
            config,
        }
    }

    fn nginx_args(d: &Path) -> Vec<String> {
        vec![
            "-p".into(),
            d.display().to_string(),
            "-e".into(),
            format!("{}/log/error.log", d.display()),
            "-c".into(),
            format!("{}/nginx.conf", d.display()),
        ]
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    fn mode(&self, rel: &str) -> u32 {
        std::fs::metadata(self.path(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    /// Plain HTTP `GET path` with `Host: host`: status, headers and body.
    fn http(&self, host: &str, path: &str) -> Option<(u16, String, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        Some((status, head.to_owned(), body.to_owned()))
    }

    /// `curl https://host:port/` resolved to the sandbox, trusting only `root`: the status
    /// and body, or curl's error.
    fn https(&self, host: &str, root: &Path) -> Result<(u16, String), String> {
        let out = Process::new("curl")
            .args(["-s", "--max-time", "5", "--http2", "--cacert"])
            .arg(root)
            .arg("--resolve")
            .arg(format!("{host}:{}:127.0.0.1", self.https_port))
            .args(["-w", "\n%{http_code} %{http_version}"])
            .arg(format!("https://{host}:{}/", self.https_port))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!(
                "curl exit {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let (body, tail) = text.rsplit_once('\n').unwrap();
        let (code, version) = tail.split_once(' ').unwrap();
        assert_eq!(version, "2", "HTTP/2 over TLS");
        Ok((code.parse().unwrap(), body.to_owned()))
    }

    /// The serial of the certificate served for `host` (lowercase hex, no leading zeros),
    /// as openssl sees it.
    fn served_serial(&self, host: &str) -> String {
        let mut s_client = Process::new("openssl")
            .args(["s_client", "-connect"])
            .arg(format!("127.0.0.1:{}", self.https_port))
            .args(["-servername", host])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut pem = String::new();
        s_client
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut pem)
            .unwrap();
        s_client.wait().unwrap();
        let mut x509 = Process::new("openssl")
            .args(["x509", "-noout", "-serial"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        x509.stdin
            .take()
            .unwrap()
            .write_all(pem.as_bytes())
            .unwrap();
        let out = x509.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .trim_start_matches("serial=")
            .trim_start_matches('0')
            .to_lowercase()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Process::new(NGINX)
            .args(Self::nginx_args(self.dir.path()))
            .args(["-s", "stop"])
            .status();
    }
}

async fn run<C>(sandbox: &Sandbox, cmd: C) -> Result<C::Output, (String, String)>
where
    C: AgentCommand,
    Command: From<C>,
{
    let outcome = execute(&Command::from(cmd), &sandbox.config).await;
    match &outcome {
        Outcome::Ok { .. } => Ok(outcome.output::<C>().unwrap().unwrap()),
        Outcome::Error { code, message, .. } => {
            Err((code.as_str().to_owned(), message.as_str().to_owned()))
        }
    }
}

fn site(domain: &str) -> (DomainName, SystemUser, PhpVersion) {
    (
        DomainName::parse(domain).unwrap(),
        SystemUser::parse(&domain.replace('.', "").chars().take(16).collect::<String>()).unwrap(),
        PhpVersion::parse("8.2").unwrap(),
    )
}

fn create(domain: &str) -> CreateSite {
    let (domain, system_user, php_version) = site(domain);
    CreateSite {
        domain,
        system_user,
        php_version,
    }
}

fn issue(domain: &str, force: bool) -> IssueCertificate {
    let (domain, system_user, php_version) = site(domain);
    IssueCertificate {
        domain,
        system_user,
        php_version,
        force,
    }
}

fn suspend(domain: &str, suspended: bool) -> SetSiteSuspended {
    let (domain, system_user, php_version) = site(domain);
    SetSiteSuspended {
        domain,
        system_user,
        php_version,
        suspended,
    }
}

fn terminate(domain: &str) -> TerminateSite {
    let (domain, system_user, php_version) = site(domain);
    TerminateSite {
        domain,
        system_user,
        php_version,
    }
}

fn setup(validity_secs: u64) -> (Pebble, Sandbox) {
    let port = free_port();
    let pebble = Pebble::start(port, validity_secs);
    let sandbox = Sandbox::new(&pebble.directory(), &pebble.tls_ca(), port);
    (pebble, sandbox)
}

#[tokio::test]
async fn a_site_gets_a_certificate_that_is_served_kept_renewed_on_demand_and_removed() {
    let (pebble, sb) = setup(3600);
    let domain = "shop.example.test";
    run(&sb, create(domain)).await.unwrap();

    // Issue: pebble fetches the challenges from the site's own vhost.
    let out: IssueCertificateOutput = run(&sb, issue(domain, false)).await.unwrap();
    assert!(out.changed);
    assert_eq!(out.names, [domain, "www.shop.example.test"]);
    assert!(
        out.issuer.contains("Pebble Intermediate CA"),
        "{}",
        out.issuer
    );
    assert!(
        out.serial
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{}",
        out.serial
    );
    let lifetime = out.not_after - out.not_before;
    let due = out.not_before + lifetime * 2 / 3;
    assert!(
        (out.renew_at - due).abs() <= lifetime / 20 + chrono::TimeDelta::seconds(1),
        "renew_at {} vs two thirds {due}",
        out.renew_at
    );

    // The files: key and state 0600 under cert_dir/<domain>, the account 0600 in state_dir.
    assert_eq!(sb.mode("certs/shop.example.test/privkey.pem"), 0o600);
    assert_eq!(sb.mode("certs/shop.example.test/renewal.json"), 0o600);
    assert_eq!(sb.mode("certs/shop.example.test"), 0o700);
    assert_eq!(sb.mode("state/acme-account.json"), 0o600);
    let state = sb.read("certs/shop.example.test/renewal.json");
    assert!(state.contains(&out.serial), "{state}");
    assert!(!state.contains("PRIVATE KEY"));
    let account = sb.read("state/acme-account.json");
    assert!(account.contains(&pebble.directory()), "{account}");

    // HTTPS with a chain to pebble's root, for the apex and www, over HTTP/2.
    let root = pebble.root();
    let (status, body) = sb.https(domain, &root).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("<h1>shop.example.test</h1>"), "{body}");
    assert_eq!(sb.https("www.shop.example.test", &root).unwrap().0, 200);
    assert_eq!(sb.served_serial(domain), out.serial);
    // Only TLS 1.2 and 1.3.
    let old = Process::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            "--tlsv1.1",
            "--tls-max",
            "1.1",
            "--cacert",
        ])
        .arg(&root)
        .arg("--resolve")
        .arg(format!("{domain}:{}:127.0.0.1", sb.https_port))
        .arg(format!("https://{domain}:{}/", sb.https_port))
        .status()
        .unwrap();
    assert!(!old.success(), "TLS 1.1 was accepted");

    // Plain HTTP redirects to HTTPS, except the challenge path.
    wait_steady("the redirect", Duration::from_secs(10), || {
        sb.http(domain, "/").is_some_and(|(s, _, _)| s == 301)
    });
    let (status, head, _) = sb.http(domain, "/some/page?x=1").unwrap();
    assert_eq!(status, 301, "{head}");
    assert!(
        head.contains(&format!(
            "Location: https://{domain}:{}/some/page?x=1",
            sb.https_port
        )),
        "{head}"
    );
    let probe = sb.path("acme-challenge/.well-known/acme-challenge/probe-token");
    std::fs::write(&probe, "probe-answer").unwrap();
    let (status, head, body) = sb
        .http(domain, "/.well-known/acme-challenge/probe-token")
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "probe-answer"), "{head}");
    assert!(head.contains("Content-Type: text/plain"), "{head}");
    // The challenge responses of the order itself are gone.
    let left: Vec<_> = std::fs::read_dir(sb.path("acme-challenge/.well-known/acme-challenge"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["probe-token"]);
    std::fs::remove_file(&probe).unwrap();

    // Again: kept, no new order.
    let again: IssueCertificateOutput = run(&sb, issue(domain, false)).await.unwrap();
    assert!(!again.changed);
    assert_eq!(again.serial, out.serial);
    assert_eq!(again.renew_at, out.renew_at);

    // Forced: a new serial, and requests all along see no error.
    let requests = RequestLoop::start(domain, sb.https_port, &root);
    // Requests run before, during and after the renewal: a few answered on each side.
    requests.wait_more("requests before the renewal", 4).await;
    let forced: IssueCertificateOutput = run(&sb, issue(domain, true)).await.unwrap();
    requests.wait_more("requests after the renewal", 4).await;
    let (ok, errors) = requests.stop();
    assert!(forced.changed);
    assert_ne!(forced.serial, out.serial);
    assert_eq!(sb.served_serial(domain), forced.serial);
    assert!(ok >= 3, "too few requests to mean anything");
    assert!(errors.is_empty(), "{errors:?}");

    // Suspended: the suspended page on both ports; the challenge still answers on HTTP.
    run(&sb, suspend(domain, true)).await.unwrap();
    wait_steady(
        "the suspended page on HTTPS",
        Duration::from_secs(10),
        || sb.https(domain, &root).is_ok_and(|(s, _)| s == 503),
    );
    let (_, body) = sb.https(domain, &root).unwrap();
    assert!(body.contains("This site is suspended"), "{body}");
    let (status, _, body) = sb.http(domain, "/").unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("This site is suspended"), "{body}");
    std::fs::write(&probe, "still-here").unwrap();
    let (status, _, body) = sb
        .http(domain, "/.well-known/acme-challenge/probe-token")
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "still-here"));
    std::fs::remove_file(&probe).unwrap();
    // A suspended site's certificate is kept (and still checked).
    let kept: IssueCertificateOutput = run(&sb, issue(domain, false)).await.unwrap();
    assert!(!kept.changed);
    assert_eq!(kept.serial, forced.serial);

    // Served again.
    run(&sb, suspend(domain, false)).await.unwrap();
    wait_steady("the site on HTTPS again", Duration::from_secs(10), || {
        sb.https(domain, &root).is_ok_and(|(s, _)| s == 200)
    });

    // Terminate: certificate, key and renewal state go with the site.
    let out: TerminateSiteOutput = run(&sb, terminate(domain)).await.unwrap();
    assert!(out.removed);
    assert!(!sb.path("certs/shop.example.test").exists());
    assert!(!sb.path("sites/shop.example.test.conf").exists());
    wait_steady("HTTPS no longer served", Duration::from_secs(10), || {
        sb.https(domain, &root).is_err()
    });
    // The account stays for the next site.
    assert!(sb.path("state/acme-account.json").exists());
}

#[tokio::test]
async fn a_challenge_the_ca_cannot_reach_fails_clearly_and_the_site_stays_on_http() {
    let (pebble, sb) = setup(3600);
    let domain = "broken.example.test";
    run(&sb, create(domain)).await.unwrap();
    // The name's DNS points where nothing answers: the CA cannot fetch the challenge.
    pebble.point(domain, "127.0.0.2");

    let (code, message) = run(&sb, issue(domain, false)).await.unwrap_err();
    assert_eq!(code, "acme_challenge_failed", "{message}");
    assert!(message.contains("HTTP-01"), "{message}");
    assert!(message.contains("broken.example.test"), "{message}");

    // Nothing of HTTPS was installed; the site serves on HTTP as before.
    assert!(!sb.path("certs/broken.example.test/fullchain.pem").exists());
    assert!(!sb.path("certs/broken.example.test/privkey.pem").exists());
    let vhost = sb.read("sites/broken.example.test.conf");
    assert!(!vhost.contains("ssl"), "{vhost}");
    let (status, _, body) = sb.http(domain, "/").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("<h1>broken.example.test</h1>"), "{body}");

    // A site that does not exist has no certificate to get.
    let (code, _) = run(&sb, issue("nosite.example.test", false))
        .await
        .unwrap_err();
    assert_eq!(code, "site_not_found");

    // An ACME server that does not answer: retryable, and says so.
    let mut sb = sb;
    let directory = sb.config.web.acme_directory.clone();
    sb.config.web.acme_directory = format!("https://127.0.0.1:{}/dir", free_port())
        .parse()
        .unwrap();
    let outcome = execute(&Command::from(issue(domain, false)), &sb.config).await;
    let Outcome::Error {
        code,
        message,
        retryable,
    } = outcome
    else {
        panic!("issued without a CA: {outcome:?}");
    };
    assert_eq!(code.as_str(), "acme_unavailable", "{}", message.as_str());
    assert!(retryable);
    assert!(
        message.as_str().contains("onnection refused"),
        "{}",
        message.as_str()
    );
    sb.config.web.acme_directory = directory;

    // A challenge directory the agent cannot write: a clear error, the site untouched.
    std::fs::write(sb.path("not-a-dir"), "").unwrap();
    sb.config.web.challenge_dir = sb.path("not-a-dir/acme");
    pebble.point(domain, "127.0.0.1");
    let (code, message) = run(&sb, issue(domain, false)).await.unwrap_err();
    assert_eq!(code, "web_io_failed", "{message}");
    assert!(message.contains("not-a-dir"), "{message}");
    assert_eq!(sb.http(domain, "/").unwrap().0, 200);
}

#[tokio::test]
async fn the_renewal_task_renews_at_two_thirds_of_the_lifetime() {
    // 30 s certificates: due after 20 s (±1.5 s).
    let (pebble, sb) = setup(30);
    let domain = "renew.example.test";
    run(&sb, create(domain)).await.unwrap();
    let first: IssueCertificateOutput = run(&sb, issue(domain, false)).await.unwrap();
    assert!(first.renew_at > chrono::Utc::now());

    let shutdown = tokio_util::sync::CancellationToken::new();
    let (reports, mut reported) = tokio::sync::mpsc::channel(8);
    let task = tokio::spawn(mpanel_agent::roles::web::renew_certificates(
        sb.config.web.clone(),
        sb.config.state_dir.clone(),
        reports,
        shutdown.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    let renewed = loop {
        let state: serde_json::Value =
            serde_json::from_str(&sb.read("certs/renew.example.test/renewal.json")).unwrap();
        if state["serial"] != first.serial.as_str() {
            break state;
        }
        assert!(Instant::now() < deadline, "not renewed: {state}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        chrono::Utc::now() >= first.renew_at,
        "renewed before renew_at"
    );
    assert_eq!(renewed["failures"], 0);
    let serial = renewed["serial"].as_str().unwrap().to_owned();
    assert_eq!(sb.served_serial(domain), serial);
    let root = pebble.root();
    assert_eq!(sb.https(domain, &root).unwrap().0, 200);

    // The panel is sent what became of it, and until it was, the state says so.
    let status = match reported.recv().await {
        Some(AgentMessage::CertificateStatus(s)) => s,
        other => panic!("expected a certificate status, got {other:?}"),
    };
    assert_eq!(status.domain.as_str(), domain);
    assert_eq!(status.serial.as_str(), serial);
    assert_eq!(status.failures, 0);
    assert!(status.last_error.is_none());
    assert!(
        status.issuer.as_str().to_lowercase().contains("pebble"),
        "{status:?}"
    );
    let waiting = mpanel_agent::roles::web::unreported(&sb.config.web);
    assert_eq!(waiting, std::slice::from_ref(&status), "not reported yet");
    mpanel_agent::roles::web::mark_reported(&sb.config.web, &status).await;
    assert!(mpanel_agent::roles::web::unreported(&sb.config.web).is_empty());

    // A renewal that fails is reported with its reason and when it is tried again.
    pebble.point(domain, "127.0.0.2");
    pebble.point(&format!("www.{domain}"), "127.0.0.2");
    let failed = match tokio::time::timeout(Duration::from_secs(60), reported.recv()).await {
        Ok(Some(AgentMessage::CertificateStatus(s))) => s,
        other => panic!("expected a certificate status, got {other:?}"),
    };
    assert_eq!(
        failed.serial.as_str(),
        serial,
        "the old one is still served"
    );
    assert_eq!(failed.failures, 1);
    let error = failed.last_error.as_ref().unwrap().as_str().to_owned();
    assert!(error.contains("acme_challenge_failed"), "{error}");
    assert!(failed.next_attempt_at > failed.recorded_at, "{failed:?}");
    shutdown.cancel();
    task.await.unwrap();
}
