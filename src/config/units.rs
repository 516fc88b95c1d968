//! Human-friendly scalars of the config file (durations, sizes, signals, bounded integers, names out
//! of a fixed set) and [`Scalar`], the single serde path through which each of them is
//! deserialised.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::de::{self, Visitor};

use super::diag::suggest;

const DURATION_HINT: &str = r#"expected a number with a unit, e.g. "500ms", "10s", "5m", "7d""#;
const SIZE_HINT: &str =
    r#"expected a number of bytes with an optional unit, e.g. "4096", "512K", "100M", "1G""#;

/// The longest duration any key takes: ten years. Every duration is parsed by
/// [`parse_duration`], so none can overflow the millisecond arithmetic done with it (an
/// `enroll_token_ttl` of 2e11 days used to wrap `now + ttl` and made every token expired).
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// Parses a duration such as `"500ms"`, `"10s"`, `"1m30s"` or `"0"` (units: ms, s, m, h, d), at
/// most [`MAX_DURATION`].
///
/// The error is a complete human-readable message.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = |hint: &str| format!("invalid duration {s:?}: {hint}");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid(DURATION_HINT));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(&format!("the unit is missing, e.g. \"{s}s\"")));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let letters = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        let (number, unit) = (&rest[..digits], &rest[digits..digits + letters]);
        rest = &rest[digits + letters..];
        let unit_ms: u64 = match unit {
            _ if digits == 0 => return Err(invalid(DURATION_HINT)),
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(invalid(DURATION_HINT)),
        };
        total = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit_ms))
            .and_then(|ms| total.checked_add(Duration::from_millis(ms)))
            .filter(|total| *total <= MAX_DURATION)
            .ok_or_else(|| {
                invalid(&format!(
                    "too large: the most is {} (ten years)",
                    format_duration(MAX_DURATION)
                ))
            })?;
    }
    Ok(total)
}

/// Writes a duration the way the config does, in its largest exact unit: `"14d"`, `"90s"`,
/// `"1500ms"`, `"0s"`. From a minute up, a duration with milliseconds is written in parts
/// (`"1h12s345ms"`, as the config also reads it) rather than as a long count of milliseconds.
pub fn format_duration(d: Duration) -> String {
    const UNITS: [(&str, u128); 5] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    // The largest unit that divides it exactly (`ms` divides everything).
    let (unit, size) = UNITS[..4]
        .iter()
        .find(|(_, size)| ms.is_multiple_of(*size))
        .unwrap_or(&UNITS[4]);
    if *size > 1 || ms < 60_000 {
        return format!("{}{unit}", ms / size);
    }
    let mut rest = ms;
    let mut out = String::new();
    for (unit, size) in UNITS {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

/// A TOML basic string (`"…"`) holding `s`, with every character TOML forbids there escaped:
/// how citrusctl import-pm2 and the engine's cloud-init write values into a config.
pub fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes a size in its largest exact binary unit: `"10M"`, `"1G"`, `"1500"`.
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Parses a size in bytes: `"4096"`, `"512K"`, `"100MB"`, `"1g"`, `"2T"` (binary multiples, 1K = 1024).
///
/// The error is a complete human-readable message.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    let shift = match unit.to_ascii_lowercase().as_str() {
        _ if digits == 0 => None,
        "" | "b" => Some(0),
        "k" | "kb" | "kib" => Some(10),
        "m" | "mb" | "mib" => Some(20),
        "g" | "gb" | "gib" => Some(30),
        "t" | "tb" | "tib" => Some(40),
        _ => None,
    }
    .ok_or_else(|| format!("invalid size {s:?}: {SIZE_HINT}"))?;
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// Parses a signal given as `"SIGTERM"`, `"TERM"`, `"sigterm"` or a number such as `"15"`.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    if let Ok(number) = s.parse::<i64>() {
        return signal_from_number(number);
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().map_err(|_| {
        format!(
            r#"unknown signal {s:?}: expected a name like "SIGTERM" or "TERM", or a number like 15"#
        )
    })
}

fn signal_from_number(number: i64) -> Result<Signal, String> {
    i32::try_from(number)
        .ok()
        .and_then(|n| Signal::try_from(n).ok())
        .ok_or_else(|| format!("unknown signal number {number}"))
}

/// A value written as a TOML string (or, where it makes sense, a number or boolean) and parsed
/// by hand. Implementors get `Deserialize` from [`scalar_deserialize!`].
pub(crate) trait Scalar: Sized {
    /// What the value should look like, for "invalid type" messages.
    const EXPECTING: &'static str;
    fn from_text(s: &str) -> Result<Self, String>;
    fn from_integer(v: i64) -> Result<Self, String> {
        Err(format!(
            "invalid type: integer `{v}`, expected {}",
            Self::EXPECTING
        ))
    }
    fn from_float(v: f64) -> Result<Self, String> {
        Err(format!(
            "invalid type: float `{v}`, expected {}",
            Self::EXPECTING
        ))
    }
    fn from_bool(v: bool) -> Result<Self, String> {
        Err(format!(
            "invalid type: boolean `{v}`, expected {}",
            Self::EXPECTING
        ))
    }
}

