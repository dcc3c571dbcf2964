//! Gateway API durations (GEP-2257): `1h`, `10s`, `1m30s`, `500ms`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A duration written the Gateway API way, e.g. `"1m30s"` or `"250ms"`.
///
/// Kept as a [`Duration`] in memory and written back in canonical GEP-2257 form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GatewayDuration(pub Duration);

impl GatewayDuration {
    /// The wrapped duration.
    pub fn as_duration(self) -> Duration {
        self.0
    }
}

impl From<Duration> for GatewayDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

/// Parses a GEP-2257 duration: one to four `<1-5 digits><unit>` parts, units `h`, `m`, `s`, `ms`,
/// each at most once and from largest to smallest.
pub fn parse_gateway_duration(text: &str) -> Result<Duration, String> {
    const UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let mut rest = text;
    let mut total_ms: u64 = 0;
    let mut next_unit = 0usize;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(format!("invalid duration {text:?}: expected 1 to 5 digits before each unit"));
        }
        let value: u64 = rest[..digits].parse().map_err(|_| format!("invalid duration {text:?}"))?;
        rest = &rest[digits..];
        // "ms" must be tried before "m".
        let (unit_index, unit_len) = if rest.starts_with("ms") {
            (3, 2)
        } else if rest.starts_with('h') {
            (0, 1)
        } else if rest.starts_with('m') {
            (1, 1)
        } else if rest.starts_with('s') {
            (2, 1)
        } else {
            return Err(format!("invalid duration {text:?}: units are h, m, s and ms"));
        };
        if unit_index < next_unit {
            return Err(format!("invalid duration {text:?}: units must go from h to ms, each once"));
        }
        next_unit = unit_index + 1;
        total_ms += value * UNITS[unit_index].1;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_millis(total_ms))
}

impl fmt::Display for GatewayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if ms >= size {
                write!(f, "{}{}", ms / size, unit)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for GatewayDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GatewayDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_gateway_duration(&text).map(GatewayDuration).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_durations() {
        let cases = [
            ("0s", 0),
            ("1h", 3_600_000),
            ("10s", 10_000),
            ("1m30s", 90_000),
            ("500ms", 500),
            ("1h2m3s4ms", 3_723_004),
            ("99999ms", 99_999),
        ];
        for (text, ms) in cases {
            assert_eq!(parse_gateway_duration(text), Ok(Duration::from_millis(ms)), "{text}");
        }
    }

    #[test]
    fn rejects_invalid_durations() {
        for text in ["", "s", "1", "1d", "1s1m", "1s1s", "100000s", "1.5s", "-1s", "1 s"] {
            assert!(parse_gateway_duration(text).is_err(), "{text} should be rejected");
        }
    }

    #[test]
    fn round_trips_in_canonical_form() {
        for text in ["1h2m3s4ms", "10s", "250ms", "0s"] {
            let parsed = GatewayDuration(parse_gateway_duration(text).unwrap());
            assert_eq!(parsed.to_string(), text);
        }
    }
}
