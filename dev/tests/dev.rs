//! `mpanel-dev`, README's first command, run as a user would: it becomes ready with a live
//! site (nginx) — on HTTPS too, with a certificate chaining to a local pebble's root, where
//! pebble is installed (CI installs it) — zone (PowerDNS, `dig`) and welcome e-mail whose
//! mailbox password opens the mailbox over IMAP (Dovecot); Ctrl-C then leaves nothing behind
//! — no process (pebble's neither), database, Redis key or file. And both binaries print
//! shell completions naming their subcommands.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use mpanel_tests::{
    dovecot::imap_login,
    panel::{command, http_client, redis_url},
    pebble::{CHALLTESTSRV, PEBBLE},
    smtp::Received,
    wait_for,
};
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Start-up includes enrolling three agents; the target is a minute on a quiet machine.
const READY: Duration = Duration::from_secs(120);

/// The value of the first printed line `key: value`.
fn value<'a>(lines: &'a [String], key: &str) -> &'a str {
    let prefix = format!("{key}: ");
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("mpanel-dev printed no '{key}:' line:\n{}", lines.join("\n")))
}

/// The word after `marker` in `text`.
fn after<'a>(text: &'a str, marker: &str) -> &'a str {
    let rest = &text[text
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in {text:?}"))
        + marker.len()..];
    rest.split_whitespace().next().unwrap_or("")
}

/// `GET /` through nginx with `Host: host`: the head (status line and headers) and body.
fn http_get(port: u16, host: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_owned(), body.to_owned())
}

/// Whether the site gets HTTPS from a local pebble (the demo says so when it is missing).
fn pebble_installed() -> bool {
    [PEBBLE, CHALLTESTSRV]
        .iter()
        .all(|tool| Path::new(tool).exists())
}

/// A shell command the demo printed, run as printed with `extra` appended: its stdout, or
/// its failure.
fn run_printed(command: &str, extra: &str) -> Result<String, String> {
    let ran = std::process::Command::new("sh")
        .args(["-c", &format!("{command} {extra}")])
        .output()
        .expect("sh runs");
    if !ran.status.success() {
        return Err(format!(
            "{command}: {}: {}",
            ran.status,
            String::from_utf8_lossy(&ran.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&ran.stdout).into_owned())
}

/// The live processes running pebble or its DNS that were started under `workdir` (their
/// environment's TMPDIR), whoever started them.
fn pebbles_under(workdir: &Path) -> Vec<i32> {
    let tmpdir = format!("TMPDIR={}", workdir.display()).into_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe == Path::new(PEBBLE) || exe == Path::new(CHALLTESTSRV))
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == tmpdir))
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// Whether `pid` is still a live process (a zombie awaiting its reaper is not).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A caught e-mail file (`X-Envelope-*` lines above the message) as the harness's type.
fn read_eml(path: &Path) -> Received {
    let file = std::fs::read_to_string(path).expect("the welcome e-mail file");
    let (from_line, rest) = file.split_once("\r\n").unwrap();
    let (to_line, data) = rest.split_once("\r\n").unwrap();
    Received {
        mail_from: from_line.trim_start_matches("X-Envelope-From: ").to_owned(),
        rcpt_to: vec![to_line.trim_start_matches("X-Envelope-To: ").to_owned()],
        data: data.to_owned(),
    }
}

/// A running `mpanel-dev --no-build …`: what it printed so far, and Ctrl-C for it. Dropped
/// early (a failed assertion) it still gets Ctrl-C and is waited for, so that it cleans up
/// (killing it would leave its processes and database behind).
struct DevRun {
    child: tokio::process::Child,
    pid: Option<i32>,
    lines: Arc<Mutex<Vec<String>>>,
    closed: Arc<AtomicBool>,
    reader: Option<tokio::task::JoinHandle<()>>,
    _here: tempfile::TempDir,
}

