//! Durations and sizes as a user types them on the command line: one parser for every flag
//! and limit, so that `--shutdown-timeout` and `--nat-limit` take the same forms.
//!
//! - A duration is a whole number with a unit, `ms`, `s`, `m` or `h` (`500ms`, `30s`, `2m`,
//!   `24h`); a bare number is seconds.
//! - A size is a whole number of bytes with an optional binary suffix, `K`, `M` or `G`
//!   (also `Ki`, `Mi`, `Gi`, either case): `1024`, `256K`, `64Mi`.

use std::time::Duration;

/// Text that is not a duration or a size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Not a whole number with a known duration unit.
    #[error("{0:?} is not a duration such as 500ms, 30s, 2m or 24h")]
    Duration(String),
    /// Not a whole number with a known size suffix.
    #[error("{0:?} is not a size such as 4096, 256K or 64M")]
    Size(String),
    /// A number too large to hold.
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// Splits `text` into its leading digits and the rest.
fn split_number(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text.split_at(end)
}

/// A duration: `500ms`, `30s`, `2m`, `24h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let (digits, unit) = split_number(text.trim());
    let n: u64 = digits
        .parse()
        .map_err(|_| UnitError::Duration(text.to_string()))?;
    let seconds = |factor: u64| {
        n.checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(|| UnitError::TooLarge(text.to_string()))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        _ => Err(UnitError::Duration(text.to_string())),
    }
}

/// A size in bytes: a bare number, or one with `K`, `M` or `G` (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let (digits, suffix) = split_number(text.trim());
    let n: u64 = digits
        .parse()
        .map_err(|_| UnitError::Size(text.to_string()))?;
    let suffix = suffix.to_ascii_lowercase();
    let shift = match suffix.strip_suffix('i').unwrap_or(&suffix) {
        "" if !suffix.ends_with('i') => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => return Err(UnitError::Size(text.to_string())),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| UnitError::TooLarge(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_every_unit_and_bare_seconds() {
        let ok = [
            ("30", Duration::from_secs(30)),
            ("30s", Duration::from_secs(30)),
            ("500ms", Duration::from_millis(500)),
            ("2m", Duration::from_secs(120)),
            ("2h", Duration::from_secs(7200)),
            (" 24h ", Duration::from_secs(86400)),
            ("0s", Duration::ZERO),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in ["", "s", "1.5s", "-1s", "10d", "10 s", "1h30m"] {
            assert_eq!(
                parse_duration(bad),
                Err(UnitError::Duration(bad.into())),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_duration("18446744073709551615h"),
            Err(UnitError::TooLarge(_))
        ));
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        let ok = [
            ("4096", 4096),
            ("256K", 256 << 10),
            ("256k", 256 << 10),
            ("64Mi", 64 << 20),
            ("2G", 2 << 30),
            ("1gi", 1 << 30),
        ];
        for (text, want) in ok {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
        for bad in ["", "K", "1.5M", "1T", "1i", "-1", "1 M"] {
            assert_eq!(parse_size(bad), Err(UnitError::Size(bad.into())), "{bad}");
        }
        assert!(matches!(
            parse_size("18446744073709551615K"),
            Err(UnitError::TooLarge(_))
        ));
    }
}
