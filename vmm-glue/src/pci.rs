//! [`PciBdf`]: a PCI function's address, parsed once, so an address cannot
//! be confused with a group number or a device path.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// NVIDIA's PCI vendor ID.
pub const NVIDIA: u16 = 0x10de;

/// A PCI address `dddd:bb:dd.f` (domain, bus, device, function), kept in
/// sysfs's lower-case spelling.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciBdf(String);

/// A string that is not a PCI address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a PCI address (dddd:bb:dd.f, e.g. 0000:41:00.0)")]
pub struct NotABdf(pub String);

impl FromStr for PciBdf {
    type Err = NotABdf;

    fn from_str(s: &str) -> Result<Self, NotABdf> {
        let b = s.as_bytes();
        let ok = b.len() == 12
            && b[4] == b':'
            && b[7] == b':'
            && b[10] == b'.'
            && b[11] <= b'7'
            && b.iter()
                .enumerate()
                .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit());
        if ok {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(NotABdf(s.to_string()))
        }
    }
}

impl PciBdf {
    /// The address as sysfs spells it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PciBdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for PciBdf {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for PciBdf {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl AsRef<Path> for PciBdf {
    fn as_ref(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl Serialize for PciBdf {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PciBdf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_once() {
        let b: PciBdf = "0000:41:00.0".parse().unwrap();
        assert_eq!(b.to_string(), "0000:41:00.0");
        assert_eq!(
            "0000:4A:00.1".parse::<PciBdf>().unwrap().as_str(),
            "0000:4a:00.1"
        );
        for bad in [
            "",
            "41:00.0",
            "0000:41:00.8",
            "0000-41:00.0",
            "/dev/vfio/12",
            "0000:41:00.0x",
        ] {
            let e = bad.parse::<PciBdf>().unwrap_err().to_string();
            assert!(e.contains("is not a PCI address"), "{e}");
        }
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(json, "\"0000:41:00.0\"");
        assert_eq!(serde_json::from_str::<PciBdf>(&json).unwrap(), b);
        assert!(serde_json::from_str::<PciBdf>("\"12\"").is_err());
    }
}
