//! The backup role: a website's files as a tar + zstd archive, a PostgreSQL database as a
//! `pg_dump --format=custom` dump (`[backup]` in agent.toml).
//!
//! **Layout.** `archive_dir/site/<targetId>/<UTC time>.tar.zst` and
//! `archive_dir/database/<targetId>/<database>/<UTC time>.dump`, the time as
//! `20261124T101500.123456Z` (fixed width, so names sort by age). Directories are 0700 and
//! archives 0600, owned by the agent's user. A database gets its own directory below its
//! target so that two databases of one target never prune each other.
//!
//! **Atomic.** The archive is written to `.<name>.partial` in its final directory: the
//! agent creates that file itself (create-new, 0600) and hands it to tar or pg_dump as their
//! standard output, so the programs never choose a path. Once the program has exited 0 the
//! file is fsynced, hashed (SHA-256, streamed) and renamed to its final name, and the
//! directory fsynced. Any failure removes the partial file, so the host keeps exactly the
//! archives it had; a partial file left by a killed agent is removed by the next run of the
//! same target.
//!
//! **Pruning.** After a new archive is in place, the newest `keep` archives of the target
//! are kept and older ones removed. Only regular files whose name is exactly an archive
//! name of this role are considered (never a symlink, never another file); the directory
//! itself is refused when it is a symlink.
//!
//! **Refused.** A site directory that does not exist (`backup_target_missing`, not
//! retryable), or that is a symlink or not a directory (`backup_unsafe_path`): the role
//! archives what is on the host under `sites_root`, nothing a customer could point it at.
//!
//! **Errors.** `backup_target_missing`, `backup_unsafe_path`, `backup_io_failed`
//! (retryable), `archive_failed` (tar or zstd, retryable), `dump_failed` (pg_dump,
//! retryable), `backup_tool_missing` (a configured program cannot be run). Backups run one
//! at a time (a process-wide lock): they are I/O-heavy, and pruning must not race a run of
//! the same target.

use std::{
    fs,
    io::Read,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use chrono::{NaiveDateTime, Utc};
use mpanel_protocol::{
    backup::{BackupDatabase, BackupOutput, BackupSite},
    messages::Outcome,
};
use sha2::{Digest, Sha256};

use crate::{
    config::BackupConfig,
    host::{Failure, sync_dir, to_outcome},
};

const IO: &str = "backup_io_failed";
const UNSAFE: &str = "backup_unsafe_path";

/// How long one archive or dump may take. Far above the shared `COMMAND_TIMEOUT`: a big
/// site takes minutes to hours, and a backup that is killed leaves nothing behind anyway.
pub const BACKUP_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// The archive names' time format, UTC, microseconds.
const STAMP: &str = "%Y%m%dT%H%M%S%.6fZ";
const SITE_EXT: &str = ".tar.zst";
const DUMP_EXT: &str = ".dump";
const PARTIAL: &str = ".partial";

/// One backup at a time.
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------

/// Executes [`BackupSite`].
pub async fn backup_site(cmd: &BackupSite, config: &BackupConfig) -> Outcome {
    to_outcome(site(cmd, config).await)
}

/// Executes [`BackupDatabase`].
pub async fn backup_database(cmd: &BackupDatabase, config: &BackupConfig) -> Outcome {
    to_outcome(database(cmd, config).await)
}

async fn site(cmd: &BackupSite, cfg: &BackupConfig) -> Result<BackupOutput, Failure> {
    let _guard = LOCK.lock().await;
    let user = cmd.system_user.as_str();
    let source = cfg.sites_root.join(user);
    match fs::symlink_metadata(&source) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(Failure::new(
                UNSAFE,
                format!(
                    "{} is a symlink; the backup role does not follow it",
                    source.display()
                ),
                false,
            ));
        }
        Ok(m) if !m.is_dir() => {
            return Err(Failure::new(
                UNSAFE,
                format!("{} is not a directory", source.display()),
                false,
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::new(
                "backup_target_missing",
                format!("the site directory {} does not exist", source.display()),
                false,
            ));
        }
        Err(e) => return Err(Failure::io(IO, "inspect", &source, e)),
    }
    let dir = ensure_dirs(&cfg.archive_dir, &["site", &cmd.target_id.to_string()])?;
    let argv = vec![
        cfg.tar.display().to_string(),
        format!("--use-compress-program={}", cfg.zstd.display()),
        "--create".into(),
        "--file=-".into(),
        format!("--directory={}", cfg.sites_root.display()),
        user.to_owned(),
    ];
    make_archive(cfg, &dir, SITE_EXT, "archive_failed", &argv, |_| None).await
}

