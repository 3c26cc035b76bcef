//! The mail role: Postfix virtual mailboxes and Dovecot passwd-file users (`[mail]` in
//! agent.toml).
//!
//! **Files.** Three text files, each written whole and atomically (a temp file in the same
//! directory, fsync, rename, fsync of the directory; the mode and owner of the file it
//! replaces, or 0644 for a new map and 0640 for a new passwd-file):
//! - `virtual_mailbox_domains`: `example.com OK`, one line per domain with a mailbox;
//! - `virtual_mailbox_maps`: `info@example.com example.com/info/`, relative to `vmail_root`
//!   (Postfix's `virtual_mailbox_base`; the trailing `/` means Maildir);
//! - the Dovecot passwd-file:
//!   `info@example.com:{ARGON2ID}$argon2id$…:uid:gid::vmail_root/example.com/info::extra`,
//!   the extra fields being `userdb_quota_rule=*:storage=<N>M` when there is a quota and
//!   `nologin` when the mailbox is disabled.
//!
//! Lines the agent does not manage (comments, other keys) are kept verbatim. Every command
//! computes all new contents first, writes them, runs `postmap hash:` on both maps and the
//! reload commands; when postmap or a reload fails the previous contents are put back (and
//! the maps rebuilt), so a failed command leaves the files as they were. A command that finds
//! everything as asked writes nothing and answers `changed: false`. Mail commands run one at
//! a time (a process-wide lock); creates that arrive together are written together, with
//! one `postmap` of each map and one reload (and, if that fails, again one by one).
//!
//! **Disable** adds Dovecot's `nologin` extra field to the passwd-file entry: the passdb then
//! refuses every login even with the right password, while the entry, its hash, the userdb
//! fields and the Postfix maps stay, so mail keeps being delivered and enabling is just
//! removing the field. **Delete** archives the maildir (`archive_dir/<address>-<UTC
//! time>.tar.zst`, 0600; nothing is removed when that fails), removes the map line and the
//! passwd-file entry (and the domain line when no mailbox of that domain remains), then the
//! maildir.
//!
//! **Maildirs** are `vmail_root/<domain>/<local>/{cur,new,tmp}`, mode 0700, owned by
//! `vmail_uid:vmail_gid` when the agent runs as root; unprivileged (tests) the chown is
//! skipped with a log line.
//!
//! **Errors.** `mail_not_configured` (no `[mail]`), `mail_io_failed` (retryable),
//! `mail_unsafe_path` (a symlink where a maildir directory should be), `mailbox_not_found`,
//! `postmap_failed`, `reload_failed`, `archive_failed` (retryable).

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use mpanel_protocol::{
    EmailAddress,
    mail::{
        CreateMailbox, CreateMailboxOutput, DeleteMailbox, DeleteMailboxOutput, SetMailboxEnabled,
        SetMailboxEnabledOutput, SetMailboxPassword, SetMailboxPasswordOutput,
    },
    messages::Outcome,
};

use crate::{
    config::MailConfig,
    host::{Archive, Failure, archive, is_root, run, stage, sync_dir, to_outcome},
    roles::batch::{Queue, Waiting},
};

const NOLOGIN: &str = "nologin";
const IO: &str = "mail_io_failed";

/// Mail commands touch the same files: one at a time.
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Creates waiting for [`LOCK`], applied together by its holder.
static CREATES: Queue<CreateMailbox, MailConfig> = Queue::new();

fn configured(config: Option<&MailConfig>) -> Result<&MailConfig, Failure> {
    config.ok_or_else(|| {
        Failure::new(
            "mail_not_configured",
            "this agent serves the mail role but agent.toml has no [mail] section",
            false,
        )
    })
}

