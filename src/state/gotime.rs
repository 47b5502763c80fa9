//! Go's `time.Time.String()` layout, which the original writes into `privateKeyCreatedDate`:
//! `2006-01-02 15:04:05.999999999 -0700 MST` (fraction without trailing zeros, no dot when zero).
//! We always write UTC, as the original does in a container without a time zone.

use std::time::SystemTime;

/// `t` in Go's default layout, in UTC. Times before 1970 are clamped to the epoch (they cannot
/// come from a clock that runs a connector).
pub fn format_go_utc(t: SystemTime) -> String {
    let u = crate::utc::Utc::from(t);
    let (y, mo, day, h, mi, s, nanos) =
        (u.year, u.month, u.day, u.hour, u.minute, u.second, u.nanos);
    let mut out = format!("{y:04}-{mo:02}-{day:02} {h:02}:{mi:02}:{s:02}");
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push_str(" +0000 UTC");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn matches_go_layout() {
        // 2026-11-25 15:04:05 UTC = 1795619045
        assert_eq!(
            format_go_utc(at(1_795_619_045, 123_456_789)),
            "2026-11-25 15:04:05.123456789 +0000 UTC"
        );
        assert_eq!(
            format_go_utc(at(1_795_619_045, 0)),
            "2026-11-25 15:04:05 +0000 UTC"
        );
        assert_eq!(
            format_go_utc(at(1_795_619_045, 120_000_000)),
            "2026-11-25 15:04:05.12 +0000 UTC"
        );
        assert_eq!(
            format_go_utc(at(1_795_619_045, 1)),
            "2026-11-25 15:04:05.000000001 +0000 UTC"
        );
        assert_eq!(format_go_utc(UNIX_EPOCH), "1970-01-01 00:00:00 +0000 UTC");
        // Leap day and year ends.
        assert_eq!(
            format_go_utc(at(951_782_400, 0)),
            "2000-02-29 00:00:00 +0000 UTC"
        );
        assert_eq!(
            format_go_utc(at(1_767_225_599, 0)),
            "2025-12-31 23:59:59 +0000 UTC"
        );
    }
}
