//! The web role: one Linux user per site, its home and document root, a php-fpm pool and an
//! nginx vhost (`[web]` in agent.toml).
//!
//! **Create** makes, in order: the user (`useradd --create-home --user-group`, home
//! `home_root/<user>`, mode 0711 so nginx can reach the document root), `public_html` with a
//! placeholder page when it holds no index, the pool `pool_dir/<user>.conf` (socket
//! `socket_dir/php<version>-fpm-<user>.sock`) and the vhost `sites_dir/<domain>.conf`. Every
//! configuration file is written atomically; pools are checked with `php_fpm_test` and vhosts
//! with `nginx_test` before any reload. When a step fails, every file is put back as it was
//! and a user created by this command is removed again, so the host is left as it was.
//!
//! **Suspend** swaps the vhost for one that answers every request with a 503 "suspended"
//! page, and expires the user's account and gives it the `nologin` shell (no SSH, SFTP or
//! cron login); **unsuspend** undoes both. Files, pool and user are kept.
//!
//! **HTTPS** (`IssueCertificate`, module `tls`): a certificate for the apex and `www` from the
//! configured ACME directory, HTTP-01 answered by the site's own vhost: every vhost, normal
//! or suspended, serves `challenge_dir` at `/.well-known/acme-challenge/` on port 80. Once the
//! site has a certificate its vhost holds an HTTPS server (`https_port`) and a port-80
//! server that redirects everything else to it; a suspended site shows its page on both.
//! The agent renews its certificates itself ([`renew_certificates`]).
//!
//! **Terminate** archives the home (`archive_dir/<user>-<domain>-<UTC time>.tar.zst`, 0600)
//! before anything is removed, then removes the vhost and the pool, reloads, removes the
//! site's certificate, key and renewal state, and removes the user with its home. If the
//! archive cannot be made, nothing is removed.
//!
//! Everything is idempotent: a command that finds the site as asked changes nothing and
//! answers `changed: false`. Commands run one at a time (a process-wide lock); creates that
//! arrive together are applied together, with one `nginx -t` and one reload (`batch`).
//!
//! **Paths.** The document root is created by root inside a directory the customer owns, so
//! a symlink there is refused (`web_unsafe_path`) rather than followed, and the placeholder
//! is created with `O_EXCL`. Logs go to `log_dir`, which the customer cannot write (nginx's
//! master opens them as root).
//!
//! **Errors.** `web_io_failed` (retryable), `web_unsafe_path`, `web_user_conflict` (a user of
//! that name exists with another home), `site_not_found`, `php_version_unavailable`,
//! `web_template_invalid`, `nginx_config_invalid`, `php_fpm_config_invalid`,
//! `user_command_failed`, `archive_failed`, `reload_failed` (retryable); for certificates also
//! those of `tls` and `acme`.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use mpanel_protocol::{
    DomainName, PhpVersion, SystemUser,
    messages::Outcome,
    web::{
        CreateSite, CreateSiteOutput, IssueCertificate, SetSiteSuspended, SetSiteSuspendedOutput,
        TerminateSite, TerminateSiteOutput,
    },
};

use crate::{
    config::WebConfig,
    host::{self, Archive, Failure, is_root, run, stage, sync_dir, to_outcome},
};

mod batch;
mod tls;

pub use tls::{mark_reported, renew_certificates, renew_due, unreported};

const IO: &str = "web_io_failed";
const DOCROOT: &str = "public_html";

/// Site commands change nginx's and php-fpm's configuration: one at a time.
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const VHOST_TEMPLATE: &str = include_str!("web/vhost.conf");
const SUSPENDED_TEMPLATE: &str = include_str!("web/suspended.conf");
const POOL_TEMPLATE: &str = include_str!("web/pool.conf");
const PLACEHOLDER: &str = include_str!("web/placeholder.html");
/// The port-80 server of a site with a certificate: the challenge, and a redirect.
const REDIRECT_TEMPLATE: &str = include_str!("web/redirect.conf");
/// `{{acme_challenge}}`: the challenge location every vhost has.
const CHALLENGE_SNIPPET: &str = include_str!("web/challenge.conf");
/// `{{tls}}`: the certificate and TLS settings of a site's HTTPS server.
const TLS_SNIPPET: &str = include_str!("web/tls.conf");

