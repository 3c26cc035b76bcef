//! A private `sshd` on a free loopback port (its own host key, its own authorized key, its
//! own config in a temp dir) and the `ssh` runs the round trip is compared with: a new
//! connection per command, and commands over one ControlMaster connection.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

pub const SSHD: &str = "/usr/sbin/sshd";

/// Why the comparison cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if !Path::new(SSHD).exists() {
        return Some(format!(
            "{SSHD} is not installed: apt-get install openssh-server"
        ));
    }
    if which("ssh").is_none() || which("ssh-keygen").is_none() {
        return Some("ssh or ssh-keygen is not installed: apt-get install openssh-client".into());
    }
    None
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.exists())
}

pub struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
    master: Option<Child>,
}

impl Sshd {
    pub async fn start() -> anyhow::Result<Sshd> {
        let dir = tempfile::tempdir().context("temp dir for sshd")?;
        let d = dir.path();
        for (file, kind) in [("host_key", "ed25519"), ("client_key", "ed25519")] {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", kind, "-N", "", "-f"])
                .arg(d.join(file))
                .output()
                .await
                .context("run ssh-keygen")?;
            if !out.status.success() {
                bail!("ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // sshd insists on its privilege-separation directory. `SetEnv SHLVL=1` keeps bash
        // from sourcing the user's ~/.bashrc for a command run by sshd (Debian's bash does,
        // when SHLVL < 2): the comparison is ssh, not the user's shell start-up files.
        std::fs::create_dir_all("/run/sshd").ok();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
             AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nPermitRootLogin prohibit-password\nPrintMotd no\n\
             MaxStartups 100\nMaxSessions 100\nLogLevel ERROR\nSetEnv SHLVL=1\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config)?;
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("start sshd")?;
        let sshd = Sshd {
            dir,
            port,
            child,
            master: None,
        };
        // Listening: the first command succeeds.
        let started = Instant::now();
        loop {
            if sshd.run_true(false).await.is_ok() {
                break;
            }
            if started.elapsed() > Duration::from_secs(15) {
                bail!("sshd on port {port} did not accept the key within 15 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(sshd)
    }

    /// The listening sshd's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `ssh` with this sshd's key and port; over the master socket when `shared`.
    fn ssh(&self, shared: bool) -> Command {
        let d = self.dir.path();
        let control = if shared {
            format!("ControlPath={}", d.join("master.sock").display())
        } else {
            "ControlPath=none".to_owned()
        };
        let mut cmd = Command::new("ssh");
        cmd.arg("-F")
            .arg("/dev/null")
            .arg("-i")
            .arg(d.join("client_key"))
            .args(["-p", &self.port.to_string()])
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .args(["-o", &control])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// `ssh … 127.0.0.1 true`, over the master connection when `shared`; its wall time.
    pub async fn run_true(&self, shared: bool) -> anyhow::Result<Duration> {
        let mut cmd = self.ssh(shared);
        if shared {
            cmd.args(["-o", "ControlMaster=no"]);
        }
        let started = Instant::now();
        let out = cmd
            .args(["127.0.0.1", "true"])
            .output()
            .await
            .context("run ssh")?;
        let took = started.elapsed();
        if !out.status.success() {
            bail!("ssh: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(took)
    }

    /// Opens the ControlMaster connection the shared runs go over.
    pub async fn open_master(&mut self) -> anyhow::Result<()> {
        let mut cmd = self.ssh(true);
        cmd.args(["-M", "-N", "-o", "ControlMaster=yes", "127.0.0.1"]);
        self.master = Some(cmd.spawn().context("start the ssh ControlMaster")?);
        let sock = self.dir.path().join("master.sock");
        let started = Instant::now();
        while !sock.exists() {
            if started.elapsed() > Duration::from_secs(15) {
                bail!("the ssh ControlMaster did not open its socket within 15 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stops the master connection and sshd; the temp dir goes with `self`.
    pub async fn stop(mut self) {
        if let Some(mut m) = self.master.take() {
            let _ = m.start_kill();
            let _ = m.wait().await;
        }
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}
