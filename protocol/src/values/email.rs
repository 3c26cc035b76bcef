//! E-mail addresses: mailbox names for Postfix/Dovecot and contact addresses of customers.

use serde::{Deserialize, Serialize};

use super::domain::DomainName;
use super::error::{ValueError, ValueKind, snippet};

const KIND: ValueKind = ValueKind::EmailAddress;
const MAX_LEN: usize = 254;
const MAX_LOCAL_LEN: usize = 64;

/// An address `local@domain`, lowercased as a whole.
///
/// The local part is 1–64 characters of `A–Z a–z 0–9 . _ % + -`, with no leading, trailing
/// or doubled dot; the domain is a [`DomainName`]. That keeps the address free of the
/// separators of Postfix maps (whitespace), Dovecot passwd-files (`:`), shells and quoting,
/// at the cost of refusing the rare quoted or exotic local parts RFC 5322 allows.
///
/// The local part also may not start with `-`: addresses are passed as arguments to tools
/// such as `doveadm` and `sendmail`, where a leading hyphen would be read as an option.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

string_value!(EmailAddress);

impl EmailAddress {
    /// Checks an address and lowercases it (local part included: mailboxes are
    /// case-insensitive in mPanel, so `Info@` and `info@` are one mailbox).
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
        let Some((local, domain)) = input.split_once('@') else {
            return Err(ValueError::malformed(
                KIND,
                format!("'{}' has no '@'", snippet(input)),
            ));
        };
        check_local_part(local)?;
        let domain = DomainName::parse(domain).map_err(|e| {
            ValueError::malformed(KIND, format!("the part after '@' is not valid: {e}"))
        })?;
        let address = format!("{}@{}", local.to_ascii_lowercase(), domain.as_str());
        // The domain may have lost a trailing dot, so the length can only have shrunk.
        debug_assert!(address.len() <= MAX_LEN);
        Ok(Self(address))
    }

    /// The part before the `@`.
    pub fn local_part(&self) -> &str {
        self.split().0
    }

    /// The part after the `@`.
    pub fn domain(&self) -> DomainName {
        DomainName::from_validated(self.split().1.to_owned())
    }

    fn split(&self) -> (&str, &str) {
        // A valid address has exactly one '@': neither part's charset admits another.
        self.0
            .split_once('@')
            .expect("a parsed e-mail address contains '@'")
    }
}

fn check_local_part(local: &str) -> Result<(), ValueError> {
    if local.is_empty() {
        return Err(ValueError::malformed(KIND, "the part before '@' is empty"));
    }
    if local.len() > MAX_LOCAL_LEN {
        return Err(ValueError::malformed(
            KIND,
            format!(
                "the part before '@' is {} characters long, at most {MAX_LOCAL_LEN} are allowed",
                local.len()
            ),
        ));
    }
    if let Some(ch) = local
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-')))
    {
        return Err(ValueError::InvalidChar {
            kind: KIND,
            part: format!("local part '{}'", snippet(local)),
            ch,
            allowed: "a letter, digit or one of . _ % + -",
        });
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(ValueError::malformed(
            KIND,
            format!(
                "local part '{}' starts or ends with a dot, or has two dots in a row",
                snippet(local)
            ),
        ));
    }
    if local.starts_with('-') {
        return Err(ValueError::malformed(
            KIND,
            format!(
                "local part '{}' starts with a hyphen, which tools would read as an option",
                snippet(local)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_lowercases() {
        let a = EmailAddress::parse("John.Doe+news@Example.COM").unwrap();
        assert_eq!(a.as_str(), "john.doe+news@example.com");
        assert_eq!(a.local_part(), "john.doe+news");
        assert_eq!(a.domain().as_str(), "example.com");
    }

    #[test]
    fn domain_errors_are_wrapped_with_the_email_kind() {
        let e = EmailAddress::parse("a@exa_mple.com").unwrap_err();
        assert_eq!(e.kind(), ValueKind::EmailAddress);
        assert!(e.to_string().starts_with("e-mail address: "), "{e}");
        assert!(e.to_string().contains("label 'exa_mple'"), "{e}");
    }

    #[test]
    fn total_length_is_limited() {
        let local = "a".repeat(64);
        let domain = format!(
            "{}.{}.{}.com",
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(57)
        );
        let ok = format!("{local}@{domain}");
        assert_eq!(ok.len(), 254);
        assert!(EmailAddress::parse(&ok).is_ok());
        assert!(EmailAddress::parse(&format!("{local}@e{domain}")).is_err());
    }
}
