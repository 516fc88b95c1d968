//! The `citrusd.toml` an import becomes, written by hand: fixed key order, inline env tables while
//! they stay short, every string escaped as TOML requires. The tests read every output back
//! through the `toml` parser.

use std::fmt::Write as _;

use crate::config::toml_string;

/// Longest `env = { … }` line written inline; longer tables become `[apps.NAME.env]` sections.
const INLINE_MAX: usize = 100;

/// Order of the plain keys in each `[apps.NAME]` table.
pub(super) const KEY_ORDER: &[&str] = &[
    "command",
    "cwd",
    "user",
    "instances",
    "autostart",
    "restart",
    "max_restarts",
    "min_uptime",
    "restart_delay",
    "exp_backoff_restart_delay",
    "kill_timeout",
    "max_memory_restart",
    "cron_restart",
    "log_timestamps",
];

/// A TOML value of an app key.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum TVal {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<String>),
}

/// One converted app: its keys and its env tables.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct App {
    pub keys: Vec<(&'static str, TVal)>,
    /// `env` and `env_<NAME>` tables, in that order.
    pub envs: Vec<(String, Vec<(String, String)>)>,
}

impl App {
    /// Sets `key` (replacing what it had).
    pub fn set(&mut self, key: &'static str, value: TVal) {
        match self.keys.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.keys.push((key, value)),
        }
    }
}

/// `k` as the `&'static` key of [`KEY_ORDER`] it is ("" if none).
pub(super) fn static_key(k: &str) -> &'static str {
    KEY_ORDER.iter().find(|o| **o == k).copied().unwrap_or("")
}

/// The `citrusd.toml` text: a header naming `source_name`, then one `[apps.NAME]` table per app,
/// its keys in [`KEY_ORDER`], its env tables inline while they stay short.
pub(super) fn render(source_name: &str, apps: &[(String, App)]) -> String {
    let source: String = source_name
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out = format!("# Converted from {source} by citrusctl import-pm2\n");
    for (name, app) in apps {
        let table = format!("apps.{}", toml_key(name));
        let _ = writeln!(out, "\n[{table}]");
        let mut keys = app.keys.clone();
        keys.sort_by_key(|(k, _)| KEY_ORDER.iter().position(|o| o == k));
        for (k, v) in &keys {
            let _ = writeln!(out, "{k} = {}", toml_value(v));
        }
        let mut sections = Vec::new();
        for (env, vars) in &app.envs {
            let pairs: Vec<String> = vars
                .iter()
                .map(|(k, v)| format!("{} = {}", toml_key(k), toml_string(v)))
                .collect();
            let line = format!("{} = {{ {} }}", toml_key(env), pairs.join(", "));
            if line.len() <= INLINE_MAX {
                let _ = writeln!(out, "{line}");
            } else {
                sections.push((env, pairs));
            }
        }
        for (env, pairs) in sections {
            let _ = writeln!(out, "\n[{table}.{}]", toml_key(env));
            for pair in pairs {
                let _ = writeln!(out, "{pair}");
            }
        }
    }
    out
}

/// A value as TOML.
fn toml_value(v: &TVal) -> String {
    match v {
        TVal::Str(s) => toml_string(s),
        TVal::Int(n) => n.to_string(),
        TVal::Bool(b) => b.to_string(),
        TVal::List(items) => {
            let items: Vec<String> = items.iter().map(|s| toml_string(s)).collect();
            format!("[{}]", items.join(", "))
        }
    }
}

/// A key, bare when TOML allows it, quoted otherwise.
fn toml_key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        k.to_string()
    } else {
        toml_string(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_quoting() {
        assert_eq!(toml_key("NODE_ENV"), "NODE_ENV");
        assert_eq!(toml_key("my-key"), "my-key");
        assert_eq!(toml_key("MY.KEY"), "\"MY.KEY\"");
        assert_eq!(toml_key(""), "\"\"");
    }
}
