//! `[daemon]`: where citrusd keeps its state, logs and control socket.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::{geteuid, User};

use super::schema::{layer, Field};
use super::units::{Choice, DurationValue, Named};

/// `[daemon]`.
#[derive(Clone, Debug, PartialEq)]
pub struct DaemonConfig {
    /// Persisted state.
    pub state_dir: PathBuf,
    /// App logs.
    pub log_dir: PathBuf,
    /// Control socket, if set in the file.
    pub socket: Option<PathBuf>,
    /// Group that owns the control socket.
    pub socket_group: Option<String>,
    /// How often memory use is sampled for `max_memory_restart`.
    pub memory_check_interval: Duration,
    /// Where to serve metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// How citrusd writes its own log lines on stderr.
    pub log_format: LogFormat,
}

/// `log_format`: citrusd's own log lines as text (the default) or as one JSON object per line,
/// for shipping to Loki or Elasticsearch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Named for LogFormat {
    const WHAT: &'static str = "log format";
    const ALL: &'static [Self] = &[LogFormat::Text, LogFormat::Json];
    fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

layer!(
    /// `[daemon]`.
    DaemonLayer {
        state_dir: PathBuf,
        log_dir: PathBuf,
        socket: PathBuf,
        socket_group: String,
        memory_check_interval: DurationValue,
        metrics_listen: SocketAddr,
        log_format: Choice<LogFormat>,
    }
);

/// Builds `[daemon]` from its layer: paths against `base`, the defaults of root or a user.
pub(super) fn resolve_daemon(layer: &DaemonLayer, base: &Path) -> DaemonConfig {
    let path = |field: &Option<Field<PathBuf>>| field.as_ref().map(|f| base.join(&f.value));
    let is_root = geteuid().is_root();
    let state_dir = path(&layer.state_dir).unwrap_or_else(|| {
        default_state_dir(
            is_root,
            std::env::var_os("XDG_STATE_HOME"),
            std::env::var_os("HOME"),
        )
    });
    let log_dir = path(&layer.log_dir).unwrap_or_else(|| match is_root {
        true => PathBuf::from("/var/log/citrus"),
        false => state_dir.join("logs"),
    });
    DaemonConfig {
        log_dir,
        state_dir,
        socket: path(&layer.socket),
        socket_group: layer.socket_group.as_ref().map(|f| f.value.clone()),
        memory_check_interval: layer
            .memory_check_interval
            .as_ref()
            .map_or(Duration::from_secs(1), |f| f.value.0),
        metrics_listen: layer.metrics_listen.as_ref().map(|f| f.value),
        log_format: layer
            .log_format
            .as_ref()
            .map_or_else(LogFormat::default, |f| f.value.0),
    }
}

/// root: `/var/lib/citrus`; otherwise `$XDG_STATE_HOME/citrus`, else `$HOME/.local/state/citrus`
/// (home from the password database if `HOME` is unset).
fn default_state_dir(is_root: bool, xdg: Option<OsString>, home: Option<OsString>) -> PathBuf {
    if is_root {
        return PathBuf::from("/var/lib/citrus");
    }
    let absolute = |var: Option<OsString>| var.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(xdg) = absolute(xdg) {
        return xdg.join("citrus");
    }
    absolute(home)
        .or_else(|| {
            User::from_uid(geteuid())
                .ok()
                .flatten()
                .map(|user| user.dir)
        })
        .unwrap_or_else(std::env::temp_dir)
        .join(".local/state/citrus")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_state_dirs() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            default_state_dir(true, os("/x"), os("/h")),
            Path::new("/var/lib/citrus")
        );
        assert_eq!(
            default_state_dir(false, os("/x"), os("/h")),
            Path::new("/x/citrus")
        );
        assert_eq!(
            default_state_dir(false, None, os("/h")),
            Path::new("/h/.local/state/citrus")
        );
        assert_eq!(
            default_state_dir(false, os("relative"), os("/h")),
            Path::new("/h/.local/state/citrus")
        );
    }
}
