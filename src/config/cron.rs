//! `cron_restart` schedules: classic 5-field cron with an optional leading seconds field, in local time.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Local};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use super::units::Scalar;

const FIELDS: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day-of-month",
    "month",
    "day-of-week",
];

/// A parsed cron expression (5 fields, or 6 with leading seconds), evaluated in the system's local
/// time zone.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    expr: String,
    cron: Cron,
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr
    }
}

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

impl CronSchedule {
    /// Parses `expr`; the error names the offending field when it can be singled out.
    pub fn parse(expr: &str) -> Result<CronSchedule, String> {
        let parser = parser();
        let err = match parser.parse(expr) {
            Ok(cron) => {
                return Ok(CronSchedule {
                    expr: expr.to_owned(),
                    cron,
                })
            }
            Err(err) => err,
        };
        let invalid = format!("invalid cron expression {expr:?}");
        let fields: Vec<&str> = expr.split_whitespace().collect();
        if expr.trim_start().starts_with('@') {
            return Err(format!("{invalid}: {err}"));
        }
        let names = match fields.len() {
            5 => &FIELDS[1..],
            6 => &FIELDS[..],
            n => {
                return Err(format!(
                    "{invalid}: expected 5 fields (minute hour day-of-month month day-of-week), \
                     optionally preceded by seconds; found {n}"
                ))
            }
        };
        // Parse each field alone, the others wildcards, to find the one croner objects to.
        let culprit = (0..fields.len()).find(|&i| {
            let probe: Vec<&str> = (0..fields.len())
                .map(|j| if i == j { fields[i] } else { "*" })
                .collect();
            parser.parse(&probe.join(" ")).is_err()
        });
        Err(match culprit {
            Some(i) => format!("{invalid}: bad {} field {:?}: {err}", names[i], fields[i]),
            None => format!("{invalid}: {err}"),
        })
    }

    /// The expression as written.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// Time from `now` until the next firing strictly after `now`, in the local time zone (DST
    /// gaps and repeats are resolved by croner). `None` if it never fires.
    pub fn until_next(&self, now: SystemTime) -> Option<Duration> {
        let now = DateTime::<Local>::from(now);
        let next = self.cron.find_next_occurrence(&now, false).ok()?;
        (next - now).to_std().ok()
    }
}

impl Scalar for CronSchedule {
    const EXPECTING: &'static str = r#"a cron expression such as "0 3 * * *""#;
    fn from_text(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

super::units::scalar_deserialize!(CronSchedule);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_five_and_six_fields() {
        assert_eq!(
            CronSchedule::parse("*/5 * * * *").unwrap().expr(),
            "*/5 * * * *"
        );
        assert!(CronSchedule::parse("*/2 * * * * *").is_ok());
        assert!(CronSchedule::parse("0 3 * * mon-fri").is_ok());
    }

    #[test]
    fn errors_name_the_field() {
        let err = CronSchedule::parse("61 * * * *").unwrap_err();
        assert!(err.contains("bad minute field \"61\""), "{err}");
        let err = CronSchedule::parse("0 25 * * *").unwrap_err();
        assert!(err.contains("bad hour field \"25\""), "{err}");
        let err = CronSchedule::parse("61 0 * * * *").unwrap_err();
        assert!(err.contains("bad second field"), "{err}");
        let err = CronSchedule::parse("* * *").unwrap_err();
        assert!(err.contains("expected 5 fields"), "{err}");
        let err = CronSchedule::parse("0 0 1 1 * 2030").unwrap_err();
        assert!(err.contains("invalid cron expression"), "{err}");
    }

    #[test]
    fn until_next_is_within_bounds() {
        let now = SystemTime::now();
        let every_five = CronSchedule::parse("*/5 * * * *").unwrap();
        let d = every_five.until_next(now).unwrap();
        assert!(d > Duration::ZERO && d <= Duration::from_secs(300), "{d:?}");
        let every_two_seconds = CronSchedule::parse("*/2 * * * * *").unwrap();
        let d = every_two_seconds.until_next(now).unwrap();
        assert!(d > Duration::ZERO && d <= Duration::from_secs(2), "{d:?}");
        let daily = CronSchedule::parse("0 3 * * *").unwrap();
        let d = daily.until_next(now).unwrap();
        // 25 hours allows for a DST change.
        assert!(
            d > Duration::ZERO && d <= Duration::from_secs(25 * 3600),
            "{d:?}"
        );
    }
}