/// Executes [`CreateSite`], together with the others that arrive while one runs (`batch`).
pub async fn create_site(cmd: &CreateSite, cfg: &WebConfig) -> Outcome {
    batch::create_site(cmd, cfg).await
}

/// Executes [`SetSiteSuspended`].
pub async fn set_site_suspended(cmd: &SetSiteSuspended, cfg: &WebConfig) -> Outcome {
    let _guard = LOCK.lock().await;
    let site = Site::new(cfg, &cmd.domain, &cmd.system_user, &cmd.php_version);
    to_outcome(set_suspended(&site, cmd.suspended).await)
}

/// Executes [`IssueCertificate`] (see [`tls`]); the ACME account lives in `state_dir` unless
/// `acme_account_file` says otherwise.
pub async fn issue_certificate(
    cmd: &IssueCertificate,
    cfg: &WebConfig,
    state_dir: &Path,
) -> Outcome {
    let _guard = LOCK.lock().await;
    let site = Site::new(cfg, &cmd.domain, &cmd.system_user, &cmd.php_version);
    let result = tls::issue(&site, state_dir, tls::Mode::Command { force: cmd.force }).await;
    if let Err(failure) = &result {
        tls::record_failure(cfg, site.domain, failure);
    }
    to_outcome(result)
}

/// Executes [`TerminateSite`].
pub async fn terminate_site(cmd: &TerminateSite, cfg: &WebConfig) -> Outcome {
    let _guard = LOCK.lock().await;
    let site = Site::new(cfg, &cmd.domain, &cmd.system_user, &cmd.php_version);
    to_outcome(terminate(&site).await)
}

/// One site's names and paths.
struct Site<'a> {
    cfg: &'a WebConfig,
    domain: &'a DomainName,
    user: &'a SystemUser,
    php: &'a PhpVersion,
}

