//! Checks shared by the role sections of agent.toml: every problem is pushed to the list
//! the caller reports at once.

use std::path::{Component, PathBuf};

/// An absolute path without `..` or control characters; `default` when unset.
pub fn abs_path(
    problems: &mut Vec<String>,
    key: &str,
    value: Option<PathBuf>,
    default: &str,
) -> PathBuf {
    let p = value.unwrap_or_else(|| PathBuf::from(default));
    let ok = p.is_absolute()
        && p.to_str()
            .is_some_and(|s| !s.chars().any(|c| c.is_control()))
        && !p.components().any(|c| matches!(c, Component::ParentDir));
    if !ok {
        problems.push(format!("{key}: must be an absolute path without '..'"));
    }
    p
}

/// A path that is also written into nginx, php-fpm or passwd-file lines: no whitespace and
/// none of `;{}:'"#$\`.
pub fn config_safe_path(
    problems: &mut Vec<String>,
    key: &str,
    value: Option<PathBuf>,
    default: &str,
) -> PathBuf {
    let p = abs_path(problems, key, value, default);
    if p.to_str().is_some_and(|s| {
        s.chars()
            .any(|c| c.is_whitespace() || ";{}:'\"#$\\`".contains(c))
    }) {
        problems.push(format!(
            "{key}: must not contain whitespace or any of ;{{}}:'\"#$\\`"
        ));
    }
    p
}

/// An argv list: `Some(argv)`, or `None` when `allow_empty` and the list is empty (the
/// step is switched off).
pub fn argv(
    problems: &mut Vec<String>,
    key: &str,
    value: Option<Vec<String>>,
    default: &[&str],
    allow_empty: bool,
) -> Option<Vec<String>> {
    let v = value.unwrap_or_else(|| default.iter().map(|s| (*s).to_owned()).collect());
    if v.is_empty() {
        if !allow_empty {
            problems.push(format!("{key}: must not be empty"));
        }
        return None;
    }
    if v.iter()
        .any(|a| a.is_empty() || a.chars().any(|c| c.is_control()))
    {
        problems.push(format!("{key}: every argument must be non-empty, one line"));
    }
    Some(v)
}
