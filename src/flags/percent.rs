//! The share of a rollout: [`Percent`], a decimal with at most two places converted
//! exactly once, from the number as written, into basis points; nothing compares it in
//! floating point afterwards.
//!
//! Owns the conversion and its errors; knows nothing of files or routes.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A share of subjects in basis points, `0..=10_000` (100.00 %).
///
/// Built from the decimal as written (at most two places, `0..=100`), converted exactly
/// once: `25.37` → 2537, `9.95` → 995, `100` → 10000. Serialises back as a number with the
/// same value (`25.37`, `25.0`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent(u16);

/// Why a number is not a [`Percent`]; displays the number as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PercentError {
    #[error("{0} is not a number")]
    NotANumber(String),
    #[error("{0} is out of range 0..=100")]
    OutOfRange(String),
    #[error("{0} has more than two decimal places")]
    TooManyPlaces(String),
}

impl Percent {
    pub const ZERO: Percent = Percent(0);
    pub const FULL: Percent = Percent(10_000);

    /// `None` above 10 000.
    pub const fn from_basis_points(bp: u16) -> Option<Percent> {
        if bp <= 10_000 {
            Some(Percent(bp))
        } else {
            None
        }
    }

    #[inline]
    pub const fn basis_points(self) -> u16 {
        self.0
    }

    /// From a finite float through its shortest round-trip decimal (what a JSON or TOML
    /// reader that only kept the `f64` can still know of the number as written).
    pub fn from_f64(f: f64) -> Result<Percent, PercentError> {
        if f.is_finite() {
            // `Display` for f64 is the shortest decimal that reads back as `f`, never in
            // exponent notation.
            parse_decimal(&f.to_string())
        } else {
            Err(PercentError::NotANumber(f.to_string()))
        }
    }

    /// The value as an `f64`, for serialisation only (nearest double to the decimal, so it
    /// reads back to the same [`Percent`]).
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

impl FromStr for Percent {
    type Err = PercentError;

    /// A decimal literal: optional sign, digits with an optional fraction, optional
    /// exponent (`25`, `25.37`, `2.537e1`); no `_`, `inf` or `nan`.
    fn from_str(s: &str) -> Result<Percent, PercentError> {
        parse_decimal(s)
    }
}

/// Exact decimal → basis points. The value is `digits × 10^scale`; all arithmetic is on
/// the digits, never in floating point.
pub(super) fn parse_decimal(text: &str) -> Result<Percent, PercentError> {
    let not_a_number = || PercentError::NotANumber(text.to_string());
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let (neg, digits) = match e.as_bytes().first() {
                Some(b'-') => (true, &e[1..]),
                Some(b'+') => (false, &e[1..]),
                _ => (false, e),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(not_a_number());
            }
            let magnitude = digits.bytes().fold(0i64, |acc, b| {
                acc.saturating_mul(10).saturating_add(i64::from(b - b'0'))
            });
            if neg { -magnitude } else { magnitude }
        }
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return Err(not_a_number());
    }
    let all: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
    let Some(first) = all.iter().position(|&d| d != 0) else {
        return Ok(Percent::ZERO); // 0, 0.00, -0.0: zero whatever its sign
    };
    if negative {
        return Err(PercentError::OutOfRange(text.to_string()));
    }
    let last = all.iter().rposition(|&d| d != 0).unwrap_or(first);
    let digits = &all[first..=last];
    let trailing_zeros = (all.len() - 1 - last) as i64;
    // value = digits × 10^scale, digits without leading or trailing zeros.
    let scale = exponent
        .saturating_sub(frac.len() as i64)
        .saturating_add(trailing_zeros);
    let len = digits.len() as i64;
    if len.saturating_add(scale) > 3 {
        // at least 1000
        return Err(PercentError::OutOfRange(text.to_string()));
    }
    // basis points = digits × 10^(scale + 2); below 100 000 since the value is below 1000.
    let bp_scale = scale.saturating_add(2);
    let (floor, remainder) = if bp_scale >= 0 {
        let mut n: u32 = 0;
        for &d in digits {
            n = n * 10 + u32::from(d);
        }
        for _ in 0..bp_scale {
            n *= 10;
        }
        (n, false)
    } else {
        // Keep the leading `len + bp_scale` digits; the dropped ones end in a non-zero digit.
        let keep = len.saturating_add(bp_scale).max(0) as usize;
        let mut n: u32 = 0;
        for &d in &digits[..keep] {
            n = n * 10 + u32::from(d);
        }
        (n, true)
    };
    if floor > 10_000 || (floor == 10_000 && remainder) {
        Err(PercentError::OutOfRange(text.to_string()))
    } else if remainder {
        Err(PercentError::TooManyPlaces(text.to_string()))
    } else {
        Ok(Percent(floor as u16))
    }
}