impl<'a> Site<'a> {
    fn new(
        cfg: &'a WebConfig,
        domain: &'a DomainName,
        user: &'a SystemUser,
        php: &'a PhpVersion,
    ) -> Site<'a> {
        Site {
            cfg,
            domain,
            user,
            php,
        }
    }

    /// The home as the account sees it (`/home/<user>`).
    fn home(&self) -> PathBuf {
        self.cfg.home_root.join(self.user.as_str())
    }

    /// The home on this file system (under `users_prefix` when set).
    fn host_home(&self) -> PathBuf {
        self.cfg.host_path(&self.home())
    }

    fn host_docroot(&self) -> PathBuf {
        self.host_home().join(DOCROOT)
    }

    fn vhost_path(&self) -> PathBuf {
        self.cfg.sites_dir.join(format!("{}.conf", self.domain))
    }

    fn pool_dir(&self) -> PathBuf {
        PathBuf::from(self.cfg.pool_dir.replace("{php}", self.php.as_str()))
    }

    fn pool_path(&self) -> PathBuf {
        self.pool_dir().join(format!("{}.conf", self.user))
    }

    fn socket(&self) -> PathBuf {
        self.cfg
            .socket_dir
            .join(format!("php{}-fpm-{}.sock", self.php, self.user))
    }

    fn php_argv(&self, argv: &[String]) -> Vec<String> {
        argv.iter()
            .map(|a| a.replace("{php}", self.php.as_str()))
            .collect()
    }

    /// `--prefix <dir>` for the shadow tools when users live in a sandbox.
    fn prefix_args(&self) -> Vec<String> {
        match &self.cfg.users_prefix {
            Some(p) => vec!["--prefix".into(), p.display().to_string()],
            None => Vec::new(),
        }
    }

    /// `{{listen}}` for the plain HTTP server: `listen` as configured.
    fn http_listen(&self) -> Vec<String> {
        self.cfg
            .listen
            .iter()
            .map(|l| format!("    listen {l};"))
            .collect()
    }

    /// Renders `template` with the site's values; `listen` and `tls` are the lines of the
    /// server block being rendered.
    fn render_block(
        &self,
        template: &str,
        name: &str,
        listen: &[String],
        tls: &str,
    ) -> Result<String, Failure> {
        let challenge = CHALLENGE_SNIPPET.replace(
            "{{challenge_dir}}",
            &self.cfg.challenge_dir.display().to_string(),
        );
        let port_suffix = match self.cfg.https_port {
            443 => String::new(),
            port => format!(":{port}"),
        };
        let vars: [(&str, String); 13] = [
            ("domain", self.domain.to_string()),
            ("user", self.user.to_string()),
            ("php", self.php.to_string()),
            ("home", self.host_home().display().to_string()),
            ("docroot", self.host_docroot().display().to_string()),
            ("socket", self.socket().display().to_string()),
            ("listen", listen.join("\n")),
            ("tls", tls.trim_end().to_owned()),
            ("acme_challenge", challenge.trim_end().to_owned()),
            ("https_port_suffix", port_suffix),
            ("log_dir", self.cfg.log_dir.display().to_string()),
            (
                "fastcgi_params",
                self.cfg.fastcgi_params.display().to_string(),
            ),
            ("web_group", self.cfg.web_group.clone()),
        ];
        let mut out = template.to_owned();
        if tls.is_empty() {
            // No certificate: no blank line where its settings would be.
            out = out.replace("{{tls}}\n", "");
        }
        for (key, value) in &vars {
            out = out.replace(&format!("{{{{{key}}}}}"), value);
        }
        if let Some(at) = out.find("{{") {
            let unknown: String = out[at..].chars().take(40).collect();
            return Err(Failure::new(
                "web_template_invalid",
                format!("the {name} template has an unknown placeholder near '{unknown}'"),
                false,
            ));
        }
        Ok(out)
    }

    fn render(&self, template: &str, name: &str) -> Result<String, Failure> {
        self.render_block(template, name, &self.http_listen(), "")
    }

    fn template(&self, custom: &Option<PathBuf>, builtin: &str) -> Result<String, Failure> {
        match custom {
            None => Ok(builtin.to_owned()),
            Some(p) => fs::read_to_string(p).map_err(|e| Failure::io(IO, "read template", p, e)),
        }
    }

    /// The site's vhost file. Without a certificate: one port-80 server. With one: the site
    /// on HTTPS and a port-80 server redirecting to it; suspended, one server on both ports.
    /// Every server answers the ACME challenge.
    fn vhost(&self, suspended: bool, tls: Option<&tls::Tls>) -> Result<String, Failure> {
        let http = self.http_listen();
        let (name, template) = if suspended {
            let t = self.template(&self.cfg.suspended_template, SUSPENDED_TEMPLATE)?;
            ("suspended vhost", t)
        } else {
            (
                "vhost",
                self.template(&self.cfg.vhost_template, VHOST_TEMPLATE)?,
            )
        };
        let Some(tls) = tls else {
            return self.render_block(&template, name, &http, "");
        };
        let https = tls.listen(self.cfg);
        let block = tls.block();
        if suspended {
            return self.render_block(&template, name, &[http, https].concat(), &block);
        }
        let redirect = self.render_block(REDIRECT_TEMPLATE, "redirect", &http, "")?;
        let site = self.render_block(&template, name, &https, &block)?;
        Ok(format!("{redirect}{site}"))
    }

    fn pool(&self) -> Result<String, Failure> {
        let t = self.template(&self.cfg.pool_template, POOL_TEMPLATE)?;
        self.render(&t, "pool")
    }
}

// ---------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------

/// A site's user and files in place ([`prepare`]), waiting for nginx's check and the
/// reloads that `batch` runs once for every site made together.
struct Prepared {
    changes: Changes,
    pool_changed: bool,
    vhost_changed: bool,
}

impl Prepared {
    fn output(&self, site: &Site<'_>) -> CreateSiteOutput {
        CreateSiteOutput {
            system_user: site.user.clone(),
            home_dir: site.home().display().to_string(),
            document_root: site.home().join(DOCROOT).display().to_string(),
            changed: self.changes.any(),
        }
    }
}

