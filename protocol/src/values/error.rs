//! The error every value type returns, worded for the person who typed the value.

use std::fmt;

/// Which kind of value was being parsed; lets the HTTP layer name the field's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ValueKind {
    DomainName,
    EmailAddress,
    SystemUser,
    SafeRelativePath,
    Slug,
    PhpVersion,
    Currency,
}

impl ValueKind {
    /// The kind in words, as it starts every error message.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::DomainName => "domain name",
            Self::EmailAddress => "e-mail address",
            Self::SystemUser => "system user name",
            Self::SafeRelativePath => "relative path",
            Self::Slug => "slug",
            Self::PhpVersion => "PHP version",
            Self::Currency => "currency",
        }
    }
}

impl fmt::Display for ValueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Why a value was refused.
///
/// Any part of the input that a message repeats has gone through [`snippet`], so an error
/// can be logged or returned in a 4xx body without carrying a huge or line-breaking payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    #[error("{kind}: must not be empty")]
    Empty { kind: ValueKind },

    #[error("{kind}: is {len} bytes long, at most {max} are allowed")]
    TooLong {
        kind: ValueKind,
        len: usize,
        max: usize,
    },

    #[error("{kind}: {part} has a character that is not {allowed} ({ch:?})")]
    InvalidChar {
        kind: ValueKind,
        /// Where the character is, e.g. `label 'a_b'`; already shortened and escaped.
        part: String,
        ch: char,
        allowed: &'static str,
    },

    #[error("{kind}: {reason}")]
    Malformed { kind: ValueKind, reason: String },

    #[error("{kind}: '{name}' is reserved for the system")]
    Reserved { kind: ValueKind, name: String },

    #[error("currency: unknown currency '{code}' (not one of the ISO 4217 codes mPanel bills in)")]
    UnknownCurrency { code: String },
}

impl ValueError {
    /// The kind of value that was refused.
    pub fn kind(&self) -> ValueKind {
        match self {
            Self::Empty { kind }
            | Self::TooLong { kind, .. }
            | Self::InvalidChar { kind, .. }
            | Self::Malformed { kind, .. }
            | Self::Reserved { kind, .. } => *kind,
            Self::UnknownCurrency { .. } => ValueKind::Currency,
        }
    }

    pub(crate) fn malformed(kind: ValueKind, reason: impl Into<String>) -> Self {
        Self::Malformed {
            kind,
            reason: reason.into(),
        }
    }
}

/// The most characters of user input an error message repeats.
pub(crate) const SNIPPET_MAX_CHARS: usize = 64;

/// Input as it may appear inside an error message: at most 64 characters of it, with
/// control and invisible characters escaped so a message stays on one line and shows what
/// was really sent (a stray `\n`, a NUL, a right-to-left override).
pub(crate) fn snippet(input: &str) -> String {
    let mut out = String::new();
    let mut chars = input.chars();
    for c in chars.by_ref().take(SNIPPET_MAX_CHARS) {
        // Quotes are left alone: messages wrap snippets in quotes only for readability.
        if c == '\'' || c == '"' {
            out.push(c);
        } else {
            out.extend(c.escape_debug());
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_keeps_at_most_64_input_chars_and_escapes() {
        let long = "a".repeat(1000);
        let s = snippet(&long);
        assert_eq!(s, format!("{}…", "a".repeat(64)));
        assert_eq!(snippet("a\nb\0c"), "a\\nb\\0c");
        assert_eq!(snippet("\u{202e}x"), "\\u{202e}x");
    }

    #[test]
    fn messages_name_the_kind() {
        let e = ValueError::Empty {
            kind: ValueKind::DomainName,
        };
        assert_eq!(e.to_string(), "domain name: must not be empty");
        assert_eq!(e.kind(), ValueKind::DomainName);
    }
}
