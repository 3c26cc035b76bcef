//! Host operations shared by the roles: the failure type their executors return, atomic
//! file replacement, running a configured command with a timeout, archiving a directory,
//! and finding programs.

use std::{
    fs,
    io::Write,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use mpanel_protocol::messages::Outcome;

/// How long one host command may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a role's command failed, as it becomes an [`Outcome::Error`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: &'static str,
    pub message: String,
    pub retryable: bool,
}

impl Failure {
    pub fn new(code: &'static str, message: impl Into<String>, retryable: bool) -> Failure {
        Failure {
            code,
            message: message.into(),
            retryable,
        }
    }

    /// A file system step that failed (retryable: disks fill and free up).
    pub fn io(code: &'static str, what: &str, path: &Path, e: std::io::Error) -> Failure {
        Failure::new(code, format!("{what} {}: {e}", path.display()), true)
    }
}

/// The outcome of an executor's result.
pub fn to_outcome<T: serde::Serialize>(result: Result<T, Failure>) -> Outcome {
    match result {
        Ok(out) => {
            Outcome::ok(&out).unwrap_or_else(|e| Outcome::error("internal", &e.to_string(), false))
        }
        Err(f) => Outcome::error(f.code, &f.message, f.retryable),
    }
}

/// Writes `contents` to a new temp file beside `path` with the mode and owner of `path`
/// (or `default_mode`), fsynced. Returns the temp file's path.
pub fn stage(
    io_code: &'static str,
    path: &Path,
    contents: &str,
    default_mode: u32,
) -> Result<PathBuf, Failure> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.mpanel-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let existing = fs::metadata(path).ok();
    let mode = existing
        .as_ref()
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(default_mode);
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some(m) = &existing
            && is_root()
        {
            std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))?;
        }
        f.write_all(contents.as_bytes())?;
        f.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Failure::io(io_code, "write", &tmp, e)
    })?;
    Ok(tmp)
}

pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    fs::File::open(path.parent().unwrap_or(Path::new("/")))?.sync_all()
}

/// Runs `argv` with a timeout; a non-zero exit is `code` with the end of its stderr.
pub async fn run(code: &'static str, argv: &[String], retryable: bool) -> Result<(), Failure> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| Failure::new(code, "empty command", false))?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(COMMAND_TIMEOUT, command.output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            return Err(Failure::new(
                code,
                format!("could not run {program}: {e}"),
                retryable,
            ));
        }
        Err(_) => {
            return Err(Failure::new(
                code,
                format!(
                    "{} did not finish within {COMMAND_TIMEOUT:?}",
                    argv.join(" ")
                ),
                true,
            ));
        }
    };
    if output.status.success() {
        return Ok(());
    }
    let tail = stderr_tail(&output.stderr);
    Err(Failure::new(
        code,
        format!("{} failed ({}): {tail}", argv.join(" "), output.status),
        retryable,
    ))
}

/// The end of a command's stderr, on one line and at most 500 characters: what an error
/// message can carry.
/// The programs and the place of an archive.
pub struct Archive<'a> {
    pub tar: &'a Path,
    pub zstd: &'a Path,
    /// Created 0700 when missing.
    pub dir: &'a Path,
    /// The file name, `….tar.zst`.
    pub name: String,
}

/// Archives `parent/member` (tar + zstd) as `archive.dir/archive.name`, 0600, written under
/// a temporary name and renamed once complete and synced, so that a file with the final name
/// is always a whole archive. `archive_failed` (retryable) when it cannot be made.
pub async fn archive(
    archive: &Archive<'_>,
    parent: &Path,
    member: &str,
) -> Result<PathBuf, Failure> {
    let dir = archive.dir;
    fs::create_dir_all(dir)
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
        .map_err(|e| Failure::io("archive_failed", "create", dir, e))?;
    let target = dir.join(&archive.name);
    let tmp = dir.join(format!(".{}.partial", archive.name));
    let argv = vec![
        archive.tar.display().to_string(),
        format!("--use-compress-program={}", archive.zstd.display()),
        "--create".into(),
        "--file".into(),
        tmp.display().to_string(),
        "--directory".into(),
        parent.display().to_string(),
        // "./" so that a member starting with '-' is never an option.
        format!("./{member}"),
    ];
    let made = async {
        run("archive_failed", &argv, true).await?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
            .and_then(|()| fs::File::open(&tmp)?.sync_all())
            .and_then(|()| fs::rename(&tmp, &target))
            .and_then(|()| sync_dir(&target))
            .map_err(|e| Failure::io("archive_failed", "finish", &target, e))
    }
    .await;
    if let Err(f) = made {
        let _ = fs::remove_file(&tmp);
        return Err(f);
    }
    Ok(target)
}

pub fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let flat = text.trim().replace('\n', " | ");
    let skip = flat.chars().count().saturating_sub(500);
    flat.chars().skip(skip).collect()
}

/// Whether this process runs as root (`/proc/self` belongs to the effective uid).
pub fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Whether `program` can be run: an existing file when it is a path, else found on `PATH`.
pub fn program_available(program: &str) -> bool {
    let runnable = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return runnable(Path::new(program));
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| runnable(&dir.join(program))))
}
