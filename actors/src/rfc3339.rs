//! Timestamps in JSON, fast: the same RFC 3339 text chrono's `Serialize` writes (UTC, `Z`,
//! fractional seconds trimmed to 0, 3, 6 or 9 digits), formatted into a stack buffer instead of
//! through `fmt` one character at a time. A page of messages carries one per message, and
//! chrono's route was a twelfth of the read path's CPU. Use with
//! `#[serde(serialize_with = "crate::rfc3339::serialize")]`.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Serialize, Serializer};

pub fn serialize<S: Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 32];
    match format(time, &mut buf) {
        Some(len) => match std::str::from_utf8(&buf[..len]) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => time.serialize(serializer),
        },
        // Years outside 0..=9999 and leap seconds: chrono knows how.
        None => time.serialize(serializer),
    }
}

pub(crate) fn format(time: &DateTime<Utc>, buf: &mut [u8; 32]) -> Option<usize> {
    // The fields of the stored naive time: `DateTime`'s own accessors add the (zero) offset
    // again for each field.
    let time = time.naive_utc();
    let year = u32::try_from(time.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = time.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let fields = [
        (year, 4, b'-'),
        (time.month(), 2, b'-'),
        (time.day(), 2, b'T'),
        (time.hour(), 2, b':'),
        (time.minute(), 2, b':'),
    ];
    let mut at = 0;
    for (value, width, separator) in fields {
        at = put(buf, at, value, width);
        buf[at] = separator;
        at += 1;
    }
    at = put(buf, at, time.second(), 2);
    let (fraction, width) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    if width > 0 {
        buf[at] = b'.';
        at = put(buf, at + 1, fraction, width);
    }
    buf[at] = b'Z';
    Some(at + 1)
}

/// Writes `value` as `width` zero-padded decimal digits at `at`; returns the end.
pub(crate) fn put(buf: &mut [u8], at: usize, mut value: u32, width: usize) -> usize {
    for slot in buf[at..at + width].iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
    at + width
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[derive(Serialize)]
    struct Fast(#[serde(serialize_with = "serialize")] DateTime<Utc>);

    #[test]
    fn writes_what_chrono_writes() {
        let base = Utc.with_ymd_and_hms(2026, 11, 21, 9, 5, 7).unwrap();
        let mut times = vec![
            base,
            Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-5, 1, 1, 0, 0, 0).unwrap(),
        ];
        for nanos in [
            1,
            7_000,
            120_000_000,
            999_999_999,
            5_000_000,
            123_456_789,
            100,
        ] {
            times.push(base + chrono::Duration::nanoseconds(nanos));
        }
        times.push(crate::model::now());
        times.push(Utc::now());
        for time in times {
            assert_eq!(
                serde_json::to_string(&Fast(time)).unwrap(),
                serde_json::to_string(&time).unwrap(),
                "{time:?}"
            );
        }
    }
}
