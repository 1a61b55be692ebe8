//! Proleptic-Gregorian UTC calendar arithmetic on epoch milliseconds.
//!
//! Pure and allocation-free, so the generator can format hundreds of thousands of timestamps at
//! startup without going through a general date library, and filter periods reach year 9999
//! without overflowing a library's range. Algorithms: H. Hinnant, "chrono-Compatible Low-Level
//! Date Algorithms".

use std::fmt::Write as _;

pub(crate) const MS_PER_HOUR: i64 = 3_600_000;
const MS_PER_DAY: i64 = 86_400_000;

/// Days since 1970-01-01 of the civil date `y-m-d` (`m` in 1..=12, `d` in 1..=31).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date `(y, m, d)` of a day count since 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
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

pub(crate) fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

pub(crate) fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Epoch milliseconds of midnight UTC on `y-m-d`.
pub(crate) fn ms_from_civil(y: i64, m: u32, d: u32) -> i64 {
    days_from_civil(y, m, d) * MS_PER_DAY
}

/// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ` for `ms` since the epoch (the format Onomondo uses).
pub(crate) fn write_iso_ms(out: &mut String, ms: i64) {
    let days = ms.div_euclid(MS_PER_DAY);
    let rem = ms.rem_euclid(MS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss, milli) = (
        rem / MS_PER_HOUR,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    // Writing into a String cannot fail.
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{milli:03}Z"
    );
}

/// Appends `YYYY-MM-DD HH:MM:SS` (UTC, no zone, whole seconds): how the real usage API writes
/// a record's `time` (upstream-api.md §4.3).
pub(crate) fn write_plain_secs(out: &mut String, ms: i64) {
    let days = ms.div_euclid(MS_PER_DAY);
    let rem = ms.rem_euclid(MS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / MS_PER_HOUR, rem / 60_000 % 60, rem / 1000 % 60);
    // Writing into a String cannot fail.
    let _ = write!(out, "{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}");
}

pub(crate) fn iso_ms(ms: i64) -> String {
    let mut s = String::with_capacity(24);
    write_iso_ms(&mut s, ms);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    #[test]
    fn day_counts_round_trip_and_match_the_time_crate() {
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            let date = OffsetDateTime::from_unix_timestamp(days * 86_400)
                .expect("in time's range")
                .date();
            assert_eq!(
                (y, m, d),
                (
                    i64::from(date.year()),
                    u32::from(u8::from(date.month())),
                    u32::from(date.day())
                )
            );
        }
    }

    #[test]
    fn iso_format_matches_rfc3339_with_milliseconds() {
        let ms = 1_711_928_467_512; // 2024-03-31T23:41:07.512Z
        assert_eq!(iso_ms(ms), "2024-03-31T23:41:07.512Z");
        let parsed = OffsetDateTime::parse(&iso_ms(ms), &Rfc3339).expect("valid rfc3339");
        assert_eq!(parsed.unix_timestamp_nanos() / 1_000_000, i128::from(ms));
        assert_eq!(iso_ms(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn plain_times_are_whole_utc_seconds_without_a_zone() {
        let mut s = String::new();
        write_plain_secs(&mut s, 1_711_928_467_512);
        assert_eq!(s, "2024-03-31 23:41:07");
    }

    #[test]
    fn month_lengths_follow_leap_years() {
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(1900, 2), 28);
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(2023, 4), 30);
    }
}
