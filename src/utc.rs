//! UTC calendar fields from a `SystemTime`, for the two places that print dates without a time
//! crate: the Vault's `privateKeyCreatedDate` and the proxy's audit lines.

use std::time::{SystemTime, UNIX_EPOCH};

/// A UTC instant split into calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub nanos: u32,
}

impl Utc {
    /// `t` in UTC; times before 1970 are clamped to the epoch (no clock running us is there).
    pub fn from(t: SystemTime) -> Utc {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs() as i64;
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        let rem = secs.rem_euclid(86_400) as u32;
        Utc {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
            nanos: d.subsec_nanos(),
        }
    }
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

    #[test]
    fn calendar_fields() {
        let t = UNIX_EPOCH + Duration::new(1_795_619_045, 7);
        assert_eq!(
            Utc::from(t),
            Utc {
                year: 2026,
                month: 11,
                day: 25,
                hour: 15,
                minute: 4,
                second: 5,
                nanos: 7
            }
        );
        // 2024-02-29 (leap day) and 2000-12-31 (a leap century's last day).
        let leap = Utc::from(UNIX_EPOCH + Duration::from_secs(1_709_164_800));
        assert_eq!((leap.year, leap.month, leap.day), (2024, 2, 29));
        let eoy = Utc::from(UNIX_EPOCH + Duration::from_secs(978_220_800));
        assert_eq!((eoy.year, eoy.month, eoy.day), (2000, 12, 31));
        assert_eq!(Utc::from(UNIX_EPOCH).year, 1970);
    }
}
