//! Time: always UTC, written as RFC 3339 with microseconds and `Z`.
//!
//! The text form has a fixed width, so it sorts correctly as a string in both SQLite and
//! PostgreSQL columns.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Timelike, Utc};

/// Now, at the precision Axle stores (microseconds), so a value reads back exactly as written.
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    t.with_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap_or(t)
}

/// `t` in Axle's storage format, e.g. `2026-11-21T19:33:42.123456Z`.
pub fn to_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Now, in Axle's storage format.
pub fn now_text() -> String {
    to_text(Utc::now())
}

/// `delay` from now, in Axle's storage format.
pub fn text_after(delay: Duration) -> String {
    to_text(Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX))
}

/// Parses a stored time; `None` if it is not RFC 3339.
pub fn from_text(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_fixed_width_and_round_trips() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(to_text(t), "2026-01-02T03:04:05.000000Z");
        assert_eq!(from_text(&to_text(t)), Some(t));
        assert!(now_text() < text_after(Duration::from_millis(5)));
        assert_eq!(from_text("yesterday"), None);
        let n = now();
        assert_eq!(from_text(&to_text(n)), Some(n));
    }
}