/// Everything [`CreateSite`] changes except nginx's check and the reloads: the user, the
/// document root, the pool (checked by `php_fpm_test`) and the vhost. A failure puts back
/// what it changed.
async fn prepare(site: &Site<'_>) -> Result<Prepared, Failure> {
    let cfg = site.cfg;
    if !site.pool_dir().is_dir() {
        return Err(Failure::new(
            "php_version_unavailable",
            format!(
                "PHP {} is not installed here: {} does not exist",
                site.php,
                site.pool_dir().display()
            ),
            false,
        ));
    }
    let mut changes = Changes::default();
    let result = async {
        let user = ensure_user(site, &mut changes).await?;
        ensure_docroot(site, &user, &mut changes)?;
        let pool_changed = changes.write(&site.pool_path(), &site.pool()?, 0o644)?;
        if pool_changed && let Some(test) = &cfg.php_fpm_test {
            run("php_fpm_config_invalid", &site.php_argv(test), false).await?;
        }
        let tls = tls::installed(site).await?;
        let vhost = site.vhost(false, tls.as_ref())?;
        let vhost_changed = changes.write(&site.vhost_path(), &vhost, 0o644)?;
        if user.shell != cfg.login_shell {
            // A suspended site is served again: so is its user.
            set_user_locked(site, false).await?;
            changes.user_unlocked = true;
        }
        Ok((pool_changed, vhost_changed))
    }
    .await;
    match result {
        Ok((pool_changed, vhost_changed)) => Ok(Prepared {
            changes,
            pool_changed,
            vhost_changed,
        }),
        Err(failure) => {
            changes.revert(site).await;
            Err(failure)
        }
    }
}

async fn set_suspended(
    site: &Site<'_>,
    suspended: bool,
) -> Result<SetSiteSuspendedOutput, Failure> {
    let cfg = site.cfg;
    let Some(user) = find_user(cfg, site.user)? else {
        return Err(Failure::new(
            "site_not_found",
            format!("there is no user {} on this server", site.user),
            false,
        ));
    };
    let mut changes = Changes::default();
    let result = async {
        let tls = tls::installed(site).await?;
        let vhost = site.vhost(suspended, tls.as_ref())?;
        let vhost_changed = changes.write(&site.vhost_path(), &vhost, 0o644)?;
        if vhost_changed {
            run("nginx_config_invalid", &cfg.nginx_test, false).await?;
        }
        let locked = user.shell == cfg.nologin_shell;
        if locked != suspended {
            set_user_locked(site, suspended).await?;
            if suspended {
                changes.user_locked = true;
            } else {
                changes.user_unlocked = true;
            }
        }
        if vhost_changed && let Some(reload) = &cfg.nginx_reload {
            run("reload_failed", reload, true).await?;
        }
        Ok(())
    }
    .await;
    if let Err(failure) = result {
        changes.undo(site).await;
        return Err(failure);
    }
    Ok(SetSiteSuspendedOutput {
        suspended,
        changed: changes.any(),
    })
}