/// Logs at start whether the mail role can work (its section and its postmap command).
pub fn check_at_start(config: Option<&MailConfig>) {
    match config {
        None => tracing::warn!(
            "the mail role is configured but agent.toml has no [mail] section: \
             mail commands will be refused (mail_not_configured)"
        ),
        Some(c) if !c.postmap.exists() => tracing::warn!(
            postmap = %c.postmap.display(),
            "the mail role's postmap command is missing: install postfix"
        ),
        Some(_) => {}
    }
}

// ---------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------

/// Executes [`CreateMailbox`].
pub async fn create_mailbox(cmd: &CreateMailbox, config: Option<&MailConfig>) -> Outcome {
    match configured(config) {
        Ok(cfg) => {
            CREATES
                .run(&LOCK, cmd, cfg, IO, |batch| create_together(cfg, batch))
                .await
        }
        Err(f) => to_outcome::<()>(Err(f)),
    }
}

/// Executes [`SetMailboxEnabled`].
pub async fn set_mailbox_enabled(cmd: &SetMailboxEnabled, config: Option<&MailConfig>) -> Outcome {
    to_outcome(set_enabled(cmd, config).await)
}

/// Executes [`SetMailboxPassword`].
pub async fn set_mailbox_password(
    cmd: &SetMailboxPassword,
    config: Option<&MailConfig>,
) -> Outcome {
    to_outcome(set_password(cmd, config).await)
}

/// Executes [`DeleteMailbox`].
pub async fn delete_mailbox(cmd: &DeleteMailbox, config: Option<&MailConfig>) -> Outcome {
    to_outcome(delete(cmd, config).await)
}

/// Creates that arrived together (`roles::batch`): each maildir, then every mailbox's lines
/// in the three files, written once, with one `postmap` of each map and one reload each.
/// If that fails, each create is applied again alone, so a failure is the command's own.
async fn create_together(cfg: &MailConfig, batch: Vec<Waiting<CreateMailbox, MailConfig>>) {
    let mut ready = Vec::with_capacity(batch.len());
    for w in batch {
        match ensure_maildir(cfg, &w.cmd.address) {
            Ok(created_dir) => ready.push((w, created_dir)),
            Err(f) => w.fail(f),
        }
    }
    if ready.is_empty() {
        return;
    }
    let together = async {
        let old = Files::read(cfg)?;
        let mut new = old.clone();
        let mut changed = Vec::with_capacity(ready.len());
        for (w, _) in &ready {
            let next = with_mailbox(cfg, &w.cmd, &new);
            changed.push(next != new);
            new = next;
        }
        apply(cfg, &old, &new).await?;
        Ok::<_, Failure>(changed)
    }
    .await;
    match together {
        Ok(changed) => {
            for ((w, created_dir), changed) in ready.into_iter().zip(changed) {
                let maildir = maildir(cfg, &w.cmd.address).display().to_string();
                w.answer(Ok(CreateMailboxOutput {
                    maildir,
                    changed: changed || created_dir,
                }));
            }
        }
        Err(f) if ready.len() == 1 => ready.into_iter().for_each(|(w, _)| w.fail(f.clone())),
        Err(f) => {
            tracing::info!(
                mailboxes = ready.len(),
                "applying the mailboxes made together failed ({}); applying each alone",
                f.message
            );
            for (w, created_dir) in ready {
                let alone = async {
                    let old = Files::read(cfg)?;
                    apply(cfg, &old, &with_mailbox(cfg, &w.cmd, &old)).await
                }
                .await;
                let maildir = maildir(cfg, &w.cmd.address).display().to_string();
                w.answer(alone.map(|changed| CreateMailboxOutput {
                    maildir,
                    changed: changed || created_dir,
                }));
            }
        }
    }
}

