//! Rules for free-text fields at the edge, each written once: a bad value is a 400 naming
//! the field, and nothing past the edge sees it.

use mpanel_protocol::{EmailAddress, messages::Label};

use super::error::ApiError;
use crate::auth::password;

pub fn check_display_name(value: &str) -> Result<String, ApiError> {
    name::<100>("displayName", value)
}

pub fn check_email(field: &str, value: &str) -> Result<EmailAddress, ApiError> {
    EmailAddress::parse(value).map_err(|e| ApiError::field(field, e.to_string()))
}

pub fn check_password(field: &str, value: &str) -> Result<(), ApiError> {
    password::check_strength(value).map_err(|e| ApiError::field(field, e))
}

/// A name shown to people (a tenant, a plan, an operator, a location): trimmed, 1 to `MAX`
/// characters, no control characters (so it cannot add a line to a log or an e-mail).
pub fn name<const MAX: usize>(field: &str, value: &str) -> Result<String, ApiError> {
    Label::<MAX>::parse(value.trim())
        .map(Label::into_string)
        .map_err(|_| ApiError::field(field, format!("1-{MAX} characters, no control characters")))
}

/// An optional single-line value (a customer's name or phone): absent when empty, else as
/// [`name`].
pub fn optional_line<const MAX: usize>(
    field: &str,
    value: Option<&str>,
) -> Result<Option<String>, ApiError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => name::<MAX>(field, v).map(Some),
        None => Ok(None),
    }
}

/// Maps a unique (or other) constraint violation of the given constraints to `error`; every
/// other database error stays an internal one.
pub trait OnConstraint<T> {
    fn on_constraint(self, names: &[&str], error: impl FnOnce() -> ApiError)
    -> Result<T, ApiError>;
}

impl<T> OnConstraint<T> for Result<T, sqlx::Error> {
    fn on_constraint(
        self,
        names: &[&str],
        error: impl FnOnce() -> ApiError,
    ) -> Result<T, ApiError> {
        self.map_err(|e| {
            let hit = e
                .as_database_error()
                .and_then(|d| d.constraint())
                .is_some_and(|c| names.contains(&c));
            if hit { error() } else { e.into() }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_bounded_and_single_line() {
        assert_eq!(name::<5>("n", "  abc ").unwrap(), "abc");
        for bad in ["", "   ", "abcdef", "a\nb", "a\u{0}b"] {
            let err = name::<5>("n", bad).unwrap_err();
            assert_eq!(err.to_string(), "n: 1-5 characters, no control characters");
        }
    }
}
