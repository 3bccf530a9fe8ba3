//! Protobuf timestamps and chrono's times, converted in one place.

use chrono::{DateTime, Utc};

use crate::Timestamp;

/// `time` as a protobuf `Timestamp`.
pub fn timestamp(time: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: time.timestamp(),
        // At most 1_999_999_999 (a leap second): fits.
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

/// Now, as a protobuf `Timestamp`.
pub fn now() -> Timestamp {
    timestamp(Utc::now())
}

/// `timestamp` as a chrono time; None when it is out of chrono's range or its nanos are negative.
pub fn datetime(timestamp: &Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(timestamp.seconds, u32::try_from(timestamp.nanos).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_nonsense_is_none() {
        let time = DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123456789Z").map(|t| t.with_timezone(&Utc));
        let time = time.ok();
        assert_eq!(time.map(timestamp).as_ref().and_then(datetime), time);
        assert_eq!(datetime(&Timestamp { seconds: 0, nanos: -1 }), None);
        assert_eq!(
            datetime(&Timestamp {
                seconds: i64::MAX,
                nanos: 0
            }),
            None
        );
    }
}
