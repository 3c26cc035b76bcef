//! Domain names as customers buy them, the key of a website, a DNS zone and a mail domain.

use serde::{Deserialize, Serialize};

use super::error::{ValueError, ValueKind, snippet};

const KIND: ValueKind = ValueKind::DomainName;
const MAX_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A registrable host name such as `example.com` or `shop.example.co.uk`.
///
/// Only lowercase ASCII letters, digits, hyphens and the dots between labels survive
/// parsing, which makes the name safe as an nginx `server_name`, a Postfix map key, a path
/// component and a PowerDNS zone name. Non-ASCII is refused rather than converted, so a
/// look-alike such as a Cyrillic `а` cannot pass for a Latin `a`; internationalised names
/// must be given in their punycode (`xn--`) form. The stored form is lowercase and has no
/// trailing dot.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainName(String);

string_value!(DomainName);

impl DomainName {
    /// Checks and normalises a domain name: lowercases it and drops one trailing dot.
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        if input.is_empty() {
            return Err(ValueError::Empty { kind: KIND });
        }
        if let Some(ch) = input.chars().find(|c| !c.is_ascii()) {
            return Err(ValueError::InvalidChar {
                kind: KIND,
                part: format!("'{}'", snippet(input)),
                ch,
                allowed: "ASCII (give internationalised names in punycode, xn--…)",
            });
        }
        let lower = input.to_ascii_lowercase();
        // A fully-qualified name ("example.com.") is the same domain; keep one spelling.
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        if name.is_empty() {
            return Err(ValueError::malformed(KIND, "'.' is not a domain name"));
        }
        if name.len() > MAX_LEN {
            return Err(ValueError::TooLong {
                kind: KIND,
                len: name.len(),
                max: MAX_LEN,
            });
        }
        for label in name.split('.') {
            check_label(label)?;
        }
        // Every check above passed, so the last label exists and is non-empty.
        let (rest, tld) = name.rsplit_once('.').ok_or_else(|| {
            ValueError::malformed(
                KIND,
                format!(
                    "'{}' needs at least two labels, like example.com",
                    snippet(name)
                ),
            )
        })?;
        debug_assert!(!rest.is_empty());
        if tld.len() < 2 {
            return Err(ValueError::malformed(
                KIND,
                format!("top-level label '{tld}' is shorter than 2 characters"),
            ));
        }
        // An all-numeric last label would let an IPv4 address pass as a domain.
        if tld.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValueError::malformed(
                KIND,
                format!("top-level label '{}' is all digits", snippet(tld)),
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// The labels from left to right: `www.example.com` gives `www`, `example`, `com`.
    pub fn labels(&self) -> impl DoubleEndedIterator<Item = &str> + '_ {
        self.0.split('.')
    }

    /// The name with its trailing dot, as PowerDNS wants zone and record names.
    pub fn to_fqdn(&self) -> String {
        format!("{}.", self.0)
    }

    /// Wraps text that is already a valid, normalised domain name (e.g. the part of a
    /// checked e-mail address after the `@`).
    pub(crate) fn from_validated(name: String) -> Self {
        debug_assert!(Self::parse(&name).is_ok_and(|d| d.0 == name));
        Self(name)
    }
}

fn check_label(label: &str) -> Result<(), ValueError> {
    if label.is_empty() {
        return Err(ValueError::malformed(
            KIND,
            "has an empty label (a leading dot or two dots in a row)",
        ));
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(ValueError::malformed(
            KIND,
            format!(
                "label '{}' is {} characters long, at most {MAX_LABEL_LEN} are allowed",
                snippet(label),
                label.len()
            ),
        ));
    }
    if let Some(ch) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(ValueError::InvalidChar {
            kind: KIND,
            part: format!("label '{}'", snippet(label)),
            ch,
            allowed: "a letter, digit or hyphen",
        });
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(ValueError::malformed(
            KIND,
            format!("label '{}' starts or ends with a hyphen", snippet(label)),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_trailing_dot() {
        let d = DomainName::parse("WWW.Example.COM.").unwrap();
        assert_eq!(d.as_str(), "www.example.com");
        assert_eq!(d.to_fqdn(), "www.example.com.");
        assert_eq!(d.labels().collect::<Vec<_>>(), ["www", "example", "com"]);
    }

    #[test]
    fn only_one_trailing_dot_is_dropped() {
        assert!(DomainName::parse("example.com..").is_err());
    }

    #[test]
    fn label_error_names_the_label_and_rule() {
        let e = DomainName::parse("a_b.com").unwrap_err();
        assert_eq!(
            e.to_string(),
            "domain name: label 'a_b' has a character that is not a letter, digit or hyphen ('_')"
        );
    }

    #[test]
    fn length_limits_are_inclusive() {
        let label63 = "a".repeat(63);
        assert!(DomainName::parse(&format!("{label63}.com")).is_ok());
        assert!(DomainName::parse(&format!("a{label63}.com")).is_err());
        // 4 × 63 + 3 dots = 255; trim to exactly 253 and 254.
        let name253 = format!("{label63}.{label63}.{label63}.{}.com", "b".repeat(57));
        assert_eq!(name253.len(), 253);
        assert!(DomainName::parse(&name253).is_ok());
        assert!(DomainName::parse(&format!("{name253}.")).is_ok());
        let name254 = format!("c{name253}");
        assert!(matches!(
            DomainName::parse(&name254),
            Err(ValueError::TooLong { len: 254, .. })
        ));
    }

    #[test]
    fn tld_rules() {
        assert!(DomainName::parse("1.2.3.4").is_err());
        assert!(DomainName::parse("example.c").is_err());
        assert!(DomainName::parse("example.c0m").is_ok());
        assert!(DomainName::parse("123.com").is_ok());
    }
}