async fn database(cmd: &BackupDatabase, cfg: &BackupConfig) -> Result<BackupOutput, Failure> {
    let _guard = LOCK.lock().await;
    let db = cmd.database.as_str();
    let dir = ensure_dirs(
        &cfg.archive_dir,
        &["database", &cmd.target_id.to_string(), db],
    )?;
    let mut argv = cfg.pg_dump.clone();
    // The name is `^[a-z_][a-z0-9_]*$`: never an option, never a connection string.
    argv.extend(["--format=custom".to_owned(), db.to_owned()]);
    let missing = format!("database \"{db}\" does not exist");
    make_archive(cfg, &dir, DUMP_EXT, "dump_failed", &argv, |stderr| {
        stderr.contains(&missing).then(|| {
            Failure::new(
                "backup_target_missing",
                format!("there is no database {db}"),
                false,
            )
        })
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Archives
// ---------------------------------------------------------------------------------------

/// Runs `argv` with its standard output going to a new partial file in `dir`, then hashes,
/// renames and prunes. `classify` may turn a failed run's stderr into a specific failure.
async fn make_archive(
    cfg: &BackupConfig,
    dir: &Path,
    ext: &str,
    code: &'static str,
    argv: &[String],
    classify: impl Fn(&str) -> Option<Failure>,
) -> Result<BackupOutput, Failure> {
    remove_stale_partials(dir, ext);
    let (target, tmp) = fresh_names(dir, ext);
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Failure::io(IO, "create", &tmp, e))?;
    let made = async {
        let out = file
            .try_clone()
            .map_err(|e| Failure::io(IO, "open", &tmp, e))?;
        let (status, stderr) = run_into(code, argv, out).await?;
        if !status.success() {
            if let Some(f) = classify(&stderr) {
                return Err(f);
            }
            return Err(Failure::new(
                code,
                format!("{} failed ({status}): {stderr}", argv.join(" ")),
                true,
            ));
        }
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .and_then(|()| file.sync_all())
            .map_err(|e| Failure::io(IO, "sync", &tmp, e))?;
        drop(file);
        let (size_bytes, sha256) = hash_file(&tmp).await?;
        fs::rename(&tmp, &target)
            .and_then(|()| sync_dir(&target))
            .map_err(|e| Failure::io(IO, "rename", &target, e))?;
        Ok((size_bytes, sha256))
    }
    .await;
    let (size_bytes, sha256) = match made {
        Ok(v) => v,
        Err(f) => {
            let _ = fs::remove_file(&tmp);
            return Err(f);
        }
    };
    let pruned = prune(dir, ext, cfg.keep)?;
    Ok(BackupOutput {
        path: target.display().to_string(),
        size_bytes,
        sha256,
        pruned,
    })
}

/// `base/parts[0]/parts[1]/…`, each created 0700 when missing. `base` is the operator's
/// `archive_dir` (created if missing, left as it is otherwise); every level below it must
/// be a real directory, not a symlink.
fn ensure_dirs(base: &Path, parts: &[&str]) -> Result<PathBuf, Failure> {
    if !base.exists() {
        fs::create_dir_all(base)
            .and_then(|()| fs::set_permissions(base, fs::Permissions::from_mode(0o700)))
            .map_err(|e| Failure::io(IO, "create", base, e))?;
    }
    let mut dir = base.to_path_buf();
    for part in parts {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(Failure::new(
                    UNSAFE,
                    format!("{} exists and is not a directory", dir.display()),
                    false,
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(&dir)
                    .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)))
                    .map_err(|e| Failure::io(IO, "create", &dir, e))?;
            }
            Err(e) => return Err(Failure::io(IO, "inspect", &dir, e)),
        }
    }
    Ok(dir)
}

/// A final name that does not exist yet (a new time, microseconds apart) and its partial
/// twin.
fn fresh_names(dir: &Path, ext: &str) -> (PathBuf, PathBuf) {
    loop {
        let name = format!("{}{ext}", Utc::now().format(STAMP));
        let target = dir.join(&name);
        if !target.exists() {
            return (target, dir.join(format!(".{name}{PARTIAL}")));
        }
        std::thread::sleep(Duration::from_micros(2));
    }
}

