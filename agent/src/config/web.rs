//! The `[web]` section: where the web role puts users, sites, vhosts and pools, and the
//! commands it runs. Every path and command is here so a test (or an unusual host) can run
//! the role in a sandbox root (`users_prefix`). Every key is in `packaging/agent/agent.toml`,
//! commented, with its default: keep the two in step.

use std::path::PathBuf;

use serde::Deserialize;
use url::Url;

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
    https_port: Option<u16>,
    cert_dir: Option<PathBuf>,
    challenge_dir: Option<PathBuf>,
    acme_directory: Option<String>,
    acme_ca_file: Option<PathBuf>,
    acme_contact: Option<String>,
    acme_account_file: Option<PathBuf>,
}

/// Let's Encrypt's production directory: the default `acme_directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

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
    /// The port of the sites' HTTPS server blocks, on the addresses of `listen`.
    pub https_port: u16,
    /// `cert_dir/<domain>/`: the certificate chain, its key (0600) and renewal state.
    pub cert_dir: PathBuf,
    /// Served at `/.well-known/acme-challenge/` on every site's port 80 (nginx reads it).
    pub challenge_dir: PathBuf,
    /// The RFC 8555 directory certificates are ordered from.
    pub acme_directory: Url,
    /// A root to trust for the ACME server's own TLS, besides the system's (a private or
    /// test CA).
    pub acme_ca_file: Option<PathBuf>,
    /// The account's contact (`mailto:…`); `None`: no contact.
    pub acme_contact: Option<String>,
    /// The ACME account's credentials (0600); `None`: `acme-account.json` in the agent's
    /// state directory.
    pub acme_account_file: Option<PathBuf>,
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
    let https_port = raw.https_port.unwrap_or(443);
    if https_port == 0 {
        p.push("web.https_port: a port number (1-65535)".into());
    }
    let cert_dir = config_safe_path(p, "web.cert_dir", raw.cert_dir, "/etc/mpanel-agent/certs");
    let challenge_dir = config_safe_path(
        p,
        "web.challenge_dir",
        raw.challenge_dir,
        "/var/www/mpanel-acme",
    );
    let acme_directory = match Url::parse(raw.acme_directory.as_deref().unwrap_or(LETS_ENCRYPT)) {
        // The account key signs every request: never over plain HTTP.
        Ok(u) if u.scheme() == "https" && u.host().is_some() => u,
        _ => {
            p.push("web.acme_directory: an https:// URL (an RFC 8555 directory)".into());
            Url::parse(LETS_ENCRYPT).expect("valid")
        }
    };
    let acme_ca_file = raw
        .acme_ca_file
        .map(|v| abs_path(p, "web.acme_ca_file", Some(v), "/"));
    let acme_contact = raw.acme_contact.map(|c| {
        let address = c.strip_prefix("mailto:").unwrap_or(&c);
        let ok = address.len() <= 254
            && address
                .split_once('@')
                .is_some_and(|(local, host)| !local.is_empty() && host.contains('.'))
            && !address
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control() || ",;<>\"".contains(ch));
        if !ok {
            p.push("web.acme_contact: an e-mail address (or mailto:address)".into());
        }
        format!("mailto:{address}")
    });
    let acme_account_file = raw
        .acme_account_file
        .map(|v| abs_path(p, "web.acme_account_file", Some(v), "/"));
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
        https_port,
        cert_dir,
        challenge_dir,
        acme_directory,
        acme_ca_file,
        acme_contact,
        acme_account_file,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::AgentConfig;

    #[test]
    fn https_and_acme_keys_have_defaults_and_are_checked() {
        let web = AgentConfig::parse("").unwrap().web;
        assert_eq!(web.https_port, 443);
        assert_eq!(
            web.cert_dir,
            std::path::Path::new("/etc/mpanel-agent/certs")
        );
        assert_eq!(
            web.challenge_dir,
            std::path::Path::new("/var/www/mpanel-acme")
        );
        assert_eq!(web.acme_directory.as_str(), super::LETS_ENCRYPT);
        assert!(web.acme_ca_file.is_none() && web.acme_contact.is_none());
        assert!(web.acme_account_file.is_none());

        let web = AgentConfig::parse(
            "[web]\nhttps_port = 8443\nacme_directory = \"https://127.0.0.1:14000/dir\"\n\
             acme_contact = \"ops@example.com\"\nacme_ca_file = \"/etc/pebble.pem\"",
        )
        .unwrap()
        .web;
        assert_eq!(web.https_port, 8443);
        assert_eq!(web.acme_contact.as_deref(), Some("mailto:ops@example.com"));

        for (toml, key) in [
            ("[web]\nhttps_port = 0", "web.https_port"),
            (
                "[web]\nacme_directory = \"http://ca.example/dir\"",
                "web.acme_directory",
            ),
            (
                "[web]\nacme_contact = \"not an address\"",
                "web.acme_contact",
            ),
            ("[web]\nacme_contact = \"a@b.c,d@e.f\"", "web.acme_contact"),
            (
                "[web]\nchallenge_dir = \"/var/www/a;b\"",
                "web.challenge_dir",
            ),
            ("[web]\ncert_dir = \"certs\"", "web.cert_dir"),
            ("[web]\nacme_ca_file = \"ca.pem\"", "web.acme_ca_file"),
        ] {
            let e = format!("{:#}", AgentConfig::parse(toml).unwrap_err());
            assert!(e.contains(key), "{toml}: {e}");
        }
    }
}