async fn terminate(site: &Site<'_>) -> Result<TerminateSiteOutput, Failure> {
    let cfg = site.cfg;
    let user = find_user(cfg, site.user)?;
    let home = site.host_home();
    let home_exists = match fs::symlink_metadata(&home) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(unsafe_path(&home));
        }
        Ok(m) => m.is_dir(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(Failure::io(IO, "inspect", &home, e)),
    };
    // The archive comes first: without it nothing is removed.
    let archive = if home_exists {
        Some(archive_home(site, &home).await?)
    } else {
        None
    };
    let vhost = site.vhost_path();
    let pool = site.pool_path();
    let mut removed = archive.is_some() || user.is_some();
    let mut changes = Changes::default();
    let vhost_removed = changes.remove(&vhost)?;
    let pool_removed = changes.remove(&pool)?;
    removed |= vhost_removed || pool_removed;
    let reloaded = async {
        if vhost_removed {
            run("nginx_config_invalid", &cfg.nginx_test, false).await?;
            if let Some(reload) = &cfg.nginx_reload {
                run("reload_failed", reload, true).await?;
            }
        }
        if pool_removed && let Some(reload) = &cfg.php_fpm_reload {
            run("reload_failed", &site.php_argv(reload), true).await?;
        }
        Ok::<(), Failure>(())
    }
    .await;
    if let Err(failure) = reloaded {
        changes.undo(site).await;
        return Err(failure);
    }
    // No vhost refers to them any more: the certificate, its key and its renewal state go.
    removed |= tls::remove(site)?;
    if user.is_some() {
        let mut argv = vec![cfg.userdel.display().to_string()];
        argv.extend(site.prefix_args());
        argv.extend(["--remove".into(), site.user.to_string()]);
        run("user_command_failed", &argv, false).await?;
    }
    // userdel removes the home it knows; a home left without its user goes too.
    if fs::symlink_metadata(&home).is_ok_and(|m| m.is_dir()) {
        fs::remove_dir_all(&home).map_err(|e| Failure::io(IO, "remove", &home, e))?;
    }
    let archive_bytes = match &archive {
        Some(p) => Some(
            fs::metadata(p)
                .map_err(|e| Failure::io(IO, "inspect", p, e))?
                .len(),
        ),
        None => None,
    };
    Ok(TerminateSiteOutput {
        archive: archive.map(|p| p.display().to_string()),
        archive_bytes,
        removed,
    })
}

// ---------------------------------------------------------------------------------------
// Steps
// ---------------------------------------------------------------------------------------

/// A user's entry in the passwd file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    uid: u32,
    gid: u32,
    home: PathBuf,
    shell: PathBuf,
}

fn find_user(cfg: &WebConfig, user: &SystemUser) -> Result<Option<PasswdEntry>, Failure> {
    let path = cfg.host_path(Path::new("/etc/passwd"));
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Failure::io(IO, "read", &path, e)),
    };
    Ok(text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 7 || f[0] != user.as_str() {
            return None;
        }
        Some(PasswdEntry {
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: PathBuf::from(f[5]),
            shell: PathBuf::from(f[6]),
        })
    }))
}

async fn ensure_user(site: &Site<'_>, changes: &mut Changes) -> Result<PasswdEntry, Failure> {
    let cfg = site.cfg;
    let home = site.home();
    if let Some(entry) = find_user(cfg, site.user)? {
        if entry.home != home {
            return Err(Failure::new(
                "web_user_conflict",
                format!(
                    "a user {} already exists with the home {}, not {}",
                    site.user,
                    entry.home.display(),
                    home.display()
                ),
                false,
            ));
        }
        return Ok(entry);
    }
    let mut argv = vec![cfg.useradd.display().to_string()];
    argv.extend(site.prefix_args());
    argv.extend([
        "--create-home".into(),
        "--user-group".into(),
        "--home-dir".into(),
        home.display().to_string(),
        "--shell".into(),
        cfg.login_shell.display().to_string(),
        "--comment".into(),
        format!("mPanel site {}", site.domain),
        site.user.to_string(),
    ]);
    if let Some(parent) = site.host_home().parent() {
        fs::create_dir_all(parent).map_err(|e| Failure::io(IO, "create", parent, e))?;
    }
    run("user_command_failed", &argv, false).await?;
    changes.user_created = true;
    find_user(cfg, site.user)?.ok_or_else(|| {
        Failure::new(
            "user_command_failed",
            format!("useradd succeeded but {} is not in passwd", site.user),
            false,
        )
    })
}

