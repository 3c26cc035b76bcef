//! Validated values that flow from customers and operators into shells, config files
//! (nginx, Postfix maps, Dovecot passwd-files), file-system paths and DNS zones.
//!
//! Each type can only be built by `parse` (directly, or through `FromStr`, `TryFrom<String>`
//! or serde's `Deserialize`), so a value that could break out of the place it is written to
//! cannot exist in the first place. The panel's HTTP API, the job queue and the agent all
//! decode into these types, which makes them the single place where the rules live: a job
//! that was accepted by the API is re-checked by the agent without any extra code.
//!
//! Deserialising re-runs the rules, so tightening a rule later can make stored values
//! unreadable; loosen with care, tighten only with a data migration.

/// Implements the traits every value type shares; the type must be a tuple struct around
/// its validated `String` and have `fn parse(&str) -> Result<Self, ValueError>`.
macro_rules! string_value {
    ($ty:ident) => {
        impl $ty {
            /// The validated, normalised text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Gives up the validated text.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $crate::values::ValueError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = $crate::values::ValueError;

            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = $crate::values::ValueError;

            fn try_from(s: &str) -> Result<Self, Self::Error> {
                Self::parse(s)
            }
        }

        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.0
            }
        }
    };
}

mod currency;
mod domain;
mod email;
mod error;
mod path;
mod php;
mod slug;
mod system_user;

pub use currency::Currency;
pub use domain::DomainName;
pub use email::EmailAddress;
pub use error::{ValueError, ValueKind};
pub use path::SafeRelativePath;
pub use php::PhpVersion;
pub use slug::Slug;
pub use system_user::SystemUser;
