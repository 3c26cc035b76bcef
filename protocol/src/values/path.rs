//! Paths below a root the caller chooses: document roots, files in backups and uploads.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{ValueError, ValueKind, snippet};

const KIND: ValueKind = ValueKind::SafeRelativePath;
const MAX_LEN: usize = 4096;

/// A relative path that cannot leave the directory it is joined onto, e.g. `public_html`
/// or `releases/2024-05/index.php`.
///
/// Components are separated by `/` and none is empty, `.` or `..`; the path does not start
/// with `/`. NUL, control characters (a newline would split a config or log line) and
/// backslashes are refused. Other characters, spaces and non-ASCII included, are allowed
/// because they are legitimate in customers' file names: code that writes the path into a
/// config file must still quote it for that file's syntax.
///
/// The guarantee is lexical. Symbolic links below the root can still point elsewhere; code
/// acting on a customer's files must not follow them (or must run as that customer).
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SafeRelativePath(String);

string_value!(SafeRelativePath);

impl SafeRelativePath {
    /// Checks a relative path; it is kept exactly as given.
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
        if let Some(ch) = input.chars().find(|c| c.is_control() || *c == '\\') {
            return Err(ValueError::InvalidChar {
                kind: KIND,
                part: format!("'{}'", snippet(input)),
                ch,
                allowed: "a printable character other than a backslash",
            });
        }
        if input.starts_with('/') {
            return Err(ValueError::malformed(
                KIND,
                format!("'{}' starts with '/', it must be relative", snippet(input)),
            ));
        }
        for component in input.split('/') {
            match component {
                "" => {
                    return Err(ValueError::malformed(
                        KIND,
                        format!(
                            "'{}' has an empty component (a trailing or doubled '/')",
                            snippet(input)
                        ),
                    ));
                }
                "." | ".." => {
                    return Err(ValueError::malformed(
                        KIND,
                        format!(
                            "'{}' has a '{component}' component, only plain names are allowed",
                            snippet(input)
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok(Self(input.to_owned()))
    }

    /// The components from left to right; each is a non-empty file name.
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &str> + '_ {
        self.0.split('/')
    }

    /// `root` followed by this path; the result is always below `root`.
    pub fn join_onto(&self, root: &Path) -> PathBuf {
        root.join(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_below_root() {
        let p = SafeRelativePath::parse("public_html/wp-content/index.php").unwrap();
        assert_eq!(
            p.join_onto(Path::new("/home/example_com")),
            PathBuf::from("/home/example_com/public_html/wp-content/index.php")
        );
        assert_eq!(
            p.components().collect::<Vec<_>>(),
            ["public_html", "wp-content", "index.php"]
        );
    }

    #[test]
    fn dots_inside_names_are_fine() {
        for ok in [
            "..foo",
            "a/.hidden",
            "a/b..c",
            "...",
            "my file.txt",
            "café/menü",
        ] {
            assert!(SafeRelativePath::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn length_limit_is_in_bytes() {
        assert!(SafeRelativePath::parse(&"a".repeat(4096)).is_ok());
        assert!(SafeRelativePath::parse(&"a".repeat(4097)).is_err());
        assert!(SafeRelativePath::parse(&"é".repeat(2049)).is_err());
    }
}