impl DevRun {
    fn start(args: &[&str]) -> DevRun {
        let here = tempfile::tempdir().unwrap();
        let mut cmd = command("mpanel-dev", here.path());
        let mut child = cmd
            .kill_on_drop(false)
            .arg("--no-build")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mpanel-dev");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (sink, eof) = (lines.clone(), closed.clone());
        let stdout = child.stdout.take().unwrap();
        let reader = tokio::spawn(async move {
            let mut out = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = out.next_line().await {
                eprintln!("[mpanel-dev] {line}");
                sink.lock().unwrap().push(line);
            }
            eof.store(true, Ordering::SeqCst);
        });
        DevRun {
            pid: child.id().map(|p| p as i32),
            child,
            lines,
            closed,
            reader: Some(reader),
            _here: here,
        }
    }

    fn printed(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for the ready line; returns every line printed up to it.
    async fn ready(&self) -> Vec<String> {
        wait_for("mpanel-dev to say it is ready", READY, || async {
            let out = self.printed();
            let ready = out.iter().any(|l| l.contains("mpanel dev: ready"));
            assert!(
                ready || !self.closed.load(Ordering::SeqCst),
                "mpanel-dev exited before it was ready (its logs are above)"
            );
            ready.then_some(out)
        })
        .await
    }

    /// Ctrl-C, then its exit status; every line it printed is then in `printed()`.
    async fn interrupt(&mut self) -> std::process::ExitStatus {
        let pid = self.pid.take().expect("mpanel-dev is running");
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("mpanel-dev exited within 60s of Ctrl-C")
            .unwrap();
        if let Some(reader) = self.reader.take() {
            reader.await.unwrap();
        }
        status
    }
}

impl Drop for DevRun {
    fn drop(&mut self) {
        let Some(pid) = self.pid else { return };
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test]
async fn mpanel_dev_shows_a_live_site_zone_and_mailbox_and_leaves_nothing_behind() {
    let mut dev = DevRun::start(&[]);
    let out = dev.ready().await;
    for role in ["web", "dns", "mail"] {
        assert!(
            !out.iter()
                .any(|l| l.starts_with(&format!("{role}:")) && l.contains("simulated")),
            "{role} was simulated though its tools are installed (.ci/run installs them):\n{}",
            out.join("\n")
        );
    }

    // The site, through the nginx it names, with the Host header it names: served, or with
    // a certificate redirected to its HTTPS.
    let https = pebble_installed();
    let site = value(&out, "site");
    let domain = after(site, "Host: ").trim_end_matches('\'').to_owned();
    let web_port: u16 = after(site, "http://127.0.0.1:")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let (head, body) = http_get(web_port, &domain);
    if https {
        assert!(head.starts_with("HTTP/1.1 301 "), "{head}");
        assert!(
            head.contains(&format!("Location: https://{domain}:")),
            "{head}"
        );
    } else {
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(body.contains(&domain), "{body}");
    }
    let workdir = PathBuf::from(value(&out, "workdir"));

    // HTTPS, with the curl it prints: for the apex and www, verified against the root it
    // names, which is pebble's and lives in the work directory.
    let https_line = value(&out, "https");
    if https {
        let root = PathBuf::from(after(https_line, "--cacert "));
        assert!(root.starts_with(&workdir), "{https_line}");
        let subject = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-in"])
            .arg(&root)
            .output()
            .expect("openssl runs");
        let subject = String::from_utf8_lossy(&subject.stdout);
        assert!(
            subject.contains("Pebble Root CA"),
            "{}: {subject}",
            root.display()
        );
        for host in [domain.clone(), format!("www.{domain}")] {
            let command = https_line.replace(&domain, &host);
            let answer = run_printed(&command, "-sS -w '\\n%{http_code}'").unwrap();
            let (body, status) = answer.rsplit_once('\n').unwrap();
            assert_eq!(status, "200", "{command}: {answer}");
            assert!(body.contains(&domain), "{command}: {body}");
        }
        let certificate = value(&out, "certificate");
        assert!(certificate.starts_with("ACTIVE, "), "{certificate}");
        assert!(certificate.contains("Pebble"), "{certificate}");
        assert!(
            certificate.contains(&format!(" for {domain} www.{domain},")),
            "{certificate}"
        );
    } else {
        assert!(
            https_line.starts_with("off, ") && https_line.contains("pebble"),
            "{https_line}"
        );
    }

    // The zone, from the PowerDNS it names.
    let zone = value(&out, "zone");
    let dns_port = after(zone, "-p ");
    let dig = std::process::Command::new("dig")
        .args([
            "+short",
            "+time=2",
            "+tries=2",
            "@127.0.0.1",
            "-p",
            dns_port,
        ])
        .args([domain.as_str(), "SOA"])
        .output()
        .expect("dig runs");
    let soa = String::from_utf8_lossy(&dig.stdout);
    assert!(soa.starts_with("ns1."), "SOA of {domain}: {soa:?}");

    // The welcome e-mail, in the file it names, with the mailbox's password, which opens
    // that mailbox over IMAP (and a wrong one does not).
    let mail_path = PathBuf::from(value(&out, "welcome e-mail").split(' ').next().unwrap());
    let mail = read_eml(&mail_path);
    assert!(mail.subject().contains(&domain), "{}", mail.subject());
    let text = mail.text();
    let scheme = if https { "https" } else { "http" };
    assert!(
        text.contains(&format!("Address:      {scheme}://{domain}/")),
        "{text}"
    );
    let mailbox = format!("info@{domain}");
    let password = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix(&format!("Mailbox {mailbox}: password "))
        })
        .unwrap_or_else(|| panic!("no mailbox password in the welcome e-mail:\n{text}"))
        .trim()
        .to_owned();
    let imap = value(&out, "imap");
    assert!(imap.contains(&format!("'{mailbox}:{password}'")), "{imap}");
    let imap_port: u16 = after(imap, "imap://127.0.0.1:")
        .trim_end_matches("/INBOX")
        .parse()
        .unwrap();
    imap_login(imap_port, &mailbox, &password).expect("IMAP login with the e-mailed password");
    assert!(imap_login(imap_port, &mailbox, "not-the-password").is_err());