/// The serde visitor shared by every [`Scalar`].
pub(crate) struct ScalarVisitor<T>(pub PhantomData<T>);

impl<T: Scalar> Visitor<'_> for ScalarVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        T::from_text(v).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::from_integer(v).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        let v = i64::try_from(v).map_err(|_| E::custom(format!("integer {v} is too large")))?;
        self.visit_i64(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        T::from_float(v).map_err(E::custom)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        T::from_bool(v).map_err(E::custom)
    }
}

/// Implements `serde::Deserialize` for [`Scalar`] types through [`ScalarVisitor`].
macro_rules! scalar_deserialize {
    ($($ty:ty),* $(,)?) => {$(
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any($crate::config::units::ScalarVisitor::<$ty>(std::marker::PhantomData))
            }
        }
    )*};
}
pub(crate) use scalar_deserialize;

/// A duration field.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct DurationValue(pub Duration);

impl Scalar for DurationValue {
    const EXPECTING: &'static str = r#"a duration string such as "10s""#;
    fn from_text(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Self)
    }
    fn from_integer(v: i64) -> Result<Self, String> {
        Err(format!(
            r#"invalid duration {v}: expected a string with a unit, e.g. "{v}s""#
        ))
    }
}

/// A size field: a string with an optional unit, or an integer number of bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SizeValue(pub u64);

impl Scalar for SizeValue {
    const EXPECTING: &'static str = r#"a size such as "100M" or a number of bytes"#;
    fn from_text(s: &str) -> Result<Self, String> {
        parse_size(s).map(Self)
    }
    fn from_integer(v: i64) -> Result<Self, String> {
        u64::try_from(v)
            .map(Self)
            .map_err(|_| format!("invalid size {v}: must not be negative"))
    }
}

/// A signal field: a name or a number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SignalValue(pub Signal);

impl Scalar for SignalValue {
    const EXPECTING: &'static str = r#"a signal name such as "SIGTERM" or a number"#;
    fn from_text(s: &str) -> Result<Self, String> {
        parse_signal(s).map(Self)
    }
    fn from_integer(v: i64) -> Result<Self, String> {
        signal_from_number(v).map(Self)
    }
}

/// An environment variable value; numbers and booleans are converted to their TOML spelling.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct EnvValue(pub String);

impl Scalar for EnvValue {
    const EXPECTING: &'static str = "a string, number or boolean";
    fn from_text(s: &str) -> Result<Self, String> {
        Ok(Self(s.to_owned()))
    }
    fn from_integer(v: i64) -> Result<Self, String> {
        Ok(Self(v.to_string()))
    }
    fn from_float(v: f64) -> Result<Self, String> {
        Ok(Self(v.to_string()))
    }
    fn from_bool(v: bool) -> Result<Self, String> {
        Ok(Self(v.to_string()))
    }
}

/// A duration that must be more than zero.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct PositiveDuration(pub Duration);

impl Scalar for PositiveDuration {
    const EXPECTING: &'static str = DurationValue::EXPECTING;
    fn from_text(s: &str) -> Result<Self, String> {
        match parse_duration(s)? {
            Duration::ZERO => Err(format!("invalid duration {s:?}: must be more than zero")),
            d => Ok(Self(d)),
        }
    }
    fn from_integer(v: i64) -> Result<Self, String> {
        DurationValue::from_integer(v).map(|d| Self(d.0))
    }
}

scalar_deserialize!(
    DurationValue,
    PositiveDuration,
    SizeValue,
    SignalValue,
    EnvValue
);

/// An integer from `MIN` to `MAX` (`i64::MAX`: no upper bound), stored as a `T`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Bounded<T, const MIN: i64, const MAX: i64>(pub T);

impl<T, const MIN: i64, const MAX: i64> Bounded<T, MIN, MAX> {
    fn range() -> String {
        match MAX {
            i64::MAX => format!("at least {MIN}"),
            _ => format!("from {MIN} to {MAX}"),
        }
    }
}

impl<T: TryFrom<i64>, const MIN: i64, const MAX: i64> Scalar for Bounded<T, MIN, MAX> {
    const EXPECTING: &'static str = "an integer";
    fn from_text(s: &str) -> Result<Self, String> {
        Err(format!(
            "invalid type: string {s:?}, expected an integer {}",
            Self::range()
        ))
    }
    fn from_integer(v: i64) -> Result<Self, String> {
        if !(MIN..=MAX).contains(&v) {
            return Err(format!("invalid value {v}: must be {}", Self::range()));
        }
        T::try_from(v)
            .map(Self)
            .map_err(|_| format!("invalid value {v}: too large"))
    }
}

