//! The agent's state directory:
//!
//! | file              | mode | holds                                                  |
//! |-------------------|------|--------------------------------------------------------|
//! | `agent.key`       | 0600 | the agent's private key (PKCS#8 PEM); never sent       |
//! | `agent.crt`       | 0644 | its client certificate, signed by the panel's CA       |
//! | `ca.crt`          | 0644 | the panel's CA, pinned by the enrollment token         |
//! | `enrollment.json` | 0644 | agent and server id, hub URL, serial, expiry           |
//!
//! The directory is created 0700. Every file is written to a temporary file created with
//! its final mode, synced, and renamed into place, so a crash leaves the old file or the new
//! one, never a torn one and never a key that was readable for an instant.
//! `enrollment.json` is written last: its presence means the enrollment is complete.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const KEY_FILE: &str = "agent.key";
pub const CERT_FILE: &str = "agent.crt";
pub const CA_FILE: &str = "ca.crt";
pub const ENROLLMENT_FILE: &str = "enrollment.json";

/// `enrollment.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentRecord {
    pub agent_id: Uuid,
    pub server_id: Uuid,
    pub hub_url: String,
    /// Hex serial of `agent.crt`.
    pub serial: String,
    /// When `agent.crt` expires.
    pub not_after: DateTime<Utc>,
}

/// What an enrollment stores.
pub struct Credentials<'a> {
    pub key_pem: &'a str,
    pub cert_pem: &'a str,
    pub ca_pem: &'a str,
    pub record: &'a EnrollmentRecord,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.root.join(file)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether any credential file is present (a finished or an interrupted enrollment).
    pub fn has_credentials(&self) -> bool {
        [KEY_FILE, CERT_FILE, CA_FILE, ENROLLMENT_FILE]
            .iter()
            .any(|f| self.path(f).exists())
    }

    /// The record of a finished enrollment, if there is one.
    pub fn enrollment(&self) -> anyhow::Result<Option<EnrollmentRecord>> {
        let path = self.path(ENROLLMENT_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("{} is not a valid enrollment record", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    /// Writes all credentials, replacing any earlier ones.
    pub fn store(&self, creds: &Credentials<'_>) -> anyhow::Result<()> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .with_context(|| format!("create the state directory {}", self.root.display()))?;
        // An existing directory keeps whatever mode it had: narrow it, it holds a key.
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("set the mode of {}", self.root.display()))?;

        write_atomic(&self.path(KEY_FILE), creds.key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.path(CERT_FILE), creds.cert_pem.as_bytes(), 0o644)?;
        write_atomic(&self.path(CA_FILE), creds.ca_pem.as_bytes(), 0o644)?;
        let mut record = serde_json::to_vec_pretty(creds.record)?;
        record.push(b'\n');
        write_atomic(&self.path(ENROLLMENT_FILE), &record, 0o644)?;
        File::open(&self.root)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("sync {}", self.root.display()))
    }
}

/// Replaces `path` with `contents`: a temporary file created with `mode`, synced, renamed.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    write_atomic_with(path, mode, |file| file.write_all(contents))
}

/// [`write_atomic`] for contents written a piece at a time, so that they need not be in
/// memory at once: `write` fills the temporary file, which is then synced and renamed.
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> anyhow::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    // Left over by an interrupted run: it is ours to remove.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove {}", tmp.display())),
    }
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode; set exactly the one asked for.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        write(&mut file)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn record() -> EnrollmentRecord {
        EnrollmentRecord {
            agent_id: Uuid::from_u128(1),
            server_id: Uuid::from_u128(2),
            hub_url: "wss://panel.example.com:2272/".into(),
            serial: "40".repeat(16),
            not_after: DateTime::from_timestamp(2_000_000_000, 0).unwrap(),
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn stores_with_private_modes_and_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        // An existing, too-open directory is narrowed.
        let root = tmp.path().join("state");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let state = StateDir::new(&root);
        assert!(!state.has_credentials());
        assert_eq!(state.enrollment().unwrap(), None);

        state
            .store(&Credentials {
                key_pem: "KEY",
                cert_pem: "CERT",
                ca_pem: "CA",
                record: &record(),
            })
            .unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&state.path(KEY_FILE)), 0o600);
        assert_eq!(mode(&state.path(CERT_FILE)), 0o644);
        assert_eq!(mode(&state.path(CA_FILE)), 0o644);
        assert_eq!(fs::read_to_string(state.path(KEY_FILE)).unwrap(), "KEY");
        assert_eq!(state.enrollment().unwrap(), Some(record()));
        assert!(state.has_credentials());
        // Nothing temporary is left.
        assert_eq!(fs::read_dir(&root).unwrap().count(), 4);
    }

    #[test]
    fn atomic_write_replaces_and_keeps_the_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("agent.key");
        write_atomic(&path, b"one", 0o600).unwrap();
        fs::write(tmp.path().join("agent.key.tmp"), b"stale").unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o600);
        assert!(!tmp.path().join("agent.key.tmp").exists());
    }
}
