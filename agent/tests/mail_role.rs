//! The mail role in a temp-dir sandbox: the real `postmap` builds the maps, and a real
//! Dovecot started from a private config (passwd-file passdb and userdb, IMAP on a free
//! loopback port) logs the mailbox in, checked with Python's imaplib.
//!
//! The executor is called as a library (`executors::execute`, the same entry the daemon
//! uses, role check included).

use std::{
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command as Process,
    time::{Duration, Instant},
};

use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
use mpanel_agent::{
    config::{AgentConfig, MailConfig},
    executors::execute,
};
use mpanel_protocol::{
    EmailAddress,
    mail::{
        CreateMailbox, CreateMailboxOutput, DeleteMailbox, DeleteMailboxOutput, PasswordHash,
        QuotaMb, SetMailboxEnabled, SetMailboxEnabledOutput, SetMailboxPassword,
        SetMailboxPasswordOutput,
    },
    messages::{AgentCommand, Command, Outcome, PanelMessage, Role},
};

fn hash(password: &str) -> PasswordHash {
    let params = Params::new(65536, 3, 1, None).unwrap();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let phc = argon
        .hash_password(password.as_bytes())
        .unwrap()
        .to_string();
    PasswordHash::parse(&phc).unwrap()
}

fn addr(s: &str) -> EmailAddress {
    EmailAddress::parse(s).unwrap()
}

struct Sandbox {
    dir: tempfile::TempDir,
    config: AgentConfig,
}

impl Sandbox {
    fn new(dovecot_reload: Option<Vec<String>>) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        // Dovecot's mail processes run as the vmail uid and must reach the maildirs.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut config = AgentConfig::parse("roles = [\"mail\"]").unwrap();
        config.mail = Some(MailConfig {
            virtual_mailbox_domains: dir.path().join("virtual_mailbox_domains"),
            virtual_mailbox_maps: dir.path().join("virtual_mailbox_maps"),
            passwd_file: dir.path().join("users"),
            vmail_root: dir.path().join("vmail"),
            postmap: PathBuf::from("/usr/sbin/postmap"),
            postfix_reload: Some(vec!["true".into()]),
            dovecot_reload: dovecot_reload.or_else(|| Some(vec!["true".into()])),
            vmail_uid: 5000,
            vmail_gid: 5000,
            archive_dir: dir.path().join("archive"),
            tar: PathBuf::from("/usr/bin/tar"),
            zstd: PathBuf::from("/usr/bin/zstd"),
        });
        assert!(
            Path::new("/usr/sbin/postmap").exists(),
            "postmap is missing: install postfix dovecot-core dovecot-imapd (.ci/run does)"
        );
        Sandbox { dir, config }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    async fn run<C: AgentCommand>(&self, cmd: C) -> C::Output {
        match execute(&cmd.into(), &self.config).await {
            out @ Outcome::Ok { .. } => out.output::<C>().unwrap().unwrap(),
            Outcome::Error { code, message, .. } => {
                panic!("{}: {}", code.as_str(), message.as_str())
            }
        }
    }

