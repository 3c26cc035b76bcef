//! Which roles this machine can run for real: each needs its server software installed.
//! A role without it is simulated (`JOB_SIMULATE`), and the demo names the Debian packages
//! that would make it real. The same goes for the site's HTTPS, which needs a local ACME test
//! CA (pebble) besides a real web role.

use std::path::Path;

use mpanel_tests::pebble::{CHALLTESTSRV, PEBBLE};

/// A role of the demo's fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Web,
    Dns,
    Mail,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Web, Role::Dns, Role::Mail];

    /// The name `JOB_SIMULATE` and the agent's `roles` know it by.
    pub fn name(self) -> &'static str {
        match self {
            Role::Web => "web",
            Role::Dns => "dns",
            Role::Mail => "mail",
        }
    }

    /// The files the role's sandbox runs, and the Debian packages that bring them.
    fn needs(self) -> (&'static [&'static str], &'static str) {
        match self {
            Role::Web => (&["/usr/sbin/nginx"], "nginx-light"),
            Role::Dns => (
                &[
                    "/usr/sbin/pdns_server",
                    "/usr/bin/sqlite3",
                    "/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql",
                ],
                "pdns-server pdns-backend-sqlite3 sqlite3",
            ),
            Role::Mail => (
                &["/usr/sbin/postmap", "/usr/sbin/dovecot", "/usr/bin/doveadm"],
                "postfix dovecot-imapd",
            ),
        }
    }

    /// `None` when the role can run for real; else what is missing and how to install it.
    pub fn missing(self) -> Option<String> {
        let (files, packages) = self.needs();
        let missing: Vec<&str> = files
            .iter()
            .copied()
            .filter(|f| !Path::new(f).exists())
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "{} is missing: install it with `apt-get install {packages}`",
                missing.join(", ")
            )
        })
    }
}

/// The roles whose jobs are simulated, each said with its reason: those `asked` for, those
/// missing their software (with the packages that bring it), and what [`simulated`] adds.
pub fn choose(asked: &[Role]) -> Vec<Role> {
    let mut without = Vec::new();
    for role in Role::ALL {
        if asked.contains(&role) {
            println!("{}: simulated, as asked (--simulate)", role.name());
            without.push(role);
        } else if let Some(why) = role.missing() {
            println!(
                "{}: {why}; its jobs are simulated (JOB_SIMULATE)",
                role.name()
            );
            without.push(role);
        }
    }
    let roles = simulated(&without);
    if roles.contains(&Role::Dns) && !without.contains(&Role::Dns) {
        println!("dns: simulated too, since the zone's apex points at the site's server");
    }
    roles
}

/// The roles whose jobs are simulated: those missing their software, and the DNS role
/// when the web role is simulated (a hosting order's zone points its apex at the site's
/// server, which a simulated site never gets).
fn simulated(missing: &[Role]) -> Vec<Role> {
    let mut roles: Vec<Role> = missing.to_vec();
    if roles.contains(&Role::Web) && !roles.contains(&Role::Dns) {
        roles.push(Role::Dns);
    }
    roles.sort_by_key(|r| Role::ALL.iter().position(|a| a == r));
    roles
}

/// What the site's certificate needs, and the Debian packages that bring it: pebble and its
/// DNS (`pebble-challtestsrv`), and the curl the harness reaches them with.
const ACME_NEEDS: [(&str, &str); 3] = [
    (PEBBLE, "pebble"),
    (CHALLTESTSRV, "pebble"),
    ("/usr/bin/curl", "curl"),
];

/// `None` when the site gets HTTPS (its web role runs for real and pebble is installed); else
/// the line that says it is off and what would turn it on.
pub fn https_off(simulated: &[Role]) -> Option<String> {
    https_off_where(simulated, |file| Path::new(file).exists())
}

/// [`https_off`] on a machine where `exists` says which files are there.
fn https_off_where(simulated: &[Role], exists: impl Fn(&str) -> bool) -> Option<String> {
    let missing: Vec<(&str, &str)> = ACME_NEEDS
        .into_iter()
        .filter(|(file, _)| !exists(file))
        .collect();
    let mut packages: Vec<&str> = missing.iter().map(|(_, package)| *package).collect();
    packages.dedup();
    if simulated.contains(&Role::Web) {
        let also = if packages.is_empty() {
            String::new()
        } else {
            format!(", and {} for its certificate", packages.join(" "))
        };
        return Some(format!(
            "off, the site is simulated (a real one needs nginx-light{also})"
        ));
    }
    (!missing.is_empty()).then(|| {
        let files: Vec<&str> = missing.iter().map(|(file, _)| *file).collect();
        format!(
            "off, {} missing: `apt-get install {}` gives the site a certificate from a local \
             ACME test CA (pebble)",
            files.join(", "),
            packages.join(" ")
        )
    })
}

/// Whether `dig` is there for the zone check (dnsutils).
pub fn has_dig() -> bool {
    Path::new("/usr/bin/dig").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simulated_site_takes_its_zone_along() {
        assert_eq!(simulated(&[Role::Web]), [Role::Web, Role::Dns]);
        assert_eq!(simulated(&[Role::Mail, Role::Dns]), [Role::Dns, Role::Mail]);
        assert!(simulated(&[]).is_empty());
    }

    #[test]
    fn https_is_off_without_pebble_or_a_real_site_and_says_what_turns_it_on() {
        let everything = |_: &str| true;
        let no_pebble = |file: &str| !file.contains("pebble");
        assert_eq!(https_off_where(&[Role::Mail], everything), None);
        assert_eq!(
            https_off_where(&[], no_pebble).unwrap(),
            "off, /usr/bin/pebble, /usr/bin/pebble-challtestsrv missing: `apt-get install \
             pebble` gives the site a certificate from a local ACME test CA (pebble)"
        );
        assert_eq!(
            https_off_where(&[Role::Web, Role::Dns], everything).unwrap(),
            "off, the site is simulated (a real one needs nginx-light)"
        );
        assert_eq!(
            https_off_where(&[Role::Web, Role::Dns], |_| false).unwrap(),
            "off, the site is simulated (a real one needs nginx-light, and pebble curl for its \
             certificate)"
        );
    }
}
