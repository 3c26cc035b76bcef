//! The `[web]` section: where the web role puts users, sites, vhosts and pools, and the
//! commands it runs. Every path and command is here so a test (or an unusual host) can run
//! the role in a sandbox root (`users_prefix`). Every key is in `packaging/agent/agent.toml`,
//! commented, with its default: keep the two in step.

use std::path::PathBuf;

use serde::Deserialize;

use super::checks::{abs_path, argv, config_safe_path};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWeb {
    home_root: Option<PathBuf>,
    users_prefix: Option<PathBuf>,
    useradd: Option<PathBuf>,
    usermod: Option<PathBuf>,
    userdel: Option<PathBuf>,
    login_shell: Option<PathBuf>,
    nologin_shell: Option<PathBuf>,
    sites_dir: Option<PathBuf>,
    log_dir: Option<PathBuf>,
    fastcgi_params: Option<PathBuf>,
    listen: Option<Vec<String>>,
    pool_dir: Option<String>,
    socket_dir: Option<PathBuf>,
    web_group: Option<String>,
    archive_dir: Option<PathBuf>,
    tar: Option<PathBuf>,
    zstd: Option<PathBuf>,
    nginx_test: Option<Vec<String>>,
    nginx_reload: Option<Vec<String>>,
    php_fpm_test: Option<Vec<String>>,
    php_fpm_reload: Option<Vec<String>>,
    vhost_template: Option<PathBuf>,
    suspended_template: Option<PathBuf>,
    pool_template: Option<PathBuf>,
}

/// The `[web]` section, checked. `{php}` in `pool_dir`, `php_fpm_test` and
/// `php_fpm_reload` is replaced by the site's PHP version (`8.2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// Homes are `home_root/<user>` (as the account sees them).
    pub home_root: PathBuf,
    /// `--prefix` for useradd/usermod/userdel: users live in `<prefix>/etc/passwd` and homes
    /// under `<prefix>/<home_root>`, where the vhosts and pools point (a sandbox, a container
    /// root). `None` (no default): the host's users and homes.
    pub users_prefix: Option<PathBuf>,
    pub useradd: PathBuf,
    pub usermod: PathBuf,
    pub userdel: PathBuf,
    pub login_shell: PathBuf,
    pub nologin_shell: PathBuf,
    /// One `<domain>.conf` per site, included by nginx.
    pub sites_dir: PathBuf,
    pub log_dir: PathBuf,
    pub fastcgi_params: PathBuf,
    /// nginx `listen` values (`80`, `[::]:80`, `127.0.0.1:8080`).
    pub listen: Vec<String>,
    pub pool_dir: String,
    pub socket_dir: PathBuf,
    /// Owner group of the pools' sockets (nginx's workers).
    pub web_group: String,
    /// Terminated sites' homes are archived here.
    pub archive_dir: PathBuf,
    pub tar: PathBuf,
    pub zstd: PathBuf,
    pub nginx_test: Vec<String>,
    /// `None`: never reload nginx.
    pub nginx_reload: Option<Vec<String>>,
    /// `None`: pools are not checked before a reload.
    pub php_fpm_test: Option<Vec<String>>,
    /// `None`: never reload php-fpm.
    pub php_fpm_reload: Option<Vec<String>>,
    /// Template files replacing the built-in ones.
    pub vhost_template: Option<PathBuf>,
    pub suspended_template: Option<PathBuf>,
    pub pool_template: Option<PathBuf>,
}

impl WebConfig {
    /// Where a path as the host's users see it (`/home/x`) lives on this file system.
    pub fn host_path(&self, path: &std::path::Path) -> PathBuf {
        match &self.users_prefix {
            Some(prefix) => prefix.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_path_buf(),
        }
    }
}

fn listen_ok(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "[]:.".contains(c))
}