/// Whether `name` is an archive name of this role with extension `ext`.
fn is_archive_name(name: &str, ext: &str) -> bool {
    name.strip_suffix(ext).is_some_and(|stem| {
        NaiveDateTime::parse_from_str(stem, STAMP)
            .is_ok_and(|t| t.format(STAMP).to_string() == stem)
    })
}

/// Partial files of earlier runs that were killed (we hold the lock, so none is in use).
fn remove_stale_partials(dir: &Path, ext: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_partial = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(PARTIAL))
            .is_some_and(|n| is_archive_name(n, ext));
        if is_partial && entry.file_type().is_ok_and(|t| t.is_file()) {
            tracing::info!(path = %entry.path().display(), "removing a partial archive of an interrupted backup");
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Keeps the newest `keep` archives in `dir`; returns the paths removed.
fn prune(dir: &Path, ext: &str, keep: u32) -> Result<Vec<String>, Failure> {
    let entries = fs::read_dir(dir).map_err(|e| Failure::io(IO, "list", dir, e))?;
    let mut archives: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_archive_name(n, ext))
        .collect();
    // Fixed-width UTC times: the name order is the age order, newest last.
    archives.sort();
    let excess = archives.len().saturating_sub(keep as usize);
    let mut pruned = Vec::new();
    for name in archives.into_iter().take(excess) {
        let path = dir.join(&name);
        fs::remove_file(&path).map_err(|e| Failure::io(IO, "remove", &path, e))?;
        pruned.push(path.display().to_string());
    }
    if !pruned.is_empty() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Failure::io(IO, "sync", dir, e))?;
    }
    Ok(pruned)
}

/// Size and lowercase hex SHA-256 of a file, read in chunks off the async runtime.
async fn hash_file(path: &Path) -> Result<(u64, String), Failure> {
    let owned = path.to_path_buf();
    let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, String)> {
        let mut file = fs::File::open(&owned)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok((size, hex::encode(hasher.finalize())))
    })
    .await
    .map_err(|e| Failure::new(IO, format!("hashing {}: {e}", path.display()), true))?;
    hashed.map_err(|e| Failure::io(IO, "hash", path, e))
}

/// Runs `argv` (no shell) with stdin closed, stdout into `out` and stderr captured, within
/// [`BACKUP_TIMEOUT`]; returns the exit status and the end of stderr (one line, at most
/// 500 characters).
async fn run_into(
    code: &'static str,
    argv: &[String],
    out: fs::File,
) -> Result<(ExitStatus, String), Failure> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| Failure::new(code, "empty command", false))?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().map_err(|e| {
        let missing = e.kind() == std::io::ErrorKind::NotFound;
        Failure::new(
            if missing { "backup_tool_missing" } else { code },
            format!("could not run {program}: {e}"),
            !missing,
        )
    })?;
    let output = match tokio::time::timeout(BACKUP_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            return Err(Failure::new(
                code,
                format!("waiting for {program}: {e}"),
                true,
            ));
        }
        Err(_) => {
            return Err(Failure::new(
                code,
                format!("{program} did not finish within {BACKUP_TIMEOUT:?}"),
                true,
            ));
        }
    };
    Ok((output.status, crate::host::stderr_tail(&output.stderr)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_are_exact() {
        let stamp = Utc::now().format(STAMP).to_string();
        assert!(is_archive_name(&format!("{stamp}.tar.zst"), SITE_EXT));
        assert!(is_archive_name(&format!("{stamp}.dump"), DUMP_EXT));
        assert!(is_archive_name("20261124T101500.000001Z.tar.zst", SITE_EXT));
        for other in [
            "20261124T101500.000001Z.dump",
            "20261124T101500Z.tar.zst",
            "20261124T101500.000001Z.tar.zst.partial",
            ".20261124T101500.000001Z.tar.zst.partial",
            "notes.tar.zst",
            "x20261124T101500.000001Z.tar.zst",
            "20261124T101500.000001Z.tar.zst~",
        ] {
            assert!(!is_archive_name(other, SITE_EXT), "{other}");
        }
    }

    #[test]
    fn names_sort_by_age() {
        let a = "20261124T101500.000001Z";
        let b = "20261124T101500.000010Z";
        let c = "20261125T000000.000000Z";
        let mut v = vec![c, a, b];
        v.sort();
        assert_eq!(v, [a, b, c]);
    }
}
