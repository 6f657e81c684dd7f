//! Duration strings as Kubernetes users write them (`30s`, `1m`, `1m30s`, `500ms`, `2h`).
//!
//! The API keeps durations as strings so Flagger manifests round-trip unchanged; this module
//! is the one place they are turned into numbers.

use chrono::Duration;

/// Parses a Go-style duration made of one or more `<integer><unit>` parts, with units
/// `ms`, `s`, `m` and `h`. Returns a message naming the accepted form on error.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration; write it like 30s, 1m or 1m30s".into());
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total_ms: i64 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(format!(
                "'{text}' is not a duration; write it like 30s, 1m or 1m30s"
            ));
        }
        let number: i64 = s[start..i]
            .parse()
            .map_err(|_| format!("'{text}' has a number too large for a duration"))?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let factor = match &s[unit_start..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" => {
                return Err(format!(
                    "'{text}' has a number without a unit; add s, m or h (for example 30s)"
                ));
            }
            other => {
                return Err(format!(
                    "'{text}' has the unknown unit '{other}'; use ms, s, m or h"
                ));
            }
        };
        total_ms = number
            .checked_mul(factor)
            .and_then(|v| total_ms.checked_add(v))
            .ok_or_else(|| format!("'{text}' is too long a duration"))?;
    }
    Ok(Duration::milliseconds(total_ms))
}

/// Formats a duration the way users write it (`1m30s`, `45s`, `250ms`).
pub fn format(d: Duration) -> String {
    let ms = d.num_milliseconds();
    if ms == 0 {
        return "0s".into();
    }
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.abs();
    if ms % 1000 != 0 {
        return format!("{sign}{ms}ms");
    }
    let secs = ms / 1000;
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::from(sign);
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// The schema pattern for duration strings; kept equal to what [`parse`] accepts.
pub const PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_users_write() {
        assert_eq!(parse("30s").unwrap(), Duration::seconds(30));
        assert_eq!(parse("1m").unwrap(), Duration::seconds(60));
        assert_eq!(parse("1m30s").unwrap(), Duration::seconds(90));
        assert_eq!(parse("500ms").unwrap(), Duration::milliseconds(500));
        assert_eq!(parse("2h").unwrap(), Duration::hours(2));
    }

    #[test]
    fn rejects_with_a_message_that_says_what_to_write() {
        assert!(parse("").unwrap_err().contains("30s"));
        assert!(parse("10").unwrap_err().contains("without a unit"));
        assert!(parse("5d").unwrap_err().contains("unknown unit 'd'"));
        assert!(parse("abc").unwrap_err().contains("not a duration"));
        assert!(parse("99999999999999999999s").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for text in ["30s", "1m", "1m30s", "250ms", "2h", "1h1m1s"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }
}