    // The lifecycle commands it prints work as printed: a failed payment, then a payment.
    for (key, status) in [("payment failed", "PAST_DUE"), ("payment", "ACTIVE")] {
        let command = value(&out, key);
        let ran = std::process::Command::new("sh")
            .args(["-c", command])
            .output()
            .expect("sh runs");
        let answer: serde_json::Value = serde_json::from_slice(&ran.stdout)
            .unwrap_or_else(|e| panic!("{key}: {e}: {}", String::from_utf8_lossy(&ran.stdout)));
        assert_eq!(
            answer["subscription"]["outcome"], "applied",
            "{key}: {answer}"
        );
        assert_eq!(answer["subscription"]["status"], status, "{key}: {answer}");
    }

    // The operator's login it prints.
    let operator = value(&out, "operator");
    let (email, operator_password) = (
        operator.split(' ').next().unwrap(),
        after(operator, "password "),
    );
    let login_url = after(value(&out, "login"), "-X POST ");
    let res = http_client()
        .post(login_url)
        .json(&json!({ "email": email, "password": operator_password }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{login_url}");
    let token = res.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // The certificate's state, with the authenticated curl it prints (the login's token).
    if https {
        let line = out
            .iter()
            .find(|l| l.contains("the site's certificate (its ssl): curl"))
            .unwrap_or_else(|| panic!("no curl for the certificate's state:\n{}", out.join("\n")));
        let command = &line[line.find("curl").unwrap()..];
        let answer = run_printed(&format!("TOKEN='{token}'; {command}"), "-sS").unwrap();
        let account: serde_json::Value =
            serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{command}: {e}: {answer}"));
        let ssl = &account["ssl"];
        assert_eq!(ssl["status"], "ACTIVE", "{account}");
        assert!(
            ssl["issuer"].as_str().unwrap_or("").contains("Pebble"),
            "{ssl}"
        );
        let mut names: Vec<&str> = ssl["names"]
            .as_array()
            .map(|names| names.iter().filter_map(|n| n.as_str()).collect())
            .unwrap_or_default();
        names.sort_unstable();
        assert_eq!(names, [domain.clone(), format!("www.{domain}")], "{ssl}");
    }

    // Ctrl-C: everything stops and goes.
    let database = value(&out, "database").to_owned();
    let prefix = value(&out, "redis prefix").to_owned();
    let pids: Vec<i32> = value(&out, "pids")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let (least, started) = match https {
        true => (
            9,
            "panel, 3 agents, nginx, PowerDNS, Dovecot, pebble and its DNS",
        ),
        false => (7, "panel, 3 agents, nginx, PowerDNS, Dovecot"),
    };
    assert!(pids.len() >= least, "{started}: {pids:?}");
    assert!(pids.iter().all(|p| alive(*p)), "{pids:?}");
    let pebbles = pebbles_under(&workdir);
    if https {
        assert_eq!(pebbles.len(), 2, "pebble and its DNS: {pebbles:?}");
        assert!(
            pebbles.iter().all(|p| pids.contains(p)),
            "pebble's processes {pebbles:?} are not among the pids it prints {pids:?}"
        );
    }
    assert!(workdir.is_dir());
    let status = dev.interrupt().await;
    assert!(status.success(), "{status}");
    assert!(
        dev.printed()
            .iter()
            .any(|l| l.starts_with("mpanel dev: stopped")),
        "{:?}",
        dev.printed()
    );

    let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left running: {left:?}");
    let pebbles = pebbles_under(&workdir);
    assert!(pebbles.is_empty(), "pebble left running: {pebbles:?}");
    let mut admin = PgConnection::connect(&mpanel_tests::db::admin_url())
        .await
        .unwrap();
    let databases: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&database)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(databases, 0, "database {database} was not dropped");
    let redis = redis::Client::open(redis_url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "Redis keys left: {keys:?}");
    assert!(!workdir.exists(), "{} was not removed", workdir.display());
}

#[tokio::test]
async fn a_role_without_its_tools_is_simulated_while_the_others_run_for_real() {
    // `--simulate` stands in for a missing tool: the same fallback, chosen by hand.
    let mut dev = DevRun::start(&["--simulate", "mail"]);
    let out = dev.ready().await;
    assert!(
        out.iter().any(|l| l.starts_with("mail: simulated")),
        "{out:?}"
    );
    assert!(
        out.iter()
            .any(|l| l.starts_with("job PROVISION_MAIL: SUCCESS") && l.ends_with("simulated")),
        "{out:?}"
    );
    assert!(
        out.iter()
            .any(|l| l.starts_with("job PROVISION_HOSTING: SUCCESS") && l.contains("on server")),
        "{out:?}"
    );
    assert!(value(&out, "imap").starts_with("simulated"), "{out:?}");
    let site = value(&out, "site");
    let web_port: u16 = after(site, "http://127.0.0.1:")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let (head, _) = http_get(web_port, after(site, "Host: ").trim_end_matches('\''));
    let status = if pebble_installed() { " 301 " } else { " 200 " };
    assert!(head.lines().next().unwrap().contains(status), "{head}");
    // The welcome e-mail still arrives.
    let mail_path = PathBuf::from(value(&out, "welcome e-mail").split(' ').next().unwrap());
    assert!(read_eml(&mail_path).subject().contains("is ready"));
    let workdir = PathBuf::from(value(&out, "workdir"));
    assert!(dev.interrupt().await.success());
    assert!(!workdir.exists());
}

#[tokio::test]
async fn both_binaries_print_completions_naming_their_subcommands() {
    let here = tempfile::tempdir().unwrap();
    for (bin, subcommands) in [
        (
            "mpanel",
            &["serve", "worker", "migrate", "create-admin", "completions"][..],
        ),
        ("mpanel-agent", &["enroll", "run", "completions"][..]),
    ] {
        for shell in ["bash", "zsh", "fish"] {
            let out = command(bin, here.path())
                .args(["completions", shell])
                .output()
                .await
                .unwrap();
            assert!(out.status.success(), "{bin} completions {shell}: {out:?}");
            let script = String::from_utf8(out.stdout).unwrap();
            for sub in subcommands {
                assert!(script.contains(sub), "{bin} {shell}: no {sub} in\n{script}");
            }
        }
        let help = command(bin, here.path())
            .arg("--help")
            .output()
            .await
            .unwrap();
        let help = String::from_utf8(help.stdout).unwrap();
        assert!(help.contains("completions"), "{help}");
    }
}
