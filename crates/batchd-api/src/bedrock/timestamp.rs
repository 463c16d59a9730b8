//! ISO-8601 timestamps as the `bedrock` model wants them (`timestampFormat: iso8601`): written
//! as UTC with milliseconds and `Z`, read leniently.

use time::format_description::well_known::{Iso8601, Rfc3339};
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

/// `2025-01-15T10:00:00.123Z` for milliseconds since the Unix epoch; `None` only for
/// instants outside years 0000-9999.
pub fn format_ms(ms: i64) -> Option<String> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    t.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    ))
    .ok()
}

/// Parses what clients send in query strings: RFC 3339 / ISO-8601 with any number of
/// fractional digits and `Z` or an offset (botocore sends `2025-01-15T10:00:00Z`), ISO-8601
/// without an offset (taken as UTC), or epoch seconds with an optional fraction.
pub fn parse_lenient(s: &str) -> Option<OffsetDateTime> {
    let s = s.trim();
    if let Some(t) = parse_epoch_seconds(s) {
        return Some(t);
    }
    // An unencoded `+` in an offset arrives as a space after form decoding.
    let repaired;
    let s = match s.get(10..).filter(|tail| tail.contains(' ')) {
        Some(tail) if s.as_bytes().get(10) == Some(&b'T') => {
            repaired = format!("{}{}", &s[..10], tail.replace(' ', "+"));
            repaired.as_str()
        }
        _ => s,
    };
    OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(s, &Iso8601::DEFAULT))
        .ok()
        .or_else(|| {
            PrimitiveDateTime::parse(s, &Iso8601::DEFAULT)
                .ok()
                .map(PrimitiveDateTime::assume_utc)
        })
}

/// `-?[0-9]+(\.[0-9]+)?` seconds since the epoch, exact to the nanosecond.
fn parse_epoch_seconds(s: &str) -> Option<OffsetDateTime> {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    if digits.contains('.') && fraction.is_empty() {
        return None;
    }
    let secs: i128 = whole.parse().ok()?;
    let mut nanos: i128 = 0;
    for (i, b) in fraction.bytes().take(9).enumerate() {
        nanos += i128::from(b - b'0') * 10i128.pow(8 - i as u32);
    }
    let total = secs.checked_mul(1_000_000_000)?.checked_add(nanos)?;
    OffsetDateTime::from_unix_timestamp_nanos(if negative { -total } else { total }).ok()
}

fn clamp_ms(ms: i128) -> i64 {
    i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX })
}

/// Whole milliseconds at or before `t`.
pub fn millis_floor(t: OffsetDateTime) -> i64 {
    clamp_ms(t.unix_timestamp_nanos().div_euclid(1_000_000))
}

/// Whole milliseconds at or after `t`.
pub fn millis_ceil(t: OffsetDateTime) -> i64 {
    let nanos = t.unix_timestamp_nanos();
    let floor = nanos.div_euclid(1_000_000);
    clamp_ms(if nanos.rem_euclid(1_000_000) == 0 {
        floor
    } else {
        floor + 1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_milliseconds() {
        assert_eq!(format_ms(0).unwrap(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_ms(1_736_935_200_123).unwrap(),
            "2025-01-15T10:00:00.123Z"
        );
        assert_eq!(format_ms(i64::MAX), None);
    }

    #[test]
    fn parses_what_clients_send() {
        let ms = |s: &str| parse_lenient(s).map(millis_floor);
        let base = Some(1_736_935_200_000);
        for s in [
            "2025-01-15T10:00:00Z",
            "2025-01-15T10:00:00.000Z",
            "2025-01-15T10:00:00.000000Z",
            "2025-01-15T12:00:00+02:00",
            "2025-01-15T12:00:00 02:00",
            "2025-01-15T10:00:00",
            "20250115T100000Z",
            "1736935200",
            "1736935200.000",
        ] {
            assert_eq!(ms(s), base, "{s}");
        }
        assert_eq!(ms("2025-01-15T10:00:00.5Z"), Some(1_736_935_200_500));
        assert_eq!(ms("1736935200.25"), Some(1_736_935_200_250));
        for bad in ["", "yesterday", "2025-13-01T00:00:00Z", "12.", ".5", "1e9"] {
            assert_eq!(ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn rounding_to_milliseconds() {
        let t = parse_lenient("1.0000001").unwrap();
        assert_eq!(millis_floor(t), 1000);
        assert_eq!(millis_ceil(t), 1001);
        let exact = parse_lenient("1.001").unwrap();
        assert_eq!(millis_ceil(exact), 1001);
        let negative = parse_lenient("-0.0005").unwrap();
        assert_eq!(millis_floor(negative), -1);
        assert_eq!(millis_ceil(negative), 0);
    }
}
