//! Cron schedules (`cron_restart`, jobs): classic 5-field cron with an optional leading seconds
//! field, in local time or UTC.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Local, TimeZone, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use super::units::{Named, Scalar};

const FIELDS: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day-of-month",
    "month",
    "day-of-week",
];

/// The time zone a schedule is evaluated in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Timezone {
    /// The system's local time, daylight saving included.
    #[default]
    Local,
    /// UTC.
    Utc,
}

impl Named for Timezone {
    const WHAT: &'static str = "time zone";
    const ALL: &'static [Self] = &[Timezone::Local, Timezone::Utc];
    fn name(self) -> &'static str {
        match self {
            Timezone::Local => "local",
            Timezone::Utc => "UTC",
        }
    }
}

/// A parsed cron expression (5 fields, or 6 with leading seconds) and the time zone it is
/// evaluated in.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    expr: String,
    cron: Cron,
    tz: Timezone,
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        (&self.expr, self.tz) == (&other.expr, other.tz)
    }
}

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

impl CronSchedule {
    /// Parses `expr`, in local time; the error names the offending field when it can be singled
    /// out.
    pub fn parse(expr: &str) -> Result<CronSchedule, String> {
        Self::parse_in(expr, Timezone::Local)
    }

    /// Parses `expr`, evaluated in `tz`; errors as for [`CronSchedule::parse`].
    pub fn parse_in(expr: &str, tz: Timezone) -> Result<CronSchedule, String> {
        let parser = parser();
        let err = match parser.parse(expr) {
            Ok(cron) => {
                return Ok(CronSchedule {
                    expr: expr.to_owned(),
                    cron,
                    tz,
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

    /// The time zone the schedule is evaluated in.
    pub fn timezone(&self) -> Timezone {
        self.tz
    }

    /// The same schedule, evaluated in `tz`.
    pub(crate) fn in_zone(self, tz: Timezone) -> Self {
        Self { tz, ..self }
    }

    /// The next firing strictly after `now` (local DST gaps and repeats are resolved by croner).
    /// `None` if it never fires.
    pub fn next_after(&self, now: SystemTime) -> Option<SystemTime> {
        fn next<Tz: TimeZone>(cron: &Cron, now: DateTime<Tz>) -> Option<SystemTime> {
            cron.find_next_occurrence(&now, false)
                .ok()
                .map(SystemTime::from)
        }
        match self.tz {
            Timezone::Local => next(&self.cron, DateTime::<Local>::from(now)),
            Timezone::Utc => next(&self.cron, DateTime::<Utc>::from(now)),
        }
    }

    /// Time from `now` until [`CronSchedule::next_after`]. `None` if it never fires.
    pub fn until_next(&self, now: SystemTime) -> Option<Duration> {
        self.next_after(now)?.duration_since(now).ok()
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

    /// 2026-01-01T00:00:00Z.
    fn new_year() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600)
    }

    #[test]
    fn utc_and_local() {
        let now = new_year();
        let utc = CronSchedule::parse_in("0 3 * * *", Timezone::Utc).unwrap();
        assert_eq!(utc.timezone(), Timezone::Utc);
        let three = now + Duration::from_secs(3 * 3600);
        assert_eq!(utc.next_after(now), Some(three));
        assert_eq!(
            utc.next_after(three),
            Some(three + Duration::from_secs(86_400))
        );
        assert_eq!(utc.until_next(now), Some(Duration::from_secs(3 * 3600)));

        let local = CronSchedule::parse("0 3 * * *").unwrap();
        assert_eq!(local.timezone(), Timezone::Local);
        assert_ne!(local, utc);
        let local_now = DateTime::<Local>::from(now).naive_local();
        let mut three_local = local_now.date().and_hms_opt(3, 0, 0).unwrap();
        if three_local <= local_now {
            three_local += chrono::TimeDelta::days(1);
        }
        let expected = Local.from_local_datetime(&three_local).earliest().unwrap();
        assert_eq!(local.next_after(now), Some(SystemTime::from(expected)));
    }

    #[test]
    fn seconds_field() {
        let now = new_year() + Duration::from_millis(1_500);
        let every_fifteen = CronSchedule::parse_in("*/15 * * * * *", Timezone::Utc).unwrap();
        assert_eq!(
            every_fifteen.next_after(now),
            Some(new_year() + Duration::from_secs(15))
        );
        let half_past = CronSchedule::parse_in("30 0 3 * * *", Timezone::Utc).unwrap();
        assert_eq!(
            half_past.next_after(now),
            Some(new_year() + Duration::from_secs(3 * 3600 + 30))
        );
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
