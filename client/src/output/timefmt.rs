//! Time parsing and display: `--pitdate` and the client's tables, and the
//! same forms in `tandem-admin`.

use chrono::{DateTime, Local, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};

use crate::error::ClientError;

/// A time an operator typed, as the span it names at the precision it was
/// given to: a date is its whole (local) day, a time to the second is that
/// whole second, a time to the millisecond that millisecond. Listings show times
/// to the second while the catalog keeps nanoseconds, so a version shown as
/// backed up at 21:24:36 may have been stored at 21:24:36.4: an upper bound
/// (`--pitdate`, `expire inventory --now`) takes [`Self::last_ns`], a lower
/// bound (`query actlog --begin`) [`Self::first_ns`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypedTime {
    /// The first nanosecond of the span.
    pub first_ns: i64,
    /// The last nanosecond of the span.
    pub last_ns: i64,
}

/// One second less one nanosecond.
const REST_OF_SECOND_NS: i64 = 999_999_999;

/// How far an RFC 3339 time's span reaches past its first nanosecond: to
/// the end of its second without a fraction, of its millisecond with three
/// fraction digits (as the JSON listings write them), and so on.
fn rest_of_span_ns(rfc3339: &str) -> i64 {
    // RFC 3339 writes a fraction after a '.', and nowhere else.
    let digits = rfc3339.split_once('.').map_or(0, |(_, fraction)| {
        fraction.bytes().take_while(u8::is_ascii_digit).count()
    });
    match u32::try_from(digits) {
        Ok(d) if d < 9 => 10_i64.pow(9 - d) - 1,
        _ => 0,
    }
}

/// The instant a local wall-clock reading names. In the hour the clocks go
/// back a reading names two instants: `later` picks the second. A reading in
/// the hour they skip (some zones skip midnight) names none; it is read with
/// the offset before the change, which is the first instant after the gap.
fn local_instant(naive: NaiveDateTime, later: bool) -> Option<i64> {
    let instant = match Local.from_local_datetime(&naive) {
        LocalResult::Single(t) => t,
        LocalResult::Ambiguous(first, second) => {
            if later {
                second
            } else {
                first
            }
        }
        LocalResult::None => Local
            .from_local_datetime(&naive.checked_add_signed(chrono::TimeDelta::hours(1))?)
            .earliest()?,
    };
    instant.timestamp_nanos_opt()
}

/// Parses RFC 3339 (`2026-11-23T10:00:00+01:00`, fraction allowed) or local
/// `YYYY-MM-DD HH:MM:SS` / `YYYY-MM-DDTHH:MM:SS` / `YYYY-MM-DD`.
///
/// # Errors
/// [`ClientError::Usage`] quoting the value and the accepted forms.
pub fn parse_time(text: &str) -> Result<TypedTime, ClientError> {
    let bad = || {
        ClientError::Usage(format!(
            "time {text:?} is not understood; use RFC 3339 (2026-11-23T10:00:00Z) or local 'YYYY-MM-DD HH:MM:SS' or 'YYYY-MM-DD'"
        ))
    };
    let t = text.trim();
    if let Ok(instant) = DateTime::parse_from_rfc3339(t) {
        let first_ns = instant.timestamp_nanos_opt().ok_or_else(bad)?;
        return Ok(TypedTime {
            first_ns,
            last_ns: first_ns.saturating_add(rest_of_span_ns(t)),
        });
    }
    let second = NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S"));
    if let Ok(naive) = second {
        // In the hour the clocks go back, the span reaches to the second
        // reading's end.
        return Ok(TypedTime {
            first_ns: local_instant(naive, false).ok_or_else(bad)?,
            last_ns: local_instant(naive, true)
                .ok_or_else(bad)?
                .saturating_add(REST_OF_SECOND_NS),
        });
    }
    let day = NaiveDate::parse_from_str(t, "%Y-%m-%d").map_err(|_| bad())?;
    let next = day.succ_opt().ok_or_else(bad)?;
    let first_ns = local_instant(day.and_time(NaiveTime::MIN), false).ok_or_else(bad)?;
    // The next local midnight, less a nanosecond: a day is 23 or 25 hours
    // long when the clocks change.
    let next_ns = local_instant(next.and_time(NaiveTime::MIN), false).ok_or_else(bad)?;
    Ok(TypedTime {
        first_ns,
        last_ns: next_ns - 1,
    })
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

/// A time in JSON output: RFC 3339 with the local offset, `null` for never
/// (0). The one convention of both consoles' `--json`.
pub fn json(ns: i64) -> serde_json::Value {
    if ns == 0 {
        serde_json::Value::Null
    } else {
        serde_json::Value::String(rfc3339(ns))
    }
}

/// RFC 3339 with offset; empty for 0.
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
        assert!(parse_time("2026-11-23 10:00:00").is_ok());
        assert!(parse_time("2026-11-23T10:00:00").is_ok());
        assert!(parse_time("2026-11-23").is_ok());
        for wrong in ["yesterday", "2026-11-31", "2026-11-23 25:00:00", ""] {
            let err = parse_time(wrong).unwrap_err().to_string();
            assert!(err.contains(&format!("{wrong:?}")), "{err}");
        }
    }

    #[test]
    fn a_time_covers_the_precision_it_was_given_to() {
        let second = parse_time("1970-01-01T00:00:01Z").unwrap();
        assert_eq!(second.first_ns, 1_000_000_000);
        assert_eq!(second.last_ns, 1_999_999_999);
        let milli = parse_time("1970-01-01T00:00:01.250Z").unwrap();
        assert_eq!(
            (milli.first_ns, milli.last_ns),
            (1_250_000_000, 1_250_999_999)
        );
        let nano = parse_time("1970-01-01T00:00:01.000000007Z").unwrap();
        assert_eq!(
            (nano.first_ns, nano.last_ns),
            (1_000_000_007, 1_000_000_007)
        );
        // As the JSON listings write a time: to the millisecond.
        let listed = parse_time(&rfc3339(1_764_624_276_400_500_000)).unwrap();
        assert!(listed.first_ns <= 1_764_624_276_400_500_000);
        assert!(1_764_624_276_400_500_000 <= listed.last_ns);
        // What a listing shows (to the second) names the version stored
        // within that second.
        let stored_ns = 1_764_624_276_400_000_000;
        let shown = parse_time(&show(stored_ns)).unwrap();
        assert!(shown.first_ns <= stored_ns && stored_ns <= shown.last_ns);
        let day = parse_time("2026-11-23").unwrap();
        let local = parse_time("2026-11-23 23:59:59").unwrap();
        assert_eq!(day.last_ns, local.last_ns);
        assert_eq!(
            day.first_ns,
            parse_time("2026-11-23 00:00:00").unwrap().first_ns
        );
    }
}