impl<'de, T: TryFrom<i64>, const MIN: i64, const MAX: i64> serde::Deserialize<'de>
    for Bounded<T, MIN, MAX>
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor::<Self>(PhantomData))
    }
}

/// A value out of a fixed set, written as its name.
pub(crate) trait Named: Copy + 'static {
    /// What the names name, e.g. "job kind".
    const WHAT: &'static str;
    /// Every value, in the order they are listed in messages.
    const ALL: &'static [Self];
    /// The name as written in the config.
    fn name(self) -> &'static str;
}

/// Every name of `T`, comma-separated.
pub(crate) fn names<T: Named>() -> String {
    let names: Vec<&str> = T::ALL.iter().map(|value| value.name()).collect();
    names.join(", ")
}

/// A [`Named`] value; an unknown name gets "did you mean" and the list of names.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Choice<T>(pub T);

impl<T: Named> Scalar for Choice<T> {
    const EXPECTING: &'static str = "a string";
    fn from_text(s: &str) -> Result<Self, String> {
        if let Some(&value) = T::ALL.iter().find(|value| value.name() == s) {
            return Ok(Self(value));
        }
        let (what, names) = (T::WHAT, names::<T>());
        Err(match suggest(s, T::ALL.iter().map(|value| value.name())) {
            Some(close) => {
                format!("unknown {what} `{s}`; did you mean `{close}`? (expected one of: {names})")
            }
            None => format!("unknown {what} `{s}`; expected one of: {names}"),
        })
    }
}

impl<'de, T: Named> serde::Deserialize<'de> for Choice<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor::<Self>(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formatting_round_trips() {
        for text in [
            "14d",
            "2h",
            "90s",
            "1500ms",
            "0s",
            "5m",
            "1h12s345ms",
            "1m1ms",
        ] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
        assert_eq!(toml_string("a\"b\\c\n\u{1}\u{8}"), r#""a\"b\\c\n\u0001\b""#);
        for text in ["10M", "1G", "512K", "1500", "2T"] {
            assert_eq!(format_size(parse_size(text).unwrap()), text);
        }
    }

    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("0", 0),
            ("0s", 0),
            ("500ms", 500),
            ("10s", 10_000),
            ("5m", 300_000),
            ("2h", 7_200_000),
            ("7d", 604_800_000),
            ("1m30s", 90_000),
            ("1h1m1s1ms", 3_661_001),
        ];
        for (text, ms) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for bad in ["ten", "10x", "-1s", "", "s", "1.5s", " 1s", "1m30", "10S"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid duration {bad:?}: ")),
                "{err}"
            );
            assert!(err.contains(r#"e.g. "500ms", "10s""#), "{err}");
        }
        let err = parse_duration("10").unwrap_err();
        assert_eq!(
            err,
            r#"invalid duration "10": the unit is missing, e.g. "10s""#
        );
        for huge in [
            "99999999999999999999d",
            "200000000000d",
            "3651d",
            "3650d1ms",
        ] {
            assert_eq!(
                parse_duration(huge).unwrap_err(),
                format!(r#"invalid duration "{huge}": too large: the most is 3650d (ten years)"#)
            );
        }
        assert_eq!(parse_duration("3650d"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("87600h"), Ok(MAX_DURATION));
    }

    #[test]
    fn sizes() {
        let ok = [
            ("0", 0),
            ("4096", 4096),
            ("512K", 512 << 10),
            ("512k", 512 << 10),
            ("100M", 100 << 20),
            ("100MB", 100 << 20),
            ("1G", 1 << 30),
            ("1gb", 1 << 30),
            ("2T", 2 << 40),
            ("7B", 7),
            ("3KiB", 3 << 10),
        ];
        for (text, bytes) in ok {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "M", "10x", "-1", "1.5G", "1 G", "ten"] {
            let err = parse_size(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid size {bad:?}: expected")),
                "{err}"
            );
        }
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn signals() {
        for text in ["SIGTERM", "TERM", "sigterm", "term", "15"] {
            assert_eq!(parse_signal(text), Ok(Signal::SIGTERM), "{text}");
        }
        assert_eq!(parse_signal("SIGINT"), Ok(Signal::SIGINT));
        assert!(parse_signal("SIGFOO")
            .unwrap_err()
            .contains("unknown signal"));
        assert!(parse_signal("999")
            .unwrap_err()
            .contains("unknown signal number"));
    }
}