/// `files` with the mailbox of `cmd`: its domain, its map line and its passwd-file entry.
fn with_mailbox(cfg: &MailConfig, cmd: &CreateMailbox, files: &Files) -> Files {
    let address = &cmd.address;
    let domain = address.domain();
    let mut new = files.clone();
    new.domains = set_map_line(&files.domains, domain.as_str(), Some("OK"));
    new.maps = set_map_line(
        &files.maps,
        address.as_str(),
        Some(&format!("{}/{}/", domain.as_str(), address.local_part())),
    );
    let mut extra = Vec::new();
    if let Some(q) = cmd.quota_mb {
        extra.push(format!("userdb_quota_rule=*:storage={}M", q.get()));
    }
    let line = format!(
        "{}:{{ARGON2ID}}{}:{}:{}::{}::{}",
        address.as_str(),
        cmd.password_hash.as_phc(),
        cfg.vmail_uid,
        cfg.vmail_gid,
        maildir(cfg, address).display(),
        extra.join(" ")
    );
    new.passwd = set_passwd_line(&files.passwd, address, Some(line));
    new
}

async fn set_enabled(
    cmd: &SetMailboxEnabled,
    config: Option<&MailConfig>,
) -> Result<SetMailboxEnabledOutput, Failure> {
    let cfg = configured(config)?;
    let _guard = LOCK.lock().await;
    let old = Files::read(cfg)?;
    let line = find_passwd_line(&old.passwd, &cmd.address).ok_or_else(|| not_found(cmd))?;
    // user:password:uid:gid:gecos:home:shell:extra fields (which may contain ':').
    let mut fields: Vec<String> = line.splitn(8, ':').map(str::to_owned).collect();
    fields.resize(8, String::new());
    let mut extra: Vec<&str> = fields[7]
        .split(' ')
        .filter(|f| !f.is_empty() && *f != NOLOGIN)
        .collect();
    if !cmd.enabled {
        extra.push(NOLOGIN);
    }
    fields[7] = extra.join(" ");
    let mut new = old.clone();
    new.passwd = set_passwd_line(&old.passwd, &cmd.address, Some(fields.join(":")));
    let changed = apply(cfg, &old, &new).await?;
    Ok(SetMailboxEnabledOutput {
        enabled: cmd.enabled,
        changed,
    })
}

async fn set_password(
    cmd: &SetMailboxPassword,
    config: Option<&MailConfig>,
) -> Result<SetMailboxPasswordOutput, Failure> {
    let cfg = configured(config)?;
    let _guard = LOCK.lock().await;
    let old = Files::read(cfg)?;
    let line = find_passwd_line(&old.passwd, &cmd.address).ok_or_else(|| {
        Failure::new(
            "mailbox_not_found",
            format!("there is no mailbox {}", cmd.address),
            false,
        )
    })?;
    let mut fields: Vec<String> = line.splitn(8, ':').map(str::to_owned).collect();
    fields.resize(8, String::new());
    fields[1] = format!("{{ARGON2ID}}{}", cmd.password_hash.as_phc());
    let mut new = old.clone();
    new.passwd = set_passwd_line(&old.passwd, &cmd.address, Some(fields.join(":")));
    let changed = apply(cfg, &old, &new).await?;
    Ok(SetMailboxPasswordOutput { changed })
}

fn not_found(cmd: &SetMailboxEnabled) -> Failure {
    Failure::new(
        "mailbox_not_found",
        format!("there is no mailbox {}", cmd.address),
        false,
    )
}

async fn delete(
    cmd: &DeleteMailbox,
    config: Option<&MailConfig>,
) -> Result<DeleteMailboxOutput, Failure> {
    let cfg = configured(config)?;
    let _guard = LOCK.lock().await;
    let old = Files::read(cfg)?;
    let address = &cmd.address;
    let mut new = old.clone();
    new.maps = set_map_line(&old.maps, address.as_str(), None);
    new.passwd = set_passwd_line(&old.passwd, address, None);
    let domain = address.domain();
    let suffix = format!("@{}", domain.as_str());
    let domain_still_used = new
        .maps
        .lines()
        .filter_map(map_key)
        .any(|k| k.ends_with(&suffix));
    if !domain_still_used {
        new.domains = set_map_line(&old.domains, domain.as_str(), None);
    }
    // The archive comes first: without it nothing is removed.
    let dir = maildir(cfg, address);
    let archive = archive_maildir(cfg, address, &dir).await?;
    let deleted = apply(cfg, &old, &new).await?;
    if archive.is_some() {
        fs::remove_dir_all(&dir).map_err(|e| Failure::io(IO, "remove", &dir, e))?;
    }
    Ok(DeleteMailboxOutput {
        deleted,
        maildir: dir.display().to_string(),
        archive: archive.map(|a| a.display().to_string()),
    })
}