/// The home (0711), `public_html` (0755, the user's) and a placeholder page when the
/// document root has no index.
fn ensure_docroot(
    site: &Site<'_>,
    user: &PasswdEntry,
    changes: &mut Changes,
) -> Result<(), Failure> {
    let home = site.host_home();
    ensure_dir(&home, 0o711, user, changes)?;
    let docroot = site.host_docroot();
    ensure_dir(&docroot, 0o755, user, changes)?;
    let has_index = ["index.html", "index.php", "index.htm"]
        .iter()
        .any(|n| fs::symlink_metadata(docroot.join(n)).is_ok());
    if has_index {
        return Ok(());
    }
    let index = docroot.join("index.html");
    let page = PLACEHOLDER.replace("{{domain}}", site.domain.as_str());
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        // create_new: O_EXCL, so a symlink planted here is not followed.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&index)?;
        f.set_permissions(fs::Permissions::from_mode(0o644))?;
        if is_root() {
            std::os::unix::fs::fchown(&f, Some(user.uid), Some(user.gid))?;
        }
        f.write_all(page.as_bytes())?;
        f.sync_all()
    };
    write().map_err(|e| Failure::io(IO, "write", &index, e))?;
    changes.created_paths.push(index);
    Ok(())
}

fn ensure_dir(
    dir: &Path,
    mode: u32,
    owner: &PasswdEntry,
    changes: &mut Changes,
) -> Result<(), Failure> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() || !m.is_dir() => Err(unsafe_path(dir)),
        Ok(m) => {
            if m.permissions().mode() & 0o7777 != mode {
                fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                    .map_err(|e| Failure::io(IO, "chmod", dir, e))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir(dir).map_err(|e| Failure::io(IO, "create", dir, e))?;
            changes.created_paths.push(dir.to_path_buf());
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                .map_err(|e| Failure::io(IO, "chmod", dir, e))?;
            if is_root() {
                std::os::unix::fs::lchown(dir, Some(owner.uid), Some(owner.gid))
                    .map_err(|e| Failure::io(IO, "chown", dir, e))?;
            }
            Ok(())
        }
        Err(e) => Err(Failure::io(IO, "inspect", dir, e)),
    }
}

fn unsafe_path(path: &Path) -> Failure {
    Failure::new(
        "web_unsafe_path",
        format!(
            "{} is a symlink or not a directory; refusing to follow it",
            path.display()
        ),
        false,
    )
}

/// Suspended: account expired and `nologin`; else no expiry and the login shell.
async fn set_user_locked(site: &Site<'_>, locked: bool) -> Result<(), Failure> {
    let cfg = site.cfg;
    let mut argv = vec![cfg.usermod.display().to_string()];
    argv.extend(site.prefix_args());
    let (expire, shell) = if locked {
        ("1".to_owned(), &cfg.nologin_shell)
    } else {
        (String::new(), &cfg.login_shell)
    };
    argv.extend([
        "--expiredate".into(),
        expire,
        "--shell".into(),
        shell.display().to_string(),
        site.user.to_string(),
    ]);
    run("user_command_failed", &argv, false).await
}

/// `archive_dir/<user>-<domain>-<UTC time>.tar.zst` of the home (see `host::archive`).
async fn archive_home(site: &Site<'_>, home: &Path) -> Result<PathBuf, Failure> {
    let cfg = site.cfg;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let archive = Archive {
        tar: &cfg.tar,
        zstd: &cfg.zstd,
        dir: &cfg.archive_dir,
        name: format!("{}-{}-{stamp}.tar.zst", site.user, site.domain),
    };
    let parent = home.parent().unwrap_or(Path::new("/"));
    host::archive(&archive, parent, site.user.as_str()).await
}

/// What a command changed so far, to put back when a later step fails.
#[derive(Default)]
struct Changes {
    /// Files replaced or created: their path, previous contents (`None`: did not exist) and
    /// the mode to put them back with (keys are 0600).
    files: Vec<(PathBuf, Option<String>, u32)>,
    /// Directories and files this command created (removed again, newest first).
    created_paths: Vec<PathBuf>,
    user_created: bool,
    user_locked: bool,
    user_unlocked: bool,
}

impl Changes {
    fn any(&self) -> bool {
        !self.files.is_empty()
            || !self.created_paths.is_empty()
            || self.user_created
            || self.user_locked
            || self.user_unlocked
    }

