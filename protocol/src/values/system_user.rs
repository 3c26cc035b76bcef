//! Linux login names of hosting accounts, created by the agent's web role with `useradd`.

use serde::{Deserialize, Serialize};

use super::domain::DomainName;
use super::error::{ValueError, ValueKind, snippet};

const KIND: ValueKind = ValueKind::SystemUser;
const MAX_LEN: usize = 32;

/// Names that belong to the operating system or to the services mPanel drives. A hosting
/// account under one of them would own, or be able to act as, that service.
const RESERVED: &[&str] = &[
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "nobody",
    "postfix",
    "dovecot",
    "dovenull",
    "vmail",
    "nginx",
    "pdns",
    "postgres",
    "redis",
    "sshd",
    "_apt",
    "admin",
    "mpanel",
    "mpanel-agent",
    // Other accounts common on Debian servers; reserved now because deserialising re-checks
    // this list, so adding a name later would make stored accounts with it unreadable.
    "operator",
    "ftp",
    "messagebus",
    "syslog",
    "uuidd",
    "tcpdump",
    "polkitd",
    "tss",
    "mysql",
    "opendkim",
    "rspamd",
    "clamav",
    "memcache",
    "_chrony",
    "_rpc",
];

/// `systemd-network`, `systemd-resolve`, … and whatever systemd adds next.
const RESERVED_PREFIX: &str = "systemd-";

/// A Linux user name for a hosting account: 1–32 characters matching
/// `^[a-z_][a-z0-9_-]*$`, not ending in `-`, and not a system or service account.
///
/// The rules are stricter than Debian's `useradd` so the name is also safe unquoted in
/// paths (`/home/NAME`), php-fpm pool files, nginx configs and command lines.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SystemUser(String);

string_value!(SystemUser);

impl SystemUser {
    /// Checks a user name. Uppercase is refused, not lowercased: `useradd` would refuse it
    /// too, and silently changing a login name would surprise the customer.
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        if input.is_empty() {
            return Err(ValueError::Empty { kind: KIND });
        }
        if input.len() > MAX_LEN {
            return Err(ValueError::TooLong {
                kind: KIND,
                len: input.len(),
                max: MAX_LEN,
            });
        }
        let mut chars = input.chars();
        if let Some(first) = chars.next()
            && !(first.is_ascii_lowercase() || first == '_')
        {
            return Err(ValueError::malformed(
                KIND,
                format!(
                    "'{}' must start with a lowercase letter or '_', not {first:?}",
                    snippet(input)
                ),
            ));
        }
        if let Some(ch) = chars
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')))
        {
            return Err(ValueError::InvalidChar {
                kind: KIND,
                part: format!("'{}'", snippet(input)),
                ch,
                allowed: "a lowercase letter, digit, '_' or '-'",
            });
        }
        if input.ends_with('-') {
            return Err(ValueError::malformed(
                KIND,
                format!("'{}' ends with '-'", snippet(input)),
            ));
        }
        if is_reserved(input) {
            return Err(ValueError::Reserved {
                kind: KIND,
                name: snippet(input),
            });
        }
        Ok(Self(input.to_owned()))
    }

    /// The user name mPanel gives the hosting account of `domain` when none is chosen.
    ///
    /// **This derivation must never change**: the panel and the agents compute it
    /// independently and servers hold accounts created under it, so a change would make
    /// them disagree about who owns which files. Add a new function instead.
    ///
    /// The algorithm:
    /// 1. every `.` of the (lowercase, dot-less-at-the-end) name becomes `_`
    ///    (`example.com` → `example_com`; hyphens stay, and since a domain has no `_` the
    ///    mapping is one-to-one);
    /// 2. `u_` is put in front if the result starts with a digit or is reserved
    ///    (`1a.com` → `u_1a_com`, `systemd-x.com` → `u_systemd-x_com`);
    /// 3. if the result is longer than 32 characters, it is cut to its first 24 and
    ///    `_` plus 7 hex digits is appended: the top 28 bits of the 64-bit FNV-1a hash of
    ///    the domain name's bytes, in lowercase.
    ///
    /// Distinct long domains can still collide (28 bits of hash); the caller that creates
    /// accounts must check that the name is free.
    pub fn from_domain(domain: &DomainName) -> Self {
        let mut name = domain.as_str().replace('.', "_");
        if name.starts_with(|c: char| c.is_ascii_digit()) || is_reserved(&name) {
            name.insert_str(0, "u_");
        }
        if name.len() > MAX_LEN {
            name.truncate(24);
            let hash = fnv1a_64(domain.as_str().as_bytes());
            name.push_str(&format!("_{:07x}", hash >> 36));
        }
        // Valid by construction; checking anyway keeps a future slip from reaching useradd.
        Self::parse(&name).expect("a name derived from a domain is a valid system user name")
    }
}

fn is_reserved(name: &str) -> bool {
    RESERVED.contains(&name) || name.starts_with(RESERVED_PREFIX)
}

/// 64-bit FNV-1a, written out because the derived user names depend on its exact output
/// (std's hashers are randomly seeded and may change between Rust versions).
fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn derive(domain: &str) -> String {
        SystemUser::from_domain(&DomainName::parse(domain).unwrap()).into_string()
    }

    #[test]
    fn fnv1a_matches_published_vectors() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn from_domain_is_pinned() {
        // These exact outputs are a compatibility promise; see `from_domain`.
        assert_eq!(derive("example.com"), "example_com");
        assert_eq!(derive("My-Site.co.uk"), "my-site_co_uk");
        assert_eq!(derive("1and1.com"), "u_1and1_com");
        assert_eq!(derive("systemd-fan.org"), "u_systemd-fan_org");
        let long = "a-very-long-domain-name-for-testing.example.com";
        let hash = fnv1a_64(long.as_bytes()) >> 36;
        let derived = derive(long);
        assert_eq!(derived, format!("a-very-long-domain-name-_{hash:07x}"));
        assert_eq!(derived.len(), 32);
        assert_eq!(derived, "a-very-long-domain-name-_3d9510f");
    }

    #[test]
    fn from_domain_exactly_32_is_not_hashed() {
        let domain = format!("{}.com", "a".repeat(28));
        assert_eq!(derive(&domain), format!("{}_com", "a".repeat(28)));
        let domain = format!("{}.com", "a".repeat(29));
        assert_eq!(derive(&domain).len(), 32);
        assert_ne!(derive(&domain), format!("{}_com", "a".repeat(29)));
    }
}