    async fn error(&self, cmd: impl Into<Command>) -> (String, bool) {
        match execute(&cmd.into(), &self.config).await {
            Outcome::Error {
                code, retryable, ..
            } => (code.as_str().to_owned(), retryable),
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn create_writes_maps_passwd_and_maildir_idempotently() {
    let sb = Sandbox::new(None);
    std::fs::write(
        sb.path("virtual_mailbox_domains"),
        "# by hand\nother.org OK\n",
    )
    .unwrap();
    let h = hash("first secret");
    let create = CreateMailbox {
        address: addr("Info@Example.com"),
        password_hash: h.clone(),
        quota_mb: Some(QuotaMb::new(512).unwrap()),
    };
    let out: CreateMailboxOutput = sb.run(create.clone()).await;
    assert!(out.changed);
    let maildir = sb.path("vmail/example.com/info");
    assert_eq!(out.maildir, maildir.display().to_string());
    for sub in ["cur", "new", "tmp"] {
        assert!(maildir.join(sub).is_dir(), "{sub}");
    }
    assert_eq!(
        sb.read("virtual_mailbox_domains"),
        "# by hand\nother.org OK\nexample.com OK\n"
    );
    assert_eq!(
        sb.read("virtual_mailbox_maps"),
        "info@example.com example.com/info/\n"
    );
    let users = sb.read("users");
    assert_eq!(
        users,
        format!(
            "info@example.com:{{ARGON2ID}}{}:5000:5000::{}::userdb_quota_rule=*:storage=512M\n",
            h.as_phc(),
            maildir.display()
        )
    );
    for db in ["virtual_mailbox_domains.db", "virtual_mailbox_maps.db"] {
        assert!(sb.path(db).is_file(), "postmap built {db}");
    }
    let q = Process::new("/usr/sbin/postmap")
        .args(["-q", "info@example.com"])
        .arg(format!(
            "hash:{}",
            sb.path("virtual_mailbox_maps").display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&q.stdout).trim(),
        "example.com/info/"
    );
    if is_root() {
        let m = std::fs::metadata(&maildir).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((m.uid(), m.gid()), (5000, 5000));
    }

    // Again: nothing changes.
    let mtime = std::fs::metadata(sb.path("users"))
        .unwrap()
        .modified()
        .unwrap();
    let out: CreateMailboxOutput = sb.run(create.clone()).await;
    assert!(!out.changed);
    assert_eq!(sb.read("users"), users);
    assert_eq!(
        std::fs::metadata(sb.path("users"))
            .unwrap()
            .modified()
            .unwrap(),
        mtime
    );
    let mode = std::fs::metadata(sb.path("users"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o640);

    // A second mailbox of the same domain: the domain line stays single.
    let out: CreateMailboxOutput = sb
        .run(CreateMailbox {
            address: addr("sales@example.com"),
            password_hash: hash("x"),
            quota_mb: None,
        })
        .await;
    assert!(out.changed);
    assert_eq!(
        sb.read("virtual_mailbox_domains")
            .matches("example.com")
            .count(),
        1
    );

    // Disable / enable toggle only the nologin field.
    let off: SetMailboxEnabledOutput = sb
        .run(SetMailboxEnabled {
            address: addr("info@example.com"),
            enabled: false,
        })
        .await;
    assert!(off.changed && !off.enabled);
    assert!(
        sb.read("users")
            .lines()
            .next()
            .unwrap()
            .ends_with(" nologin")
    );
    let again: SetMailboxEnabledOutput = sb
        .run(SetMailboxEnabled {
            address: addr("info@example.com"),
            enabled: false,
        })
        .await;
    assert!(!again.changed);
    let on: SetMailboxEnabledOutput = sb
        .run(SetMailboxEnabled {
            address: addr("info@example.com"),
            enabled: true,
        })
        .await;
    assert!(on.changed);
    assert_eq!(sb.read("users").lines().next().unwrap(), users.trim_end());

    // Delete one: its lines go, the domain stays (sales@ remains), the maildir is archived
    // (with the mail in it) and removed.
    std::fs::write(
        maildir.join("new").join("1.eml"),
        "Subject: kept\r\n\r\nhello\r\n",
    )
    .unwrap();
    let del: DeleteMailboxOutput = sb
        .run(DeleteMailbox {
            address: addr("info@example.com"),
        })
        .await;
    assert!(del.deleted);
    let archive = PathBuf::from(del.archive.expect("an archive"));
    assert!(archive.starts_with(sb.path("archive")), "{archive:?}");
    assert_eq!(
        std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let listing = std::process::Command::new("tar")
        .args(["--use-compress-program=zstd", "-tf"])
        .arg(&archive)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("info/new/1.eml"), "{listing}");
    assert!(!maildir.exists());
    assert!(!sb.read("users").contains("info@example.com"));
    assert!(!sb.read("virtual_mailbox_maps").contains("info@example.com"));
    assert!(
        sb.read("virtual_mailbox_domains")
            .contains("example.com OK")
    );
    let del: DeleteMailboxOutput = sb
        .run(DeleteMailbox {
            address: addr("info@example.com"),
        })
        .await;
    assert!(!del.deleted);
    assert_eq!(del.archive, None, "nothing left to archive");
    // The last one of the domain: the domain line goes too, the hand-written lines stay.
    let _: DeleteMailboxOutput = sb
        .run(DeleteMailbox {
            address: addr("sales@example.com"),
        })
        .await;
    assert_eq!(
        sb.read("virtual_mailbox_domains"),
        "# by hand\nother.org OK\n"
    );
    assert_eq!(sb.read("users"), "");

    // Unknown mailbox.
    let (code, retryable) = sb
        .error(SetMailboxPassword {
            address: addr("nobody@example.com"),
            password_hash: hash("x"),
        })
        .await;
    assert_eq!((code.as_str(), retryable), ("mailbox_not_found", false));
}

#[tokio::test]
async fn a_failing_postmap_or_reload_leaves_the_files_as_they_were() {
    let mut sb = Sandbox::new(None);
    let _: CreateMailboxOutput = sb
        .run(CreateMailbox {
            address: addr("a@example.com"),
            password_hash: hash("a"),
            quota_mb: None,
        })
        .await;
    let before = (
        sb.read("virtual_mailbox_domains"),
        sb.read("virtual_mailbox_maps"),
        sb.read("users"),
    );
    let create_b = CreateMailbox {
        address: addr("b@example.net"),
        password_hash: hash("b"),
        quota_mb: None,
    };
    sb.config.mail.as_mut().unwrap().postmap = PathBuf::from("/bin/false");
    let (code, _) = sb.error(create_b.clone()).await;
    assert_eq!(code, "postmap_failed");
    let after = (
        sb.read("virtual_mailbox_domains"),
        sb.read("virtual_mailbox_maps"),
        sb.read("users"),
    );
    assert_eq!(after, before);

    let mail = sb.config.mail.as_mut().unwrap();
    mail.postmap = PathBuf::from("/usr/sbin/postmap");
    mail.dovecot_reload = Some(vec!["false".into()]);
    let (code, retryable) = sb.error(create_b.clone()).await;
    assert_eq!((code.as_str(), retryable), ("reload_failed", true));
    assert_eq!(sb.read("users"), before.2);
    // Leftover temp files: none.
    let stray: Vec<_> = std::fs::read_dir(sb.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".mpanel-"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");

    sb.config.mail.as_mut().unwrap().dovecot_reload = Some(vec!["true".into()]);
    let out: CreateMailboxOutput = sb.run(create_b).await;
    assert!(out.changed);
}

#[tokio::test]
async fn refusals() {
    let mut sb = Sandbox::new(None);
    let cmd = DeleteMailbox {
        address: addr("a@example.com"),
    };
    sb.config.mail = None;
    let (code, retryable) = sb.error(cmd.clone()).await;
    assert_eq!((code.as_str(), retryable), ("mail_not_configured", false));
    sb.config.roles = vec![Role::Dns];
    let (code, _) = sb.error(cmd).await;
    assert_eq!(code, "role_not_served");

    // Hostile values never reach the executor: the envelope does not decode.
    let h = hash("x");
    for (address, password_hash) in [
        ("a@example.com:0:0::/root::", h.as_phc().to_owned()),
        ("a@example.com\nroot@x.com", h.as_phc().to_owned()),
        ("../../etc@example.com", h.as_phc().to_owned()),
        (
            "a@example.com",
            format!("{}\nroot::0:0::/root::", h.as_phc()),
        ),
        ("a@example.com", "{PLAIN}secret".to_owned()),
    ] {
        let text = serde_json::json!({
            "type": "command",
            "commandId": "00000000-0000-0000-0000-000000000001",
            "issuedAt": "2024-01-01T00:00:00Z",
            "deadlineSecs": 60,
            "command": {"kind": "create_mailbox", "address": address,
                        "passwordHash": password_hash, "quotaMb": null},
        })
        .to_string();
        assert!(PanelMessage::decode(&text).is_err(), "{address:?}");
    }
}

// ---------------------------------------------------------------------------------------
// A real Dovecot
// ---------------------------------------------------------------------------------------

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

struct Dovecot {
    dir: PathBuf,
    conf: PathBuf,
    port: u16,
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = Process::new("doveadm")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .status();
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("run/master.pid")) {
            let _ = Process::new("kill").arg(pid.trim()).status();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_dovecot(dir: &Path, users: &Path) -> Dovecot {
    let port = free_port();
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let conf = dir.join("dovecot.conf");
    let users = users.display();
    std::fs::write(
        &conf,
        format!(
            "protocols = imap\nlisten = 127.0.0.1\nbase_dir = {run}\nstate_dir = {state}\n\
             log_path = {log}\nssl = no\ndisable_plaintext_auth = no\n\
             auth_mechanisms = plain login\nmail_location = maildir:~\n\
             first_valid_uid = 1000\nauth_failure_delay = 0\n\
             passdb {{\n  driver = passwd-file\n  args = scheme=ARGON2ID {users}\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = {users}\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    \
             port = {port}\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n",
            run = run.display(),
            state = dir.join("state").display(),
            log = dir.join("dovecot.log").display(),
        ),
    )
    .unwrap();
    let status = Process::new("dovecot")
        .arg("-c")
        .arg(&conf)
        .status()
        .expect("dovecot runs");
    let dovecot = Dovecot {
        dir: dir.to_path_buf(),
        conf,
        port,
    };
    assert!(status.success(), "dovecot failed: {}", dovecot.log());
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "dovecot did not listen on {port} within 20 s: {}",
            dovecot.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    dovecot
}

impl Dovecot {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }

    /// One IMAP LOGIN + SELECT INBOX with imaplib: `Some(true)` logged in, `Some(false)`
    /// refused, `None` not reachable (a reload in progress).
    fn login(&self, user: &str, password: &str) -> Option<bool> {
        let script = "import imaplib,sys\n\
            try:\n    m = imaplib.IMAP4('127.0.0.1', int(sys.argv[1]))\n\
            except OSError:\n    sys.exit(2)\n\
            try:\n    m.login(sys.argv[2], sys.argv[3])\n\
            except imaplib.IMAP4.error:\n    sys.exit(1)\n\
            except OSError:\n    sys.exit(2)\n\
            typ, _ = m.select('INBOX')\n\
            sys.exit(0 if typ == 'OK' else 3)\n";
        let out = Process::new("python3")
            .args(["-c", script, &self.port.to_string(), user, password])
            .output()
            .expect("python3 runs");
        match out.status.code() {
            Some(0) => Some(true),
            Some(1) => Some(false),
            Some(2) => None,
            _ => panic!(
                "imaplib: {} {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                out.status,
                self.log()
            ),
        }
    }

    /// Waits (with a deadline) until a login gives `want`: the reload after a change
    /// restarts Dovecot's auth processes asynchronously.
    fn expect_login(&self, user: &str, password: &str, want: bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.login(user, password) == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "login of {user} with {password:?} did not become {want} within 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[tokio::test]
async fn a_real_dovecot_logs_the_mailbox_in() {
    if !is_root() {
        eprintln!(
            "SKIPPED the IMAP part: Dovecot's mail processes switch to the vmail uid, which \
             needs root (CI runs as root)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = dir.path().join("dovecot/dovecot.conf");
    let reload = vec![
        "doveadm".to_owned(),
        "-c".to_owned(),
        conf.display().to_string(),
        "reload".to_owned(),
    ];
    let sb = Sandbox::new(Some(reload));
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let user = "info@example.com";
    // Dovecot first (with no users yet): every command reloads it.
    std::fs::write(sb.path("users"), "").unwrap();
    let dovecot = start_dovecot(&dir.path().join("dovecot"), &sb.path("users"));
    assert_eq!(conf, dovecot.conf);
    let _: CreateMailboxOutput = sb
        .run(CreateMailbox {
            address: addr(user),
            password_hash: hash("correct horse"),
            quota_mb: Some(QuotaMb::new(100).unwrap()),
        })
        .await;

    dovecot.expect_login(user, "correct horse", true);
    assert_eq!(dovecot.login(user, "wrong horse"), Some(false));

    let _: SetMailboxEnabledOutput = sb
        .run(SetMailboxEnabled {
            address: addr(user),
            enabled: false,
        })
        .await;
    dovecot.expect_login(user, "correct horse", false);
    let _: SetMailboxEnabledOutput = sb
        .run(SetMailboxEnabled {
            address: addr(user),
            enabled: true,
        })
        .await;
    dovecot.expect_login(user, "correct horse", true);

    let out: SetMailboxPasswordOutput = sb
        .run(SetMailboxPassword {
            address: addr(user),
            password_hash: hash("battery staple"),
        })
        .await;
    assert!(out.changed);
    dovecot.expect_login(user, "battery staple", true);
    assert_eq!(dovecot.login(user, "correct horse"), Some(false));

    let _: DeleteMailboxOutput = sb
        .run(DeleteMailbox {
            address: addr(user),
        })
        .await;
    dovecot.expect_login(user, "battery staple", false);
    assert!(
        !sb.path("vmail/example.com/info").exists(),
        "archived, then removed"
    );
    assert_eq!(std::fs::read_dir(sb.path("archive")).unwrap().count(), 1);
}

/// A Dovecot reload that counts itself and fails while the passwd-file holds `bad@`.
fn counting_reload(dir: &Path) -> Vec<String> {
    let script = format!(
        "echo reload >> {d}/reloads.log; ! grep -qs '^bad@' {d}/users",
        d = dir.display()
    );
    vec!["/bin/sh".into(), "-c".into(), script]
}

fn mailbox(address: &str, h: &PasswordHash) -> CreateMailbox {
    CreateMailbox {
        address: addr(address),
        password_hash: h.clone(),
        quota_mb: None,
    }
}

/// `CreateMailbox` for each address, all sent at once.
async fn create_together(
    sb: &Sandbox,
    addresses: &[impl AsRef<str>],
    h: &PasswordHash,
) -> Vec<Outcome> {
    futures_util::future::join_all(addresses.iter().map(|a| {
        let cmd: Command = mailbox(a.as_ref(), h).into();
        let config = &sb.config;
        async move { execute(&cmd, config).await }
    }))
    .await
}

#[tokio::test]
async fn mailboxes_created_together_share_one_postmap_and_reload_and_each_answers() {
    let mut sb = Sandbox::new(None);
    let reload = counting_reload(sb.dir.path());
    sb.config.mail.as_mut().unwrap().dovecot_reload = Some(reload);
    let h = hash("a secret");
    let addresses: Vec<String> = (1..=6).map(|i| format!("box{i}@shop{i}.example")).collect();
    let outs = create_together(&sb, &addresses, &h).await;
    for (a, out) in addresses.iter().zip(&outs) {
        let out = out
            .output::<CreateMailbox>()
            .unwrap_or_else(|| panic!("{a}: {out:?}"))
            .unwrap();
        assert!(out.changed, "{a}");
        let found = Process::new("/usr/sbin/postmap")
            .arg("-q")
            .arg(a)
            .arg(format!(
                "hash:{}",
                sb.path("virtual_mailbox_maps").display()
            ))
            .output()
            .unwrap();
        assert!(found.status.success(), "{a} is in the built map");
        assert!(sb.read("users").contains(&format!("{a}:")));
    }
    // The first runs alone; the five queued behind it are written and reloaded once.
    let reloads = sb.read("reloads.log").lines().count();
    assert!(
        (1..=2).contains(&reloads),
        "6 mailboxes made together reloaded Dovecot {reloads} times"
    );
}

#[tokio::test]
async fn a_mailbox_that_fails_fails_alone_when_created_together_with_others() {
    let mut sb = Sandbox::new(None);
    let reload = counting_reload(sb.dir.path());
    sb.config.mail.as_mut().unwrap().dovecot_reload = Some(reload);
    let h = hash("a secret");
    let addresses = [
        "first@one.example",
        "bad@two.example",
        "good@three.example",
        "more@four.example",
    ];
    let outs = create_together(&sb, &addresses, &h).await;
    let users = sb.read("users");
    let maps = sb.read("virtual_mailbox_maps");
    for (a, out) in addresses.iter().zip(&outs) {
        if a.starts_with("bad@") {
            let Outcome::Error { code, .. } = out else {
                panic!("{a} should fail: {out:?}");
            };
            assert_eq!(code.as_str(), "reload_failed");
            assert!(!users.contains("bad@") && !maps.contains("bad@"), "{users}");
            assert!(!sb.read("virtual_mailbox_domains").contains("two.example"));
        } else {
            assert!(matches!(out, Outcome::Ok { .. }), "{a}: {out:?}");
            assert!(users.contains(&format!("{a}:")) && maps.contains(a), "{a}");
        }
    }
}
