//! Time parsing and display: `--pitdate` and the client's tables, and the
//! same forms in `tandem-admin`.

use chrono::{DateTime, Local, NaiveDateTime, TimeZone};

use crate::error::ClientError;

/// Parses RFC 3339 (`2026-11-23T10:00:00+01:00`) or local
/// `YYYY-MM-DD HH:MM:SS` / `YYYY-MM-DD` into Unix nanoseconds.
///
/// # Errors
/// [`ClientError::Usage`] quoting the value and the accepted forms.
pub fn parse_time(text: &str) -> Result<i64, ClientError> {
    let bad = || {
        ClientError::Usage(format!(
            "time {text:?} is not understood; use RFC 3339 (2026-11-23T10:00:00Z) or local 'YYYY-MM-DD HH:MM:SS'"
        ))
    };
    let t = text.trim();
    let parsed: Option<DateTime<chrono::FixedOffset>> =
        DateTime::parse_from_rfc3339(t).ok().or_else(|| {
            let naive = NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S")
                .or_else(|_| NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S"))
                .or_else(|_| {
                    NaiveDateTime::parse_from_str(&format!("{t} 00:00:00"), "%Y-%m-%d %H:%M:%S")
                })
                .ok()?;
            Local
                .from_local_datetime(&naive)
                .earliest()
                .map(|d| d.fixed_offset())
        });
    parsed.and_then(|d| d.timestamp_nanos_opt()).ok_or_else(bad)
}

/// Local time as `YYYY-MM-DD HH:MM:SS`, or `-` for 0.
pub fn show(ns: i64) -> String {
    if ns == 0 {
        return "-".into();
    }
    Local
        .timestamp_nanos(ns)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// RFC 3339 with offset, for JSON output; empty for 0.
pub fn rfc3339(ns: i64) -> String {
    if ns == 0 {
        return String::new();
    }
    Local
        .timestamp_nanos(ns)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_rfc3339_and_local_forms() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z").unwrap(), 1_000_000_000);
        assert!(parse_time("2026-11-23 10:00:00").is_ok());
        assert!(parse_time("2026-11-23").is_ok());
        let err = parse_time("yesterday").unwrap_err().to_string();
        assert!(err.contains("yesterday"), "{err}");
    }
}
