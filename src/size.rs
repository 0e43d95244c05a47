//! Human byte sizes (`500MiB`, `10GiB`, `1048576`) for configuration and flags.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A number of bytes, written and read in human units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const UNITS: &[(&str, u64)] = &[
    ("tib", 1 << 40),
    ("gib", 1 << 30),
    ("mib", 1 << 20),
    ("kib", 1 << 10),
    ("tb", 1_000_000_000_000),
    ("gb", 1_000_000_000),
    ("mb", 1_000_000),
    ("kb", 1_000),
    // Bare letters follow the binary convention, as in `du -h` and nginx.
    ("t", 1 << 40),
    ("g", 1 << 30),
    ("m", 1 << 20),
    ("k", 1 << 10),
    ("b", 1),
];

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let lower = text.to_ascii_lowercase();
        let (number, multiplier) = UNITS
            .iter()
            .find_map(|(unit, mult)| lower.strip_suffix(unit).map(|n| (n.trim(), *mult)))
            .unwrap_or((lower.as_str(), 1));
        let invalid = || format!("invalid size {text:?} (expected e.g. 1048576, 500MiB, 10GiB)");
        if number.is_empty() {
            return Err(invalid());
        }
        let bytes = if let Ok(n) = number.parse::<u64>() {
            n.checked_mul(multiplier).ok_or_else(invalid)?
        } else {
            let f: f64 = number.parse().map_err(|_| invalid())?;
            if !f.is_finite() || f < 0.0 || f * multiplier as f64 > u64::MAX as f64 {
                return Err(invalid());
            }
            (f * multiplier as f64).round() as u64
        };
        Ok(ByteSize(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, mult) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if self.0 >= mult && self.0.is_multiple_of(mult) {
                return write!(f, "{}{}", self.0 / mult, unit);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("1048576".parse::<ByteSize>().unwrap().0, 1 << 20);
        assert_eq!("500MiB".parse::<ByteSize>().unwrap().0, 500 << 20);
        assert_eq!("10GiB".parse::<ByteSize>().unwrap().0, 10 << 30);
        assert_eq!("10 gb".parse::<ByteSize>().unwrap().0, 10_000_000_000);
        assert_eq!("1.5K".parse::<ByteSize>().unwrap().0, 1536);
        assert_eq!("64k".parse::<ByteSize>().unwrap().0, 65536);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "MiB", "-1", "ten", "1e400", "99999999999TiB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn displays_round_units() {
        assert_eq!(ByteSize(10 << 30).to_string(), "10GiB");
        assert_eq!(ByteSize(1000).to_string(), "1000");
        assert_eq!(ByteSize(3 << 10).to_string(), "3KiB");
    }
}
