//! RPC API versions (`major.minor`) and oslo.messaging's compatibility rule.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// An RPC API version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Incompatible changes bump this.
    pub major: u32,
    /// Compatible additions bump this.
    pub minor: u32,
}

impl Version {
    /// The version a request without one asks for.
    pub const DEFAULT: Version = Version { major: 1, minor: 0 };

    /// Whether an endpoint at `self` can serve a request for `requested`:
    /// same major, and the requested minor no newer than the endpoint's.
    pub fn can_serve(self, requested: Version) -> bool {
        self.major == requested.major && requested.minor <= self.minor
    }
}

impl FromStr for Version {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::config(format!("invalid version {s:?} (expected major.minor)"));
        let (major, minor) = match s.split_once('.') {
            Some((major, minor)) => (major, minor),
            None => (s, "0"),
        };
        Ok(Version {
            major: major.trim().parse().map_err(|_| bad())?,
            minor: minor.trim().parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compatibility_is_same_major_and_no_newer_minor() {
        let server: Version = "1.35".parse().unwrap();
        assert!(server.can_serve("1.0".parse().unwrap()));
        assert!(server.can_serve("1.35".parse().unwrap()));
        assert!(!server.can_serve("1.36".parse().unwrap()));
        assert!(!server.can_serve("2.0".parse().unwrap()));
        assert_eq!(
            "2".parse::<Version>().unwrap(),
            Version { major: 2, minor: 0 }
        );
        assert!("x.1".parse::<Version>().unwrap_err().is_config());
    }
}
