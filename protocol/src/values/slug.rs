//! Slugs: the stable identifiers of tenants, products and plans in URLs and API bodies.

use serde::{Deserialize, Serialize};

use super::error::{ValueError, ValueKind, snippet};

const KIND: ValueKind = ValueKind::Slug;
const MAX_LEN: usize = 64;

/// 1–64 characters matching `^[a-z0-9]+(-[a-z0-9]+)*$`, e.g. `starter-2024`.
///
/// Uppercase is refused rather than lowercased: a slug is an identifier that other systems
/// (the marketing site, Stripe metadata) send back verbatim, so `Pro` and `pro` must not
/// quietly become the same thing.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Slug(String);

string_value!(Slug);

impl Slug {
    /// Checks a slug; it is kept exactly as given.
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
        if let Some(ch) = input.chars().find(char::is_ascii_uppercase) {
            return Err(ValueError::malformed(
                KIND,
                format!(
                    "'{}' has the uppercase letter {ch:?}; slugs are lowercase identifiers",
                    snippet(input)
                ),
            ));
        }
        if let Some(ch) = input
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(ValueError::InvalidChar {
                kind: KIND,
                part: format!("'{}'", snippet(input)),
                ch,
                allowed: "a lowercase letter, digit or hyphen",
            });
        }
        if input.starts_with('-') || input.ends_with('-') || input.contains("--") {
            return Err(ValueError::malformed(
                KIND,
                format!(
                    "'{}' starts or ends with a hyphen, or has two in a row",
                    snippet(input)
                ),
            ));
        }
        Ok(Self(input.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        for ok in ["a", "starter", "pro-2024", "0", "a-b-c", &"x".repeat(64)] {
            assert!(Slug::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a--b",
            "a_b",
            "a b",
            "a.b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(Slug::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uppercase_gets_its_own_message() {
        let e = Slug::parse("Starter").unwrap_err();
        assert_eq!(
            e.to_string(),
            "slug: 'Starter' has the uppercase letter 'S'; slugs are lowercase identifiers"
        );
    }
}