pub(super) fn parse(raw: RawWeb, problems: &mut Vec<String>) -> WebConfig {
    let p = problems;
    let home_root = config_safe_path(p, "web.home_root", raw.home_root, "/home");
    let users_prefix = raw
        .users_prefix
        .map(|v| config_safe_path(p, "web.users_prefix", Some(v), "/"));
    let useradd = abs_path(p, "web.useradd", raw.useradd, "/usr/sbin/useradd");
    let usermod = abs_path(p, "web.usermod", raw.usermod, "/usr/sbin/usermod");
    let userdel = abs_path(p, "web.userdel", raw.userdel, "/usr/sbin/userdel");
    let login_shell = config_safe_path(p, "web.login_shell", raw.login_shell, "/bin/bash");
    let nologin_shell = config_safe_path(
        p,
        "web.nologin_shell",
        raw.nologin_shell,
        "/usr/sbin/nologin",
    );
    let sites_dir = abs_path(
        p,
        "web.sites_dir",
        raw.sites_dir,
        "/etc/nginx/sites-enabled",
    );
    let log_dir = config_safe_path(p, "web.log_dir", raw.log_dir, "/var/log/nginx");
    let fastcgi_params = config_safe_path(
        p,
        "web.fastcgi_params",
        raw.fastcgi_params,
        "/etc/nginx/fastcgi_params",
    );
    let listen = raw
        .listen
        .unwrap_or_else(|| vec!["80".into(), "[::]:80".into()]);
    if listen.is_empty() || !listen.iter().all(|l| listen_ok(l)) {
        p.push("web.listen: a non-empty list like [\"80\", \"[::]:80\"]".into());
    }
    let pool_dir = raw
        .pool_dir
        .unwrap_or_else(|| "/etc/php/{php}/fpm/pool.d".into());
    let pool_dir_check = pool_dir.replace("{php}", "8.2");
    abs_path(p, "web.pool_dir", Some(pool_dir_check.into()), "/");
    let socket_dir = config_safe_path(p, "web.socket_dir", raw.socket_dir, "/run/php");
    let web_group = raw.web_group.unwrap_or_else(|| "www-data".into());
    if web_group.is_empty()
        || web_group.len() > 32
        || !web_group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        p.push("web.web_group: a group name (letters, digits, '-', '_')".into());
    }
    let archive_dir = abs_path(
        p,
        "web.archive_dir",
        raw.archive_dir,
        "/var/backups/mpanel-agent/terminated",
    );
    let tar = abs_path(p, "web.tar", raw.tar, "/usr/bin/tar");
    let zstd = abs_path(p, "web.zstd", raw.zstd, "/usr/bin/zstd");
    let nginx_test = argv(
        p,
        "web.nginx_test",
        raw.nginx_test,
        &["/usr/sbin/nginx", "-t", "-q"],
        false,
    )
    .unwrap_or_default();
    let nginx_reload = argv(
        p,
        "web.nginx_reload",
        raw.nginx_reload,
        &["systemctl", "reload", "nginx"],
        true,
    );
    let php_fpm_test = argv(
        p,
        "web.php_fpm_test",
        raw.php_fpm_test,
        &["php-fpm{php}", "-t"],
        true,
    );
    let php_fpm_reload = argv(
        p,
        "web.php_fpm_reload",
        raw.php_fpm_reload,
        &["systemctl", "reload", "php{php}-fpm"],
        true,
    );
    let template = |p: &mut Vec<String>, key: &str, v: Option<PathBuf>| {
        v.map(|v| abs_path(p, key, Some(v), "/"))
    };
    let vhost_template = template(p, "web.vhost_template", raw.vhost_template);
    let suspended_template = template(p, "web.suspended_template", raw.suspended_template);
    let pool_template = template(p, "web.pool_template", raw.pool_template);
    WebConfig {
        home_root,
        users_prefix,
        useradd,
        usermod,
        userdel,
        login_shell,
        nologin_shell,
        sites_dir,
        log_dir,
        fastcgi_params,
        listen,
        pool_dir,
        socket_dir,
        web_group,
        archive_dir,
        tar,
        zstd,
        nginx_test,
        nginx_reload,
        php_fpm_test,
        php_fpm_reload,
        vhost_template,
        suspended_template,
        pool_template,
    }
}
