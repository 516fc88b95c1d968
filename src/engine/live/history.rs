//! Status history for the panel's charts: `GET /admin/agents/{id}/history?range=hour|day|week`
//! averaged in SQL over at most [`MAX_POINTS`] buckets, so a week at a 10-second interval
//! (60,480 points) is a few hundred.

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::engine::error::ApiError;
use crate::engine::Engine;

/// The most points a range answers.
pub const MAX_POINTS: i64 = 300;

/// A chart's time range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    Hour,
    Day,
    Week,
}

impl Range {
    /// `hour`, `day` or `week`; else a 400 listing them.
    pub fn parse(text: &str) -> Result<Range, ApiError> {
        match text {
            "hour" => Ok(Range::Hour),
            "day" => Ok(Range::Day),
            "week" => Ok(Range::Week),
            other => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("invalid `range` {other:?}: one of hour, day, week"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Range::Hour => "hour",
            Range::Day => "day",
            Range::Week => "week",
        }
    }

    /// Its length in ms.
    pub fn millis(self) -> i64 {
        let hour = 3_600_000;
        match self {
            Range::Hour => hour,
            Range::Day => 24 * hour,
            Range::Week => 7 * 24 * hour,
        }
    }

    /// The bucket length (ms) and the start of the first bucket for a chart ending `now`:
    /// buckets are aligned on multiples of their length (a refresh shows the same buckets), and
    /// the first one starts after `now - range`, so there are at most [`MAX_POINTS`].
    pub fn buckets(self, now: i64) -> (i64, i64) {
        let bucket = self.millis() / MAX_POINTS;
        let from = (now - self.millis()).div_euclid(bucket) * bucket + bucket;
        (bucket, from)
    }
}

/// `{range, bucketMs, points}` of agent `id` over `range` ending now.
pub async fn downsampled(engine: &Engine, id: &str, range: Range) -> Result<Value, ApiError> {
    let (bucket, from) = range.buckets(crate::engine::now());
    let points = engine.store.history_buckets(id, from, bucket).await?;
    Ok(json!({"range": range.name(), "bucketMs": bucket, "points": points}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_others() {
        assert_eq!(Range::parse("week").unwrap(), Range::Week);
        assert!(Range::parse("year").is_err());
        assert!(Range::parse("Hour").is_err());
    }

    #[test]
    fn buckets_are_aligned_and_at_most_300() {
        for range in [Range::Hour, Range::Day, Range::Week] {
            for now in [1_765_000_000_000_i64, 1_765_000_000_001, 1_765_000_012_000] {
                let (bucket, from) = range.buckets(now);
                assert_eq!(bucket * MAX_POINTS, range.millis());
                assert_eq!(from % bucket, 0);
                assert!(from > now - range.millis() && from <= now - range.millis() + bucket);
                // The bucket `now` falls in is at most the 300th.
                assert!((now - from) / bucket < MAX_POINTS);
            }
        }
        assert_eq!(Range::Week.buckets(0).0, 2_016_000);
        assert_eq!(Range::Hour.buckets(0).0, 12_000);
    }
}
