//! PHP versions a website runs on; they name php-fpm pools and paths like `/etc/php/8.2`.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::error::{ValueError, ValueKind, snippet};

const KIND: ValueKind = ValueKind::PhpVersion;

/// A PHP `MAJOR.MINOR` version matching `^[5-9]\.[0-9]{1,2}$`, e.g. `8.2`.
///
/// Ordered by number, so `8.10` sorts after `8.2`.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhpVersion(String);

string_value!(PhpVersion);

impl PhpVersion {
    /// Checks a version; it is kept exactly as given.
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        if input.is_empty() {
            return Err(ValueError::Empty { kind: KIND });
        }
        let valid = match input.as_bytes() {
            [major, b'.', minor @ ..] => {
                (b'5'..=b'9').contains(major)
                    && (1..=2).contains(&minor.len())
                    && minor.iter().all(u8::is_ascii_digit)
            }
            _ => false,
        };
        if !valid {
            return Err(ValueError::malformed(
                KIND,
                format!(
                    "'{}' is not MAJOR.MINOR with a major version from 5 to 9, like 8.2",
                    snippet(input)
                ),
            ));
        }
        Ok(Self(input.to_owned()))
    }

    /// The major version, 5 to 9.
    pub fn major(&self) -> u8 {
        self.0.as_bytes()[0] - b'0'
    }

    /// The minor version, 0 to 99.
    pub fn minor(&self) -> u8 {
        self.0.as_bytes()[2..]
            .iter()
            .fold(0, |n, d| n * 10 + (d - b'0'))
    }
}

impl Ord for PhpVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major(), self.minor())
            .cmp(&(other.major(), other.minor()))
            // "8.02" and "8.2" are equal in number but not as values; keep Ord total and
            // consistent with Eq.
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for PhpVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        for ok in ["5.6", "7.4", "8.0", "8.2", "8.10", "9.99"] {
            assert!(PhpVersion::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "8", "8.", ".2", "4.4", "10.1", "8.123", "8.2.1", "8,2", " 8.2", "8.a", "v8.2",
        ] {
            assert!(PhpVersion::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numeric_parts_and_order() {
        let v = PhpVersion::parse("8.10").unwrap();
        assert_eq!((v.major(), v.minor()), (8, 10));
        let mut vs: Vec<PhpVersion> = ["8.10", "7.4", "8.2", "8.02"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        vs.sort();
        let sorted: Vec<&str> = vs.iter().map(PhpVersion::as_str).collect();
        assert_eq!(sorted, ["7.4", "8.02", "8.2", "8.10"]);
    }
}
