//! The web role in a temp-dir sandbox: users are made by the real `useradd --prefix` in the
//! sandbox's own `/etc/passwd`, vhosts are checked by the real `nginx -t`, and a real nginx
//! started from a private config (loopback port) serves the site, the suspended page and
//! nothing once the site is terminated.
//!
//! The executor is called as a library (`executors::execute`, the same entry the daemon
//! uses, role checks included).

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command as Process,
    time::{Duration, Instant},
};

use mpanel_agent::{config::AgentConfig, executors::execute};
use mpanel_protocol::{
    DomainName, PhpVersion, SystemUser,
    messages::{AgentCommand, Command, Outcome},
    web::{
        CreateSite, CreateSiteOutput, SetSiteSuspended, SetSiteSuspendedOutput, TerminateSite,
        TerminateSiteOutput,
    },
};

const NGINX: &str = "/usr/sbin/nginx";

struct Sandbox {
    dir: tempfile::TempDir,
    port: u16,
    config: AgentConfig,
    nginx_running: bool,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sandbox {
    fn new(extra_listen: Option<&str>) -> Sandbox {
        Sandbox::build(extra_listen, None)
    }

    /// A sandbox whose `nginx_test` first runs `script` (sh; `$D` is the sandbox) and then
    /// the real `nginx -t`, unless the script exits.
    fn with_test_script(script: &str) -> Sandbox {
        Sandbox::build(None, Some(script))
    }

    fn build(extra_listen: Option<&str>, test_script: Option<&str>) -> Sandbox {
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
        let port = free_port();
        let nginx_conf = format!(
            "user root root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/log/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  \
             proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n  \
             uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n  \
             server {{ listen 127.0.0.1:{port} default_server; return 444; }}\n  \
             include {d}/sites/*.conf;\n}}\n",
            d = d.display()
        );
        std::fs::write(d.join("nginx.conf"), nginx_conf).unwrap();
        let nginx = |args: &[&str]| -> String {
            let mut v = vec![
                format!("\"{NGINX}\""),
                "\"-p\"".into(),
                format!("\"{}\"", d.display()),
                "\"-e\"".into(),
                format!("\"{}/log/error.log\"", d.display()),
                "\"-c\"".into(),
                format!("\"{}/nginx.conf\"", d.display()),
            ];
            v.extend(args.iter().map(|a| format!("\"{a}\"")));
            format!("[{}]", v.join(", "))
        };
        let test = match test_script {
            None => nginx(&["-t", "-q"]),
            Some(script) => {
                // sh -c SCRIPT ARG0 ARGS…: the real nginx -t is "$0" "$@".
                let script = format!("D={}; {script}; exec \"$0\" \"$@\"", d.display());
                let inner = nginx(&["-t", "-q"]);
                format!("[\"/bin/sh\", \"-c\", {script:?}, {}", &inner[1..])
            }
        };
        let mut listen = vec![format!("\"127.0.0.1:{port}\"")];
        listen.extend(extra_listen.map(|l| format!("\"{l}\"")));
        let toml = format!(
            r#"
            roles = ["web"]
            [web]
            users_prefix = "{d}/root"
            home_root = "/home"
            sites_dir = "{d}/sites"
            log_dir = "{d}/log"
            pool_dir = "{d}/php/{{php}}/pool.d"
            socket_dir = "{d}/run"
            archive_dir = "{d}/archive"
            listen = [{listen}]
            nginx_test = {test}
            nginx_reload = {reload}
            php_fpm_test = []
            php_fpm_reload = []
            "#,
            d = d.display(),
            listen = listen.join(", "),
            reload = nginx(&["-s", "reload"]),
        );
        let config = AgentConfig::parse(&toml).unwrap();
        Sandbox {
            dir,
            port,
            config,
            nginx_running: false,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    fn start_nginx(&mut self) {
        let d = self.dir.path();
        let status = Process::new(NGINX)
            .arg("-p")
            .arg(d)
            .arg("-e")
            .arg(d.join("log/error.log"))
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .status()
            .unwrap();
        assert!(
            status.success(),
            "nginx did not start: {}",
            self.read("log/error.log")
        );
        self.nginx_running = true;
    }

    /// `GET /` with `Host: host`: the status code and body.
    fn get(&self, host: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    }

    /// Waits (nginx reloads asynchronously) until `GET` answers `status`.
    fn wait_for_status(&self, host: &str, status: u16) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.get(host);
            if let Some((s, body)) = &got
                && *s == status
            {
                return body.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{host} never answered {status}; last: {got:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until nginx no longer serves `host` (the catch-all server drops the request).
    fn wait_until_not_served(&self, host: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(got) = self.get(host) {
            assert!(Instant::now() < deadline, "{host} is still served: {got:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn passwd_line(&self, user: &str) -> Option<String> {
        self.read("root/etc/passwd")
            .lines()
            .find(|l| l.starts_with(&format!("{user}:")))
            .map(str::to_owned)
    }

    fn shadow_line(&self, user: &str) -> Option<String> {
        self.read("root/etc/shadow")
            .lines()
            .find(|l| l.starts_with(&format!("{user}:")))
            .map(str::to_owned)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.nginx_running {
            let d = self.dir.path();
            let _ = Process::new(NGINX)
                .arg("-p")
                .arg(d)
                .arg("-e")
                .arg(d.join("log/error.log"))
                .arg("-c")
                .arg(d.join("nginx.conf"))
                .args(["-s", "stop"])
                .status();
        }
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

fn site(domain: &str, user: &str) -> (DomainName, SystemUser, PhpVersion) {
    (
        DomainName::parse(domain).unwrap(),
        SystemUser::parse(user).unwrap(),
        PhpVersion::parse("8.2").unwrap(),
    )
}

fn create(domain: &str, user: &str) -> CreateSite {
    let (domain, system_user, php_version) = site(domain, user);
    CreateSite {
        domain,
        system_user,
        php_version,
    }
}

fn suspend(domain: &str, user: &str, suspended: bool) -> SetSiteSuspended {
    let (domain, system_user, php_version) = site(domain, user);
    SetSiteSuspended {
        domain,
        system_user,
        php_version,
        suspended,
    }
}

fn terminate(domain: &str, user: &str) -> TerminateSite {
    let (domain, system_user, php_version) = site(domain, user);
    TerminateSite {
        domain,
        system_user,
        php_version,
    }
}

#[tokio::test]
async fn a_site_is_created_served_suspended_unsuspended_and_terminated() {
    let mut sb = Sandbox::new(None);
    sb.start_nginx();

    let out: CreateSiteOutput = run(&sb, create("example.com", "examplecom")).await.unwrap();
    assert!(out.changed);
    assert_eq!(out.home_dir, "/home/examplecom");
    assert_eq!(out.document_root, "/home/examplecom/public_html");
    let passwd = sb.passwd_line("examplecom").expect("the user exists");
    assert!(passwd.ends_with(":/home/examplecom:/bin/bash"), "{passwd}");
    let home = sb.path("root/home/examplecom");
    let mode = std::fs::metadata(&home).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o711);
    let vhost = sb.read("sites/example.com.conf");
    assert!(
        vhost.contains("server_name example.com www.example.com;"),
        "{vhost}"
    );
    assert!(vhost.contains(&format!("root {}/public_html;", home.display())));
    let pool = sb.read("php/8.2/pool.d/examplecom.conf");
    assert!(pool.contains("[examplecom]") && pool.contains("php8.2-fpm-examplecom.sock"));
    let body = sb.wait_for_status("example.com", 200);
    assert!(body.contains("<h1>example.com</h1>"), "{body}");
    sb.wait_for_status("www.example.com", 200);

    // Again: nothing to do, and the customer's own page is never overwritten.
    std::fs::write(home.join("public_html/index.html"), "customer page").unwrap();
    let again: CreateSiteOutput = run(&sb, create("example.com", "examplecom")).await.unwrap();
    assert!(!again.changed);
    assert_eq!(
        sb.read("root/home/examplecom/public_html/index.html"),
        "customer page"
    );

    // Suspend: the suspended page, and the account can no longer log in.
    let out: SetSiteSuspendedOutput = run(&sb, suspend("example.com", "examplecom", true))
        .await
        .unwrap();
    assert!(out.suspended && out.changed);
    let body = sb.wait_for_status("example.com", 503);
    assert!(body.contains("This site is suspended"), "{body}");
    let passwd = sb.passwd_line("examplecom").unwrap();
    assert!(passwd.ends_with(":/usr/sbin/nologin"), "{passwd}");
    let shadow = sb.shadow_line("examplecom").unwrap();
    assert_eq!(shadow.split(':').nth(7), Some("1"), "expired: {shadow}");
    assert_eq!(
        sb.read("root/home/examplecom/public_html/index.html"),
        "customer page"
    );
    let again: SetSiteSuspendedOutput = run(&sb, suspend("example.com", "examplecom", true))
        .await
        .unwrap();
    assert!(!again.changed);

    // Unsuspend: served again, login restored.
    let out: SetSiteSuspendedOutput = run(&sb, suspend("example.com", "examplecom", false))
        .await
        .unwrap();
    assert!(!out.suspended && out.changed);
    let body = sb.wait_for_status("example.com", 200);
    assert_eq!(body, "customer page");
    assert!(
        sb.passwd_line("examplecom")
            .unwrap()
            .ends_with(":/bin/bash")
    );
    assert_eq!(
        sb.shadow_line("examplecom").unwrap().split(':').nth(7),
        Some("")
    );

    // Terminate: archived first, then everything removed.
    let out: TerminateSiteOutput = run(&sb, terminate("example.com", "examplecom"))
        .await
        .unwrap();
    assert!(out.removed);
    let archive = PathBuf::from(out.archive.expect("an archive"));
    assert!(archive.starts_with(sb.path("archive")), "{archive:?}");
    assert_eq!(
        std::fs::metadata(&archive).unwrap().len(),
        out.archive_bytes.unwrap()
    );
    let listing = Process::new("tar")
        .args(["--use-compress-program=zstd", "-tf"])
        .arg(&archive)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("examplecom/public_html/index.html"),
        "{listing}"
    );
    assert!(sb.passwd_line("examplecom").is_none());
    assert!(!home.exists());
    assert!(!sb.path("sites/example.com.conf").exists());
    assert!(!sb.path("php/8.2/pool.d/examplecom.conf").exists());
    sb.wait_until_not_served("example.com");
    let again: TerminateSiteOutput = run(&sb, terminate("example.com", "examplecom"))
        .await
        .unwrap();
    assert!(!again.removed && again.archive.is_none());
}

#[tokio::test]
async fn a_vhost_nginx_refuses_is_rolled_back_with_the_user() {
    // `listen nonexistent.invalid` makes `nginx -t` fail on the new vhost.
    let sb = Sandbox::new(Some("nonexistent.invalid:80"));
    let before_passwd = sb.read("root/etc/passwd");
    let (code, message) = run(&sb, create("example.org", "exampleorg"))
        .await
        .unwrap_err();
    assert_eq!(code, "nginx_config_invalid", "{message}");
    assert!(message.contains("nonexistent.invalid"), "{message}");
    assert!(!sb.path("sites/example.org.conf").exists());
    assert!(!sb.path("php/8.2/pool.d/exampleorg.conf").exists());
    assert_eq!(
        sb.read("root/etc/passwd"),
        before_passwd,
        "the user was removed again"
    );
    assert!(!sb.path("root/home/exampleorg").exists());
}

#[tokio::test]
async fn unsafe_paths_missing_tools_and_unknown_php_are_refused() {
    let mut sb = Sandbox::new(None);
    sb.start_nginx();

    // A symlink where the document root goes is not followed.
    run(&sb, create("example.net", "examplenet")).await.unwrap();
    let docroot = sb.path("root/home/examplenet/public_html");
    std::fs::remove_dir_all(&docroot).unwrap();
    std::os::unix::fs::symlink("/etc", &docroot).unwrap();
    std::fs::remove_file(sb.path("sites/example.net.conf")).unwrap();
    let (code, _) = run(&sb, create("example.net", "examplenet"))
        .await
        .unwrap_err();
    assert_eq!(code, "web_unsafe_path");
    assert!(!Path::new("/etc/index.html").exists());
    assert!(!sb.path("sites/example.net.conf").exists(), "rolled back");

    // A PHP version this host does not have.
    let mut cmd = create("example.net", "examplenet");
    cmd.php_version = PhpVersion::parse("7.4").unwrap();
    let (code, message) = run(&sb, cmd).await.unwrap_err();
    assert_eq!(code, "php_version_unavailable", "{message}");

    // A site that does not exist cannot be suspended.
    let (code, _) = run(&sb, suspend("nothere.com", "nothere", true))
        .await
        .unwrap_err();
    assert_eq!(code, "site_not_found");

    // Missing tools: the role refuses every command, naming what is missing.
    sb.config.web.useradd = PathBuf::from("/nonexistent/useradd");
    let (code, message) = run(&sb, create("example.com", "examplecom"))
        .await
        .unwrap_err();
    assert_eq!(code, "role_unavailable");
    assert!(message.contains("/nonexistent/useradd"), "{message}");
    assert!(sb.passwd_line("examplecom").is_none());
}

#[test]
fn commands_that_could_escape_are_refused_before_execution() {
    let valid = serde_json::to_value(Command::from(create("example.com", "examplecom"))).unwrap();
    for (field, bad) in [
        ("domain", "a.com;rm -rf /"),
        ("domain", "../etc"),
        ("domain", "example.com\nserver { }"),
        ("domain", "ex\u{0430}mple.com"),
        ("systemUser", "../root"),
        ("systemUser", "root"),
        ("systemUser", "a\nb"),
        ("phpVersion", "8.2/../../x"),
    ] {
        let mut v = valid.clone();
        v[field] = serde_json::Value::String(bad.to_owned());
        assert!(
            serde_json::from_value::<Command>(v).is_err(),
            "{field} = {bad:?} was accepted"
        );
    }
}

/// How many times the sandbox's `nginx_test` ran (see the script of the tests below).
fn checks(sb: &Sandbox) -> usize {
    std::fs::read_to_string(sb.path("checks.log"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// Counts each `nginx -t` and refuses any vhost for `bad.example`, as nginx would a vhost
/// it cannot load.
const COUNT_AND_REFUSE_BAD: &str = "echo check >> \"$D/checks.log\"; \
    if grep -qs 'server_name bad.example' \"$D\"/sites/*.conf; then \
    echo 'nginx: [emerg] bad.example cannot be loaded' >&2; exit 1; fi";

/// `CreateSite` for each domain (user `site<i>`), all sent at once.
async fn create_together(
    sb: &Sandbox,
    domains: &[String],
) -> Vec<Result<CreateSiteOutput, (String, String)>> {
    futures_util::future::join_all(
        domains
            .iter()
            .enumerate()
            .map(|(i, d)| run(sb, create(d, &format!("site{i}")))),
    )
    .await
}

#[tokio::test]
async fn sites_created_together_share_one_check_and_reload_and_each_answers() {
    let mut sb = Sandbox::with_test_script(COUNT_AND_REFUSE_BAD);
    sb.start_nginx();
    let domains: Vec<String> = (1..=6).map(|i| format!("site{i}.example")).collect();
    let results = create_together(&sb, &domains).await;
    for (domain, result) in domains.iter().zip(&results) {
        let out = result
            .as_ref()
            .unwrap_or_else(|e| panic!("{domain}: {e:?}"));
        assert!(out.changed, "{domain}");
        let body = sb.wait_for_status(domain, 200);
        assert!(body.contains(&format!("<h1>{domain}</h1>")), "{body}");
    }
    // The first runs alone; the five that queued behind it share the next check.
    let n = checks(&sb);
    assert!(
        (1..=2).contains(&n),
        "6 sites made together ran nginx -t {n} times"
    );

    // Made again together: nothing changes, each says so, and nginx is neither checked nor
    // reloaded.
    let again = create_together(&sb, &domains).await;
    assert!(again.iter().all(|r| r.as_ref().is_ok_and(|o| !o.changed)));
    assert_eq!(checks(&sb), n);
}

#[tokio::test]
async fn a_site_nginx_refuses_fails_alone_when_created_together_with_others() {
    let mut sb = Sandbox::with_test_script(COUNT_AND_REFUSE_BAD);
    sb.start_nginx();
    let before_passwd = sb.read("root/etc/passwd");
    let sites = [
        ("first.example", "first"),
        ("bad.example", "badexample"),
        ("good.example", "goodexample"),
        ("other.example", "otherexample"),
    ];
    let results =
        futures_util::future::join_all(sites.iter().map(|(d, u)| run(&sb, create(d, u)))).await;
    for ((domain, user), result) in sites.iter().zip(&results) {
        if *domain == "bad.example" {
            let (code, message) = result.as_ref().unwrap_err();
            assert_eq!(code, "nginx_config_invalid", "{message}");
            assert!(
                message.contains("bad.example cannot be loaded"),
                "{message}"
            );
            assert!(!sb.path("sites/bad.example.conf").exists());
            assert!(!sb.path("php/8.2/pool.d/badexample.conf").exists());
            assert!(sb.passwd_line(user).is_none(), "the user was removed again");
            assert!(!sb.path("root/home/badexample").exists());
        } else {
            let out = result
                .as_ref()
                .unwrap_or_else(|e| panic!("{domain}: {e:?}"));
            assert!(out.changed);
            sb.wait_for_status(domain, 200);
            assert!(sb.passwd_line(user).is_some());
        }
    }
    let users: Vec<String> = sb
        .read("root/etc/passwd")
        .lines()
        .filter(|l| !before_passwd.contains(*l))
        .map(|l| l.split(':').next().unwrap().to_owned())
        .collect();
    assert_eq!(users, ["first", "goodexample", "otherexample"]);
}
