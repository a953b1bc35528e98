//! Daily limits: UTC days, reset times and the admission rule.

use serde::Serialize;

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// The UTC day (days since 1970-01-01) that holds `ts_ms`.
pub fn utc_day(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(DAY_MS)
}

/// When the counters of `day` reset: midnight UTC after it, in milliseconds.
pub fn reset_at_ms(day: i64) -> i64 {
    (day + 1) * DAY_MS
}

/// Whether adding `add` to `used` stays within `limit` (0 means no limit).
pub fn admits(used: u64, add: u64, limit: u64) -> bool {
    limit == 0 || used.saturating_add(add) <= limit
}

/// A daily limit, by the policy key that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitName {
    UserBytesPerDay,
    UserFilesPerDay,
    DatanetBytesPerDay,
}

impl LimitName {
    /// The policy key, such as `user_bytes_per_day`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitName::UserBytesPerDay => "user_bytes_per_day",
            LimitName::UserFilesPerDay => "user_files_per_day",
            LimitName::DatanetBytesPerDay => "datanet_bytes_per_day",
        }
    }
}

/// Formats a millisecond timestamp as RFC 3339 in UTC (`2026-11-25T00:00:00Z`).
pub fn rfc3339(ts_ms: i64) -> String {
    let secs = ts_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_651_200_000), "2026-11-26T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1000), "1969-12-31T23:59:59Z");
    }

    proptest! {
        #[test]
        fn reset_is_the_next_midnight(ts in -10_000_000_000_000i64..10_000_000_000_000) {
            let day = utc_day(ts);
            let reset = reset_at_ms(day);
            prop_assert!(reset > ts && reset - ts <= DAY_MS);
            prop_assert_eq!(reset % DAY_MS, 0);
            prop_assert!(rfc3339(reset).ends_with("T00:00:00Z"));
        }

        #[test]
        fn admission_never_exceeds_the_limit(sizes in proptest::collection::vec(0u64..1000, 0..50), limit in 1u64..5000) {
            let mut used = 0u64;
            for s in sizes {
                if admits(used, s, limit) { used += s; }
                prop_assert!(used <= limit);
            }
        }
    }
}