/// `archive_dir/<address>-<UTC time>.tar.zst` (0600) of the maildir, written under a
/// temporary name and renamed once complete; `None` when there is no maildir. Refuses a
/// maildir reached through a symlink (its removal would follow it).
async fn archive_maildir(
    cfg: &MailConfig,
    address: &EmailAddress,
    dir: &Path,
) -> Result<Option<PathBuf>, Failure> {
    let domain_dir = cfg.vmail_root.join(address.domain().as_str());
    for d in [&domain_dir, &dir.to_path_buf()] {
        match fs::symlink_metadata(d) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(Failure::new(
                    "mail_unsafe_path",
                    format!("{} is not a directory", d.display()),
                    false,
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Failure::io(IO, "inspect", d, e)),
        }
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let target = archive(
        &Archive {
            tar: &cfg.tar,
            zstd: &cfg.zstd,
            dir: &cfg.archive_dir,
            name: format!("{address}-{stamp}.tar.zst"),
        },
        &domain_dir,
        address.local_part(),
    )
    .await?;
    Ok(Some(target))
}

// ---------------------------------------------------------------------------------------
// File contents
// ---------------------------------------------------------------------------------------

/// The three managed files; `None` for one that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Files {
    domains_existed: bool,
    maps_existed: bool,
    passwd_existed: bool,
    domains: String,
    maps: String,
    passwd: String,
}

impl Files {
    fn read(cfg: &MailConfig) -> Result<Files, Failure> {
        let read = |p: &Path| match fs::read_to_string(p) {
            Ok(s) => Ok((true, s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((false, String::new())),
            Err(e) => Err(Failure::io(IO, "read", p, e)),
        };
        let (domains_existed, domains) = read(&cfg.virtual_mailbox_domains)?;
        let (maps_existed, maps) = read(&cfg.virtual_mailbox_maps)?;
        let (passwd_existed, passwd) = read(&cfg.passwd_file)?;
        Ok(Files {
            domains_existed,
            maps_existed,
            passwd_existed,
            domains,
            maps,
            passwd,
        })
    }
}

/// The key of a Postfix map line; `None` for comments and blank lines.
fn map_key(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    t.split_whitespace().next()
}

/// `text` with the line of `key` set to `key value` (in place, or appended), or removed
/// when `value` is `None`. Other lines are kept; a duplicate of the key is dropped.
fn set_map_line(text: &str, key: &str, value: Option<&str>) -> String {
    let wanted = value.map(|v| format!("{key} {v}"));
    set_line(text, |l| map_key(l) == Some(key), wanted)
}

fn passwd_user(line: &str) -> Option<&str> {
    if line.trim_start().starts_with('#') {
        return None;
    }
    line.split(':').next()
}

fn find_passwd_line<'a>(text: &'a str, address: &EmailAddress) -> Option<&'a str> {
    text.lines()
        .find(|l| passwd_user(l) == Some(address.as_str()))
}

fn set_passwd_line(text: &str, address: &EmailAddress, line: Option<String>) -> String {
    set_line(text, |l| passwd_user(l) == Some(address.as_str()), line)
}