    /// Replaces `path` with `contents` unless it already holds them; `Ok(true)` if written.
    fn write(&mut self, path: &Path, contents: &str, mode: u32) -> Result<bool, Failure> {
        let old = match fs::read_to_string(path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Failure::io(IO, "read", path, e)),
        };
        if old.as_deref() == Some(contents) {
            return Ok(false);
        }
        replace(path, contents, mode)?;
        self.files.push((path.to_path_buf(), old, mode));
        Ok(true)
    }

    /// Removes `path` if present; `Ok(true)` if it was.
    fn remove(&mut self, path: &Path) -> Result<bool, Failure> {
        let old = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Failure::io(IO, "read", path, e)),
        };
        let mode = fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o7777)
            .map_err(|e| Failure::io(IO, "inspect", path, e))?;
        fs::remove_file(path).map_err(|e| Failure::io(IO, "remove", path, e))?;
        self.files.push((path.to_path_buf(), Some(old), mode));
        Ok(true)
    }

    /// Puts back what this command changed, then reloads nginx if files changed (it may
    /// run what was reloaded before the failure).
    async fn undo(self, site: &Site<'_>) {
        if self.revert(site).await {
            reload_after_rollback(site.cfg).await;
        }
    }

    /// Puts back what this command changed, newest first, without reloading anything;
    /// true if files were put back. Problems are logged (the command's own failure is what
    /// the panel sees).
    async fn revert(self, site: &Site<'_>) -> bool {
        for (path, old, mode) in self.files.iter().rev() {
            let restored = match old {
                Some(text) => replace(path, text, *mode),
                None => fs::remove_file(path).map_err(|e| Failure::io(IO, "remove", path, e)),
            };
            if let Err(f) = restored {
                tracing::error!(code = f.code, "web rollback failed: {}", f.message);
            }
        }
        if (self.user_locked || self.user_unlocked)
            && let Err(f) = set_user_locked(site, self.user_unlocked).await
        {
            tracing::error!(code = f.code, "web rollback failed: {}", f.message);
        }
        if self.user_created {
            let mut argv = vec![site.cfg.userdel.display().to_string()];
            argv.extend(site.prefix_args());
            argv.extend(["--remove".into(), site.user.to_string()]);
            if let Err(f) = run("user_command_failed", &argv, false).await {
                tracing::error!(code = f.code, "web rollback failed: {}", f.message);
            }
        }
        for path in self.created_paths.iter().rev() {
            let gone = if path.is_dir() {
                fs::remove_dir(path)
            } else {
                fs::remove_file(path)
            };
            if let Err(e) = gone
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "web rollback left a path");
            }
        }
        !self.files.is_empty()
    }
}

/// Files are back as they were; nginx and php-fpm may still run what was reloaded.
async fn reload_after_rollback(cfg: &WebConfig) {
    if let Some(reload) = &cfg.nginx_reload
        && run("nginx_config_invalid", &cfg.nginx_test, false)
            .await
            .is_ok()
        && let Err(f) = run("reload_failed", reload, true).await
    {
        tracing::warn!("reloading nginx after a rollback failed: {}", f.message);
    }
}

