//! Durations as operators write them, in the panel's env file and in the agent's
//! `agent.toml`: `15m`, `7d`, `3600` (seconds), `500ms`. One parser, so both binaries accept
//! and refuse the same spellings.

use std::time::Duration;

/// Parses `<digits>[ms|s|m|h|d|w]`; a bare number is seconds, as in the spec's
/// `JWT_ACCESS_EXPIRES_IN=15m` / `JWT_REFRESH_EXPIRES_IN=7d`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "'{raw}' is not a duration (expected e.g. 30s, 15m, 12h, 7d)"
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{raw}' is too large"))?;
    let secs_per_unit: u64 = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{raw}' (use ms, s, m, h, d or w)"
            ));
        }
    };
    n.checked_mul(secs_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("'{raw}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units_operators_use() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(1_209_600)));
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for bad in [
            "",
            "m",
            "15 minutes",
            "1.5h",
            "-5s",
            "10y",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