impl fmt::Display for Percent {
    /// `25.37`, `25.5`, `25.0`: a decimal that parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (int, frac) = (self.0 / 100, self.0 % 100);
        if frac == 0 {
            write!(f, "{int}.0")
        } else if frac % 10 == 0 {
            write!(f, "{int}.{}", frac / 10)
        } else {
            write!(f, "{int}.{frac:02}")
        }
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.as_f64())
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Percent, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number 0..=100 with at most two decimal places")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                parse_decimal(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percent, E> {
                parse_decimal(&v.to_string()).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Percent, E> {
                Percent::from_f64(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(s: &str) -> Result<u16, PercentError> {
        s.parse::<Percent>().map(Percent::basis_points)
    }
    #[test]
    fn percent_converts_exactly() {
        for (text, bp) in [
            ("0", 0),
            ("0.0", 0),
            ("-0", 0),
            ("-0.0", 0),
            ("0.01", 1),
            ("1", 100),
            ("9.95", 995),
            ("25", 2500),
            ("25.0", 2500),
            ("25.37", 2537),
            ("25.370", 2537),
            ("33.3", 3330),
            ("99.99", 9999),
            ("100", 10000),
            ("100.00", 10000),
            ("+5", 500),
            ("2.537e1", 2537),
            ("2537E-2", 2537),
            ("0.001e1", 1),
            ("1e2", 10000),
            ("0.29", 29),
            ("0.57", 57),
            ("1.1", 110),
            ("4.35", 435),
            ("0.07", 7),
        ] {
            assert_eq!(pct(text), Ok(bp), "{text}");
        }
    }

    #[test]
    fn percent_refuses_out_of_range_and_too_many_places() {
        use PercentError::*;
        for (text, err) in [
            ("9.955", TooManyPlaces("9.955".into())),
            ("0.001", TooManyPlaces("0.001".into())),
            ("25.371", TooManyPlaces("25.371".into())),
            (
                "9.9500000000000001",
                TooManyPlaces("9.9500000000000001".into()),
            ),
            ("100.5", OutOfRange("100.5".into())),
            ("100.01", OutOfRange("100.01".into())),
            ("100.001", OutOfRange("100.001".into())),
            ("101", OutOfRange("101".into())),
            ("1000", OutOfRange("1000".into())),
            ("1e3", OutOfRange("1e3".into())),
            (
                "1e999999999999999999999",
                OutOfRange("1e999999999999999999999".into()),
            ),
            ("-1", OutOfRange("-1".into())),
            ("-0.01", OutOfRange("-0.01".into())),
            (
                "1e-999999999999999999999",
                TooManyPlaces("1e-999999999999999999999".into()),
            ),
            ("nan", NotANumber("nan".into())),
            ("inf", NotANumber("inf".into())),
            ("", NotANumber("".into())),
            (".", NotANumber(".".into())),
            ("1e", NotANumber("1e".into())),
            ("2_5", NotANumber("2_5".into())),
            ("0x10", NotANumber("0x10".into())),
        ] {
            assert_eq!(pct(text), Err(err), "{text}");
        }
        assert!(matches!(Percent::from_f64(f64::NAN), Err(NotANumber(_))));
        assert!(matches!(
            Percent::from_f64(f64::INFINITY),
            Err(NotANumber(_))
        ));
        assert_eq!(Percent::from_f64(9.95).map(Percent::basis_points), Ok(995));
        assert_eq!(
            Percent::from_f64(25.37).map(Percent::basis_points),
            Ok(2537)
        );
        assert!(matches!(Percent::from_f64(9.955), Err(TooManyPlaces(_))));
        assert!(matches!(Percent::from_f64(1e-7), Err(TooManyPlaces(_))));
    }

    #[test]
    fn percent_display_and_serde() {
        let p = |bp| Percent::from_basis_points(bp).unwrap();
        assert_eq!(p(2537).to_string(), "25.37");
        assert_eq!(p(2550).to_string(), "25.5");
        assert_eq!(p(2500).to_string(), "25.0");
        assert_eq!(p(7).to_string(), "0.07");
        assert_eq!(p(10000).to_string(), "100.0");
        assert_eq!(serde_json::to_string(&p(2537)).unwrap(), "25.37");
        assert_eq!(serde_json::to_string(&p(2500)).unwrap(), "25.0");
        assert_eq!(serde_json::from_str::<Percent>("9.95").unwrap(), p(995));
        assert_eq!(serde_json::from_str::<Percent>("100").unwrap(), p(10000));
        assert!(serde_json::from_str::<Percent>("9.955").is_err());
        assert!(serde_json::from_str::<Percent>("-1").is_err());
        assert!(Percent::from_basis_points(10001).is_none());
    }
}
