//! `google.protobuf.Timestamp` with protojson's exact text form.
//!
//! pbjson-types renders timestamps as `…+00:00`; protojson (and every
//! Tetragon consumer) expects UTC with a `Z` and 0, 3, 6 or 9 fractional
//! digits, the fewest that keep every non-zero digit.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Wire-identical to `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ::prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    /// From nanoseconds since the Unix epoch.
    pub fn from_unix_nanos(ns: i128) -> Self {
        Timestamp { seconds: ns.div_euclid(1_000_000_000) as i64, nanos: ns.rem_euclid(1_000_000_000) as i32 }
    }

    /// Nanoseconds since the Unix epoch.
    pub fn unix_nanos(&self) -> i128 {
        i128::from(self.seconds) * 1_000_000_000 + i128::from(self.nanos)
    }

    /// The current wall-clock time.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
    }

    fn to_datetime(self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(self.seconds, u32::try_from(self.nanos).ok()?)
    }

    /// RFC 3339 in UTC with exactly nine fractional digits, as `tetra
    /// --timestamps` prints it.
    pub fn to_rfc3339_nanos(&self) -> String {
        self.to_datetime().map(|t| t.to_rfc3339_opts(SecondsFormat::Nanos, true)).unwrap_or_default()
    }

    /// protojson text: UTC, `Z`, 0/3/6/9 fractional digits.
    pub fn to_protojson(&self) -> String {
        self.to_datetime().map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true)).unwrap_or_default()
    }

    /// Parses any RFC 3339 timestamp.
    pub fn parse_rfc3339(s: &str) -> Result<Self, chrono::ParseError> {
        let t = DateTime::parse_from_rfc3339(s)?.with_timezone(&Utc);
        Ok(Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 })
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.to_datetime() {
            Some(t) => serializer.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            None => {
                Err(serde::ser::Error::custom(format!("timestamp out of range: {}s {}ns", self.seconds, self.nanos)))
            }
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Timestamp::parse_rfc3339(&s).map_err(|e| D::Error::custom(format!("invalid timestamp {s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protojson_uses_fewest_digit_groups() {
        let t = |s, n| Timestamp { seconds: s, nanos: n }.to_protojson();
        assert_eq!(t(1652273685, 615_000_000), "2022-05-11T12:54:45.615Z");
        assert_eq!(t(1652273685, 0), "2022-05-11T12:54:45Z");
        assert_eq!(t(1652273685, 615_100_000), "2022-05-11T12:54:45.615100Z");
        assert_eq!(t(1652273685, 513_126_870), "2022-05-11T12:54:45.513126870Z");
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        let ts = Timestamp::parse_rfc3339("2023-08-02T11:58:53.618461573Z").unwrap();
        assert_eq!(ts.to_protojson(), "2023-08-02T11:58:53.618461573Z");
        assert_eq!(ts.to_rfc3339_nanos(), "2023-08-02T11:58:53.618461573Z");
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
        assert_eq!(Timestamp::from_unix_nanos(ts.unix_nanos()), ts);
    }
}
