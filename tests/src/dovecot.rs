//! A real Dovecot serving IMAP on a free loopback port from a private configuration, over the
//! passwd-file and maildirs that the mail role's agent writes, so that a mailbox's password
//! can be tried the way a mail client would. Stopped (and waited for) when dropped.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub const DOVECOT: &str = "/usr/sbin/dovecot";

pub struct Dovecot {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl Dovecot {
    /// Starts Dovecot in the foreground over `passwd_file` (passdb and userdb, as the mail
    /// role writes it) and waits until it accepts IMAP connections.
    pub fn start(passwd_file: &Path) -> Result<Dovecot, String> {
        if !Path::new(DOVECOT).exists() {
            return Err("dovecot is missing: install dovecot-imapd".into());
        }
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        // The login and auth processes run as Dovecot's own users: they must reach the
        // sockets under base_dir.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod: {e}"))?;
        let d = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("state")).map_err(|e| format!("mkdir: {e}"))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("a free port: {e}"))?
            .port();
        let users = passwd_file.display();
        // `service auth` runs as root because the agent writes the passwd-file 0640 root;
        // the login processes keep Dovecot's unprivileged users (imap-login refuses root).
        let conf = format!(
            "protocols = imap\nlisten = 127.0.0.1\nbase_dir = {d}/run\nstate_dir = {d}/state\n\
             log_path = {d}/dovecot.log\nssl = no\ndisable_plaintext_auth = no\n\
             mail_location = maildir:~\n\
             passdb {{\n  driver = passwd-file\n  args = scheme=ARGON2ID {users}\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = {users}\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    \
             port = {port}\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
             service auth {{\n  user = root\n}}\n"
        );
        let conf_path = dir.path().join("dovecot.conf");
        std::fs::write(&conf_path, conf).map_err(|e| format!("write dovecot.conf: {e}"))?;
        let child = Command::new(DOVECOT)
            .arg("-F")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start dovecot: {e}"))?;
        let mut dovecot = Dovecot { dir, port, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = dovecot.child.try_wait() {
                return Err(format!(
                    "dovecot exited ({status}): {}",
                    dovecot.log().lines().last().unwrap_or("")
                ));
            }
            if Instant::now() > deadline {
                return Err("dovecot did not listen within 20s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(dovecot)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Dovecot's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// Logs in over IMAP as `user` and opens the INBOX, as a mail client would; the error
    /// is the server's answer.
    pub fn imap_login(&self, user: &str, password: &str) -> Result<(), String> {
        imap_login(self.port, user, password)
    }

    /// Stops Dovecot (SIGTERM: the master stops its children) and waits for it.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `LOGIN` then `SELECT INBOX` on the IMAP server at 127.0.0.1:`port`.
pub fn imap_login(port: u16, user: &str, password: &str) -> Result<(), String> {
    let stream =
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect to IMAP: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    if !line.starts_with("* OK") {
        return Err(format!("IMAP greeting: {line}"));
    }
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    for (tag, command) in [
        ("a1", format!("LOGIN {} {}", quote(user), quote(password))),
        ("a2", "SELECT INBOX".to_owned()),
        ("a3", "LOGOUT".to_owned()),
    ] {
        write!(writer, "{tag} {command}\r\n").map_err(|e| e.to_string())?;
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err(format!("the IMAP server hung up after {tag}"));
            }
            if let Some(answer) = line.strip_prefix(&format!("{tag} ")) {
                if !answer.starts_with("OK") {
                    return Err(format!("{tag}: {}", answer.trim_end()));
                }
                break;
            }
        }
    }
    Ok(())
}