fn set_line(text: &str, matches: impl Fn(&str) -> bool, wanted: Option<String>) -> String {
    let mut out = String::with_capacity(text.len() + 128);
    let mut placed = false;
    for line in text.lines() {
        if matches(line) {
            if let (Some(w), false) = (&wanted, placed) {
                out.push_str(w);
                out.push('\n');
                placed = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if let (Some(w), false) = (&wanted, placed) {
        out.push_str(w);
        out.push('\n');
    }
    // Unchanged text keeps its exact bytes (a missing final newline is not a change).
    if out.trim_end_matches('\n') == text.trim_end_matches('\n') {
        return text.to_owned();
    }
    out
}

// ---------------------------------------------------------------------------------------
// Applying a change
// ---------------------------------------------------------------------------------------

struct Target<'a> {
    path: &'a Path,
    existed: bool,
    old: &'a str,
    new: &'a str,
    default_mode: u32,
}

fn targets<'a>(cfg: &'a MailConfig, old: &'a Files, new: &'a Files) -> [Target<'a>; 3] {
    [
        Target {
            path: &cfg.virtual_mailbox_domains,
            existed: old.domains_existed,
            old: &old.domains,
            new: &new.domains,
            default_mode: 0o644,
        },
        Target {
            path: &cfg.virtual_mailbox_maps,
            existed: old.maps_existed,
            old: &old.maps,
            new: &new.maps,
            default_mode: 0o644,
        },
        Target {
            path: &cfg.passwd_file,
            existed: old.passwd_existed,
            old: &old.passwd,
            new: &new.passwd,
            default_mode: 0o640,
        },
    ]
}

/// Writes the files of `new` that differ from `old`, rebuilds the maps and reloads; on a
/// failure puts `old` back. `Ok(false)`: nothing to do (the maps' `.db` are still built if
/// missing).
async fn apply(cfg: &MailConfig, old: &Files, new: &Files) -> Result<bool, Failure> {
    let targets = targets(cfg, old, new);
    let changed: Vec<&Target> = targets.iter().filter(|t| t.old != t.new).collect();
    if changed.is_empty() {
        let db_missing = [&cfg.virtual_mailbox_domains, &cfg.virtual_mailbox_maps]
            .iter()
            .any(|p| !db_path(p).exists());
        if db_missing {
            postmap_all(cfg).await?;
        }
        return Ok(false);
    }
    // Stage every new content before renaming any.
    let mut staged = Vec::new();
    for t in &changed {
        match stage(IO, t.path, t.new, t.default_mode) {
            Ok(tmp) => staged.push((t, tmp)),
            Err(f) => {
                for (_, tmp) in &staged {
                    let _ = fs::remove_file(tmp);
                }
                return Err(f);
            }
        }
    }
    let mut renamed: Vec<&Target> = Vec::new();
    let mut failure = None;
    for (t, tmp) in &staged {
        if failure.is_some() {
            let _ = fs::remove_file(tmp);
            continue;
        }
        match fs::rename(tmp, t.path).and_then(|()| sync_dir(t.path)) {
            Ok(()) => renamed.push(t),
            Err(e) => {
                let _ = fs::remove_file(tmp);
                failure = Some(Failure::io(IO, "replace", t.path, e));
            }
        }
    }
    if failure.is_none()
        && let Err(f) = postmap_all(cfg).await
    {
        failure = Some(f);
    }
    if failure.is_none() {
        for argv in [&cfg.postfix_reload, &cfg.dovecot_reload]
            .into_iter()
            .flatten()
        {
            if let Err(f) = run("reload_failed", argv, true).await {
                failure = Some(f);
                break;
            }
        }
    }
    let Some(failure) = failure else {
        return Ok(true);
    };
    // Put back what was there.
    for t in renamed {
        let restored = if t.existed {
            stage(IO, t.path, t.old, t.default_mode).and_then(|tmp| {
                fs::rename(&tmp, t.path).map_err(|e| Failure::io(IO, "restore", t.path, e))
            })
        } else {
            fs::remove_file(t.path).map_err(|e| Failure::io(IO, "remove", t.path, e))
        };
        if let Err(f) = restored {
            tracing::error!(code = f.code, "mail rollback failed: {}", f.message);
        }
    }
    if let Err(f) = postmap_all(cfg).await {
        tracing::warn!("rebuilding the maps after a rollback failed: {}", f.message);
    }
    Err(failure)
}

fn db_path(map: &Path) -> PathBuf {
    let mut s = map.as_os_str().to_owned();
    s.push(".db");
    PathBuf::from(s)
}

async fn postmap_all(cfg: &MailConfig) -> Result<(), Failure> {
    for map in [&cfg.virtual_mailbox_domains, &cfg.virtual_mailbox_maps] {
        if !map.exists() {
            // postmap needs a source; an empty map is what a missing one means.
            stage(IO, map, "", 0o644).and_then(|tmp| {
                fs::rename(&tmp, map).map_err(|e| Failure::io(IO, "create", map, e))
            })?;
        }
        let argv = vec![
            cfg.postmap.display().to_string(),
            format!("hash:{}", map.display()),
        ];
        run("postmap_failed", &argv, false).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Maildirs
// ---------------------------------------------------------------------------------------

fn maildir(cfg: &MailConfig, address: &EmailAddress) -> PathBuf {
    cfg.vmail_root
        .join(address.domain().as_str())
        .join(address.local_part())
}

/// Creates `vmail_root/domain/local/{cur,new,tmp}` (0700, owned by vmail when root);
/// `Ok(true)` when something was created. Refuses a symlink anywhere below `vmail_root`.
fn ensure_maildir(cfg: &MailConfig, address: &EmailAddress) -> Result<bool, Failure> {
    let domain_dir = cfg.vmail_root.join(address.domain().as_str());
    let mail_dir = domain_dir.join(address.local_part());
    let mut dirs = vec![domain_dir, mail_dir.clone()];
    dirs.extend(["cur", "new", "tmp"].map(|d| mail_dir.join(d)));
    fs::create_dir_all(&cfg.vmail_root)
        .map_err(|e| Failure::io(IO, "create", &cfg.vmail_root, e))?;
    let root = is_root();
    let mut created = false;
    for dir in &dirs {
        match fs::symlink_metadata(dir) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(Failure::new(
                    "mail_unsafe_path",
                    format!("{} exists and is not a directory", dir.display()),
                    false,
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(dir).map_err(|e| Failure::io(IO, "create", dir, e))?;
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| Failure::io(IO, "chmod", dir, e))?;
                if root {
                    std::os::unix::fs::lchown(dir, Some(cfg.vmail_uid), Some(cfg.vmail_gid))
                        .map_err(|e| Failure::io(IO, "chown", dir, e))?;
                }
                created = true;
            }
            Err(e) => return Err(Failure::io(IO, "inspect", dir, e)),
        }
    }
    if created && !root {
        tracing::info!(
            maildir = %mail_dir.display(),
            "not running as root: the maildir is left owned by the agent's user, not vmail"
        );
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_lines_are_set_once_and_removed() {
        let text = "# managed by hand\nother.com OK\n";
        let added = set_map_line(text, "example.com", Some("OK"));
        assert_eq!(added, "# managed by hand\nother.com OK\nexample.com OK\n");
        assert_eq!(set_map_line(&added, "example.com", Some("OK")), added);
        assert_eq!(set_map_line(&added, "example.com", None), text);
        assert_eq!(set_map_line(text, "absent.com", None), text);
        // A duplicate is collapsed into one line.
        let dup = "a b\nx y\na c\n";
        assert_eq!(set_map_line(dup, "a", Some("d")), "a d\nx y\n");
        // No final newline: unchanged means byte-identical.
        assert_eq!(set_map_line("a OK", "a", Some("OK")), "a OK");
    }
}
