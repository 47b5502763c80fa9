//! Go's `time.Time.String()` layout, which the original writes into `privateKeyCreatedDate`:
//! `2006-01-02 15:04:05.999999999 -0700 MST` (fraction without trailing zeros, no dot when zero).
//! We always write UTC, as the original does in a container without a time zone.

use std::time::{SystemTime, UNIX_EPOCH};

/// `t` in Go's default layout, in UTC. Times before 1970 are clamped to the epoch (they cannot
/// come from a clock that runs a connector).
pub fn format_go_utc(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let nanos = d.subsec_nanos();
    let (y, mo, day) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let (h, mi, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let mut out = format!("{y:04}-{mo:02}-{day:02} {h:02}:{mi:02}:{s:02}");
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push_str(" +0000 UTC");
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
