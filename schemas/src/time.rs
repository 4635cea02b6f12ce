//! Time as records carry it: Unix seconds, written as RFC 3339 in manifests.

/// Why a timestamp did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{input:?} is not an RFC 3339 timestamp (e.g. 2027-01-01T00:00:00Z): {reason}")]
pub struct TimeError {
    /// The text that did not parse.
    pub input: String,
    /// What was wrong with it.
    pub reason: String,
}

/// Parses an RFC 3339 timestamp into Unix seconds.
pub fn parse_rfc3339(s: &str) -> Result<i64, TimeError> {
    s.parse::<jiff::Timestamp>()
        .map(|t| t.as_second())
        .map_err(|e| TimeError {
            input: s.to_owned(),
            reason: e.to_string(),
        })
}

/// Writes Unix seconds as RFC 3339 (UTC); `@<seconds>` if out of range.
pub fn format_rfc3339(unix_seconds: i64) -> String {
    match jiff::Timestamp::from_second(unix_seconds) {
        Ok(t) => t.to_string(),
        Err(_) => format!("@{unix_seconds}"),
    }
}

/// Parses durations like `90s`, `15m`, `12h`, `30d` into seconds.
pub fn parse_duration(s: &str) -> Result<i64, TimeError> {
    let err = |reason: &str| TimeError {
        input: s.to_owned(),
        reason: reason.to_owned(),
    };
    let (num, unit) = s.split_at(s.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len());
    let n: i64 = num
        .parse()
        .map_err(|_| err("expected a number followed by s, m, h or d"))?;
    let mul = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(err("unit must be s, m, h or d")),
    };
    n.checked_mul(mul)
        .filter(|v| *v > 0)
        .ok_or_else(|| err("must be positive and fit in 64 bits"))
}

/// The wall clock as Unix seconds, for the edges that need it (CLI, agents).
pub fn now_unix() -> i64 {
    jiff::Timestamp::now().as_second()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        let t = parse_rfc3339("2027-01-01T00:00:00Z").expect("parses");
        assert_eq!(t, 1_798_761_600);
        assert_eq!(format_rfc3339(t), "2027-01-01T00:00:00Z");
        assert!(parse_rfc3339("tomorrow").is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("2d"), Ok(172_800));
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
