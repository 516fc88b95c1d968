//! PM2's loosely typed JSON values read as what Citrus needs: durations, sizes, integers,
//! booleans, "off", and the words that say what a value is in messages.

use std::time::Duration;

use serde_json::Value;

/// A duration: a number of ms, or a string like `"1000"`, `"10s"`, `"1.5m"`, `"2h"`; rounded to
/// the millisecond.
pub(super) fn duration(v: &Value) -> Option<Duration> {
    let (num, unit) = match v {
        Value::Number(n) => (n.as_f64()?, ""),
        Value::String(s) => {
            let s = s.trim();
            let i = s
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(s.len());
            (s[..i].parse::<f64>().ok()?, s[i..].trim())
        }
        _ => return None,
    };
    let factor = match unit {
        "" | "ms" => 1.0,
        "s" => 1_000.0,
        "m" | "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return None,
    };
    let ms = num * factor;
    (0.0..1e15)
        .contains(&ms)
        .then(|| Duration::from_millis(ms.round() as u64))
}

/// A size as Citrus writes it: `"1G"`, `"300M"`, `"200K"`, or bytes as `"N"` (PM2 units are 1024-based).
pub(super) fn size(v: &Value) -> Option<String> {
    let (num, unit) = match v {
        Value::Number(n) => (n.as_f64()?, String::new()),
        Value::String(s) => {
            let s = s.trim();
            let i = s
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(s.len());
            let unit = s[i..].trim().to_ascii_uppercase();
            let unit = match unit.as_str() {
                "B" => String::new(),
                u if u.len() == 2 && u.ends_with('B') => u[..1].to_string(),
                u => u.to_string(),
            };
            (s[..i].parse::<f64>().ok()?, unit)
        }
        _ => return None,
    };
    let factor: f64 = match unit.as_str() {
        "" => 1.0,
        "K" => 1024.0,
        "M" => 1024.0 * 1024.0,
        "G" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    if !(num.is_finite() && num > 0.0 && num * factor < 1e18) {
        return None;
    }
    if num.fract() == 0.0 {
        Some(format!("{}{unit}", num as u64))
    } else {
        Some(format!("{}", (num * factor).round() as u64))
    }
}

/// An integer from a number or a numeric string.
pub(super) fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `true` or `false`, as a boolean or as text.
pub(super) fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s == "true" => Some(true),
        Value::String(s) if s == "false" => Some(false),
        _ => None,
    }
}

/// Whether an option is unset in effect: null, false, 0, "" or an empty list.
pub(super) fn is_off(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || s == "false",
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// A string, number or boolean as text.
pub(super) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// What kind of JSON value `v` is, for messages: "a number", "an object".
pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::format_duration;

    #[test]
    fn durations_and_sizes() {
        let d = |v: Value| duration(&v).map(format_duration);
        assert_eq!(d(10000.into()).as_deref(), Some("10s"));
        assert_eq!(d(1500.into()).as_deref(), Some("1500ms"));
        assert_eq!(d(60000.into()).as_deref(), Some("1m"));
        assert_eq!(d(0.into()).as_deref(), Some("0s"));
        assert_eq!(d(7_200_000.into()).as_deref(), Some("2h"));
        assert_eq!(d(172_800_000.into()).as_deref(), Some("2d"));
        assert_eq!(d("10s".into()).as_deref(), Some("10s"));
        assert_eq!(d("1000".into()).as_deref(), Some("1s"));
        assert_eq!(d(" 250ms ".into()).as_deref(), Some("250ms"));
        assert_eq!(d("1.5s".into()).as_deref(), Some("1500ms"));
        assert_eq!(d("90m".into()).as_deref(), Some("90m"));
        assert_eq!(d("1h".into()).as_deref(), Some("1h"));
        assert_eq!(d("soon".into()), None);
        assert_eq!(d("10 parsecs".into()), None);
        assert_eq!(d((-5).into()), None);

        let s = |v: Value| size(&v);
        assert_eq!(s("1G".into()).as_deref(), Some("1G"));
        assert_eq!(s("300M".into()).as_deref(), Some("300M"));
        assert_eq!(s("200K".into()).as_deref(), Some("200K"));
        assert_eq!(s("4GB".into()).as_deref(), Some("4G"));
        assert_eq!(s("512mb".into()).as_deref(), Some("512M"));
        assert_eq!(s("1.5G".into()).as_deref(), Some("1610612736"));
        assert_eq!(s("1048576".into()).as_deref(), Some("1048576"));
        assert_eq!(s(1_073_741_824u64.into()).as_deref(), Some("1073741824"));
        assert_eq!(s("1T".into()), None);
        assert_eq!(s(0.into()), None);
    }
}