/// Atomically replaces `path` (created 0644 or with its current mode and owner).
fn replace(path: &Path, contents: &str, mode: u32) -> Result<(), Failure> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    if !parent.is_dir() {
        return Err(Failure::new(
            IO,
            format!("{} does not exist", parent.display()),
            false,
        ));
    }
    let tmp = stage(IO, path, contents, mode)?;
    fs::rename(&tmp, path)
        .and_then(|()| sync_dir(path))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Failure::io(IO, "replace", path, e)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WebConfig {
        crate::config::AgentConfig::parse("").unwrap().web
    }

    #[test]
    fn templates_render_every_placeholder() {
        let cfg = config();
        let domain = DomainName::parse("example.com").unwrap();
        let user = SystemUser::parse("examplecom").unwrap();
        let php = PhpVersion::parse("8.2").unwrap();
        let site = Site::new(&cfg, &domain, &user, &php);
        let vhost = site.vhost(false, None).unwrap();
        assert!(vhost.contains("server_name example.com www.example.com;"));
        assert!(vhost.contains("root /home/examplecom/public_html;"));
        assert!(vhost.contains("fastcgi_pass unix:/run/php/php8.2-fpm-examplecom.sock;"));
        assert!(vhost.contains("    listen 80;\n    listen [::]:80;"));
        let suspended = site.vhost(true, None).unwrap();
        assert!(suspended.contains("return 503"), "{suspended}");
        assert!(!suspended.contains("fastcgi_pass"));
        let pool = site.pool().unwrap();
        assert!(pool.contains("[examplecom]\nuser = examplecom\n"), "{pool}");
        assert!(pool.contains("listen = /run/php/php8.2-fpm-examplecom.sock"));
        assert_eq!(
            site.pool_path(),
            Path::new("/etc/php/8.2/fpm/pool.d/examplecom.conf")
        );
        for text in [vhost, suspended, pool] {
            assert!(!text.contains("{{"), "{text}");
        }
        assert!(site.render("x {{nope}}", "test").is_err());
    }

    #[test]
    fn with_a_certificate_http_redirects_and_https_serves_the_site() {
        let mut cfg = config();
        cfg.https_port = 8443;
        let domain = DomainName::parse("example.com").unwrap();
        let user = SystemUser::parse("examplecom").unwrap();
        let php = PhpVersion::parse("8.2").unwrap();
        let site = Site::new(&cfg, &domain, &user, &php);
        let challenge =
            "location ^~ /.well-known/acme-challenge/ {\n        root /var/www/mpanel-acme;";
        assert!(site.vhost(false, None).unwrap().contains(challenge));
        for http2_directive in [false, true] {
            let tls = tls::Tls {
                chain: PathBuf::from("/etc/mpanel-agent/certs/example.com/fullchain.pem"),
                key: PathBuf::from("/etc/mpanel-agent/certs/example.com/privkey.pem"),
                http2_directive,
            };
            let vhost = site.vhost(false, Some(&tls)).unwrap();
            let (http, https) = vhost.split_once("\n}\n").unwrap();
            assert!(
                http.contains("    listen 80;\n    listen [::]:80;"),
                "{http}"
            );
            assert!(
                http.contains("return 301 https://$host:8443$request_uri;"),
                "{http}"
            );
            assert!(
                http.contains(challenge) && !http.contains("fastcgi_pass"),
                "{http}"
            );
            let listen = if http2_directive {
                "    listen 8443 ssl;\n    listen [::]:8443 ssl;"
            } else {
                "    listen 8443 ssl http2;\n    listen [::]:8443 ssl http2;"
            };
            assert!(https.contains(listen), "{https}");
            assert_eq!(https.contains("    http2 on;"), http2_directive);
            assert!(https.contains("ssl_protocols TLSv1.2 TLSv1.3;"), "{https}");
            assert!(
                https.contains(
                    "ssl_certificate_key /etc/mpanel-agent/certs/example.com/privkey.pem;"
                )
            );
            assert!(https.contains("fastcgi_pass unix:") && https.contains(challenge));
            assert!(!https.contains("listen 80;"));
            // Suspended: one server, both ports, the page and the challenge.
            let suspended = site.vhost(true, Some(&tls)).unwrap();
            assert_eq!(suspended.matches("server {").count(), 1, "{suspended}");
            assert!(suspended.contains("    listen 80;") && suspended.contains(listen));
            assert!(suspended.contains("return 503") && suspended.contains(challenge));
            assert!(!suspended.contains("return 301"));
            for text in [vhost, suspended] {
                assert!(!text.contains("{{"), "{text}");
            }
        }
    }

    #[test]
    fn prefix_moves_homes_and_passwd() {
        let mut cfg = config();
        cfg.users_prefix = Some(PathBuf::from("/sandbox"));
        let domain = DomainName::parse("example.com").unwrap();
        let user = SystemUser::parse("examplecom").unwrap();
        let php = PhpVersion::parse("8.2").unwrap();
        let site = Site::new(&cfg, &domain, &user, &php);
        assert_eq!(site.home(), Path::new("/home/examplecom"));
        assert_eq!(site.host_home(), Path::new("/sandbox/home/examplecom"));
        assert_eq!(site.prefix_args(), ["--prefix", "/sandbox"]);
    }
}
