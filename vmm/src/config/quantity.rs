//! Kubernetes resource quantities (`1Gi`, `512Mi`, `500m`, `1e9`, `2`).
//!
//! A quantity keeps the text it was written as (so a defaulted manifest prints back what the
//! user wrote) and its exact value in nano-units, so that comparisons are exact as in
//! `resource.Quantity.Cmp` and [`Quantity::value`] rounds up as `Quantity.Value()` does.

use std::cmp::Ordering;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const NANO: i128 = 1_000_000_000;

/// A parsed quantity.
#[derive(Clone, Debug)]
pub struct Quantity {
    text: String,
    nanos: i128,
}

/// Why a string is not a quantity. The text follows `resource.ParseQuantity`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not of the form `<number><suffix>`.
    #[error(
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )]
    Format,
    /// Well formed but too large to represent.
    #[error("quantity is too large")]
    TooLarge,
}

impl Quantity {
    /// Parses `text` as Kubernetes does.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let nanos = parse_nanos(text.trim())?;
        Ok(Self {
            text: text.trim().to_string(),
            nanos,
        })
    }

    /// A quantity of `bytes` (or units), written in the largest binary suffix that divides it.
    pub fn from_value(value: i64) -> Self {
        let suffixes = [
            ("Ei", 60),
            ("Pi", 50),
            ("Ti", 40),
            ("Gi", 30),
            ("Mi", 20),
            ("Ki", 10),
        ];
        let text = suffixes
            .iter()
            .find(|(_, shift)| value != 0 && value % (1i64 << shift) == 0)
            .map_or_else(
                || value.to_string(),
                |(suffix, shift)| format!("{}{suffix}", value >> shift),
            );
        Self {
            text,
            nanos: i128::from(value) * NANO,
        }
    }

    /// The value rounded up to an integer, as `Quantity.Value()`.
    pub fn value(&self) -> i64 {
        let whole = self.nanos.div_euclid(NANO) + i128::from(self.nanos.rem_euclid(NANO) != 0);
        i64::try_from(whole).unwrap_or(if whole < 0 { i64::MIN } else { i64::MAX })
    }

    /// True when the value is zero.
    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `self + other`, keeping binary-suffix text when the sum is whole.
    pub fn add(&self, other: &Quantity) -> Quantity {
        let nanos = self.nanos.saturating_add(other.nanos);
        if nanos % NANO == 0
            && let Ok(v) = i64::try_from(nanos / NANO)
        {
            return Quantity::from_value(v);
        }
        Quantity {
            text: format!("{}n", nanos),
            nanos,
        }
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses `<sign><digits>[.<digits>]<suffix>` into nano-units.
fn parse_nanos(s: &str) -> Result<i128, QuantityError> {
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    // A sign may only lead; an exponent suffix carries its own sign.
    let (number, suffix) = s.split_at(number_end);
    let (negative, digits) = match number.as_bytes().first() {
        Some(b'-') => (true, &number[1..]),
        Some(b'+') => (false, &number[1..]),
        _ => (false, number),
    };
    if digits.is_empty() || digits == "." || digits.contains(['+', '-']) {
        return Err(QuantityError::Format);
    }
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if frac_part.contains('.') {
        return Err(QuantityError::Format);
    }
    let (base, exp) = suffix_scale(suffix)?;
    // mantissa = int_part.frac_part as an integer, scaled by 10^-len(frac)
    let mantissa_text = format!("{int_part}{frac_part}");
    let mantissa: i128 = mantissa_text
        .trim_start_matches('0')
        .parse::<i128>()
        .or_else(|e| {
            if mantissa_text.trim_start_matches('0').is_empty() {
                Ok(0)
            } else {
                Err(e)
            }
        })
        .map_err(|_| QuantityError::TooLarge)?;
    let frac_len = i32::try_from(frac_part.len()).map_err(|_| QuantityError::Format)?;
    // value = mantissa * 10^-frac_len * base^exp, in nanos (10^9).
    let mut nanos = mantissa;
    let (mut num, mut den) = (1i128, 1i128);
    let apply_pow10 = |n: i32, num: &mut i128, den: &mut i128| -> Result<(), QuantityError> {
        let p = 10i128
            .checked_pow(n.unsigned_abs())
            .ok_or(QuantityError::TooLarge)?;
        if n >= 0 {
            *num = num.checked_mul(p).ok_or(QuantityError::TooLarge)?;
        } else {
            *den = den.checked_mul(p).ok_or(QuantityError::TooLarge)?;
        }
        Ok(())
    };
    apply_pow10(9 - frac_len, &mut num, &mut den)?;
    if base == 2 {
        num = num
            .checked_mul(1i128 << u32::try_from(exp).map_err(|_| QuantityError::Format)?)
            .ok_or(QuantityError::TooLarge)?;
    } else {
        apply_pow10(exp, &mut num, &mut den)?;
    }
    nanos = nanos.checked_mul(num).ok_or(QuantityError::TooLarge)?;
    // Round up sub-nano precision, as Kubernetes does.
    let rounded = nanos / den + i128::from(nanos % den != 0);
    Ok(if negative { -rounded } else { rounded })
}

/// The (base, exponent) of a suffix: binary SI, decimal SI or a decimal exponent.
fn suffix_scale(suffix: &str) -> Result<(u8, i32), QuantityError> {
    let binary = match suffix {
        "Ki" => Some(10),
        "Mi" => Some(20),
        "Gi" => Some(30),
        "Ti" => Some(40),
        "Pi" => Some(50),
        "Ei" => Some(60),
        _ => None,
    };
    if let Some(exp) = binary {
        return Ok((2, exp));
    }
    let decimal = match suffix {
        "n" => Some(-9),
        "u" => Some(-6),
        "m" => Some(-3),
        "" => Some(0),
        "k" => Some(3),
        "M" => Some(6),
        "G" => Some(9),
        "T" => Some(12),
        "P" => Some(15),
        "E" => Some(18),
        _ => None,
    };
    if let Some(exp) = decimal {
        return Ok((10, exp));
    }
    if let Some(rest) = suffix.strip_prefix(['e', 'E']) {
        let valid = !rest.is_empty()
            && rest
                .strip_prefix(['+', '-'])
                .unwrap_or(rest)
                .bytes()
                .all(|b| b.is_ascii_digit());
        if valid {
            let exp = rest.parse::<i32>().map_err(|_| QuantityError::TooLarge)?;
            return Ok((10, exp));
        }
    }
    Err(QuantityError::Format)
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QuantityVisitor;

        impl Visitor<'_> for QuantityVisitor {
            type Value = Quantity;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity such as 1Gi, 512Mi or 2")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
                Quantity::parse(v).map_err(|e| E::custom(format!("{v:?}: {e}")))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                self.visit_str(&v.to_string())
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                self.visit_str(&v.to_string())
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
                self.visit_str(&v.to_string())
            }
        }

        deserializer.deserialize_any(QuantityVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> i64 {
        Quantity::parse(s).unwrap().value()
    }

    #[test]
    fn binary_and_decimal_suffixes() {
        assert_eq!(v("1Gi"), 1 << 30);
        assert_eq!(v("512Mi"), 512 << 20);
        assert_eq!(v("4Ki"), 4096);
        assert_eq!(v("1G"), 1_000_000_000);
        assert_eq!(v("2k"), 2000);
        assert_eq!(v("3"), 3);
        assert_eq!(v("1e3"), 1000);
        assert_eq!(v("1E+3"), 1000);
        assert_eq!(v("1.5Gi"), 3 << 29);
        assert_eq!(v("0"), 0);
        assert_eq!(v("+2"), 2);
    }

    #[test]
    fn value_rounds_up_like_kubernetes() {
        assert_eq!(v("500m"), 1);
        assert_eq!(v("1001m"), 2);
        assert_eq!(v("0.1"), 1);
        assert_eq!(v("-500m"), 0);
    }

    #[test]
    fn comparisons_are_exact() {
        let a = Quantity::parse("1Gi").unwrap();
        let b = Quantity::parse("1024Mi").unwrap();
        let c = Quantity::parse("1000m").unwrap();
        assert_eq!(a, b);
        assert_eq!(c, Quantity::parse("1").unwrap());
        assert!(Quantity::parse("500m").unwrap() < Quantity::parse("1").unwrap());
    }

    #[test]
    fn malformed_is_rejected() {
        for s in [
            "", "Gi", "1.2.3", "1Zi", "1 Gi", "--1", "1e", "1e+", "abc", "1-",
        ] {
            assert!(Quantity::parse(s).is_err(), "{s:?}");
        }
        assert_eq!(
            Quantity::parse("1e999").unwrap_err(),
            QuantityError::TooLarge
        );
    }

    #[test]
    fn add_and_from_value_keep_binary_text() {
        let sum = Quantity::parse("256Mi")
            .unwrap()
            .add(&Quantity::parse("1Gi").unwrap());
        assert_eq!(sum.to_string(), "1280Mi");
        assert_eq!(Quantity::from_value(3 << 30).to_string(), "3Gi");
        assert_eq!(Quantity::from_value(1000).to_string(), "1000");
    }
}
