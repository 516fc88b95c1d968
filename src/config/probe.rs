//! Readiness and health probes (`ready`, `health`), and the URL parsing they share with
//! `[notify].webhook` and `[fleet].engine_url`.

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::diag::Diagnostics;
use super::schema::{exactly_one, layer, value, Field, Section};
use super::units::{scalar_deserialize, Bounded, PositiveDuration, Scalar};

/// What a probe connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeTarget {
    /// `GET http://host:port/path`; a 2xx or 3xx answer passes. `host` is a name or an IP
    /// address (IPv6 without brackets); `path` starts with `/` and keeps any `?query`.
    Http {
        host: String,
        port: u16,
        path: String,
    },
    /// A TCP connection that opens passes.
    Tcp { host: String, port: u16 },
}

impl ProbeTarget {
    /// For messages: `"http://127.0.0.1:1338/health"` or `"tcp 127.0.0.1:1338"`.
    pub fn describe(&self) -> String {
        let authority = |host: &str, port: u16| format!("{}:{port}", bracketed(host));
        match self {
            ProbeTarget::Http { host, port, path } => {
                format!("http://{}{path}", authority(host, *port))
            }
            ProbeTarget::Tcp { host, port } => format!("tcp {}", authority(host, *port)),
        }
    }
}

/// How an app tells that it is ready, so that apps `after` it may start.
#[derive(Clone, Debug, PartialEq)]
pub enum ReadyCheck {
    /// The probe passes.
    Probe(ProbeTarget),
    /// The app sends `READY=1` over `$NOTIFY_SOCKET` (sd_notify).
    Notify {
        /// Restart the app if no `WATCHDOG=1` arrives within this long.
        watchdog: Option<Duration>,
    },
}

/// `ready`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadyConfig {
    /// The check.
    pub check: ReadyCheck,
    /// How long to wait for readiness.
    pub timeout: Duration,
    /// Time between probes (not used by `Notify`).
    pub interval: Duration,
}

/// `health`: a probe run while the app is up.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthConfig {
    /// What to probe.
    pub target: ProbeTarget,
    /// Time between probes.
    pub interval: Duration,
    /// A probe not answered within this fails.
    pub timeout: Duration,
    /// Consecutive failures that make the app unhealthy; at least 1.
    pub failures: u32,
}

const HTTP_HINT: &str =
    r#"expected http://HOST[:PORT][/PATH], e.g. "http://127.0.0.1:3000/health""#;
const WEBHOOK_HINT: &str =
    r#"expected an http:// or https:// URL, e.g. "https://hooks.example.com/x""#;

/// An `http` probe URL.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HttpProbe(pub ProbeTarget);

impl Scalar for HttpProbe {
    const EXPECTING: &'static str = "an http:// URL";
    fn from_text(s: &str) -> Result<Self, String> {
        let invalid = |why: &str| format!("invalid probe URL {s:?}: {why}");
        let url = Url::parse(s, HTTP_SCHEMES, HTTP_HINT).map_err(|why| invalid(&why))?;
        if url.scheme != "http" {
            return Err(invalid(
                "https probes are not supported: probe the app's local plain-HTTP port",
            ));
        }
        let path = url.path().map_err(|why| invalid(&why))?;
        Ok(Self(ProbeTarget::Http {
            host: url.host,
            port: url.port,
            path,
        }))
    }
}

/// A `tcp` probe target, `HOST:PORT`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TcpProbe(pub ProbeTarget);

impl Scalar for TcpProbe {
    const EXPECTING: &'static str = r#"HOST:PORT, e.g. "127.0.0.1:3000""#;
    fn from_text(s: &str) -> Result<Self, String> {
        let (host, port) = check_chars(s)
            .and_then(|()| host_port(s, None))
            .map_err(|why| format!("invalid TCP target {s:?}: {why}"))?;
        Ok(Self(ProbeTarget::Tcp { host, port }))
    }
}

/// `[notify].webhook`: an `http://` or `https://` URL with a host.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct WebhookUrl(pub String);

impl Scalar for WebhookUrl {
    const EXPECTING: &'static str = "an https:// URL";
    fn from_text(s: &str) -> Result<Self, String> {
        Url::parse(s, HTTP_SCHEMES, WEBHOOK_HINT)
            .map(|_| Self(s.to_owned()))
            .map_err(|why| format!("invalid webhook URL {s:?}: {why}"))
    }
}

scalar_deserialize!(HttpProbe, TcpProbe, WebhookUrl);

/// URL schemes and their default ports.
pub(super) type Schemes = &'static [(&'static str, u16)];

const HTTP_SCHEMES: Schemes = &[("http", 80), ("https", 443)];

/// `SCHEME://HOST[:PORT]REST`, where `REST` is empty or starts with `/`, `?` or `#`.
pub(super) struct Url<'a> {
    /// One of the schemes it was parsed with, lowercased.
    pub scheme: &'static str,
    host: String,
    /// Given, or the scheme's.
    port: u16,
    default_port: u16,
    rest: &'a str,
}

impl<'a> Url<'a> {
    /// Parses a URL with one of `schemes`. The error says what is wrong; `hint` is what a URL
    /// should look like.
    pub fn parse(s: &'a str, schemes: Schemes, hint: &str) -> Result<Url<'a>, String> {
        let (scheme, after) = s.split_once("://").ok_or(hint)?;
        let &(scheme, default_port) = schemes
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(scheme))
            .ok_or_else(|| format!("unsupported scheme `{scheme}`; {hint}"))?;
        check_chars(s)?;
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let authority = &after[..end];
        if authority.contains('@') {
            return Err(format!(
                "invalid host `{authority}`: remove the `user:password@`; credentials do not \
                 belong in the URL"
            ));
        }
        let (host, port) = host_port(authority, Some(default_port))?;
        Ok(Url {
            scheme,
            host,
            port,
            default_port,
            rest: &after[end..],
        })
    }

    /// `HOST[:PORT]`, the port left out if it is the scheme's default.
    pub fn authority(&self) -> String {
        match self.port == self.default_port {
            true => bracketed(&self.host).into_owned(),
            false => format!("{}:{}", bracketed(&self.host), self.port),
        }
    }

    /// The path and query, `/` if there is no path; a `#fragment` is an error.
    pub fn path(&self) -> Result<String, String> {
        Ok(match self.rest {
            rest if rest.contains('#') => return Err("remove the #fragment".to_owned()),
            "" => "/".to_owned(),
            rest if rest.starts_with('?') => format!("/{rest}"),
            rest => rest.to_owned(),
        })
    }
}

/// A host as written in a URL: an IPv6 address in brackets.
fn bracketed(host: &str) -> Cow<'_, str> {
    match host.contains(':') {
        true => Cow::Owned(format!("[{host}]")),
        false => Cow::Borrowed(host),
    }
}

/// Rejects whitespace and control characters.
pub(super) fn check_chars(s: &str) -> Result<(), String> {
    match s.chars().find(|c| c.is_whitespace() || c.is_control()) {
        Some(c) => Err(format!("unexpected character {c:?}")),
        None => Ok(()),
    }
}

layer!(
    /// An app's `ready` table.
    ReadyLayer {
        http: HttpProbe,
        tcp: TcpProbe,
        notify: bool,
        timeout: PositiveDuration,
        interval: PositiveDuration,
        watchdog: PositiveDuration,
    }
    check: check_ready
);

fn check_ready(ready: &ReadyLayer, diags: &mut Diagnostics<'_>, section: &Section<'_>) {
    let example = r#"ready = { http = "http://127.0.0.1:3000/health" }"#;
    let check = exactly_one(diags, section, &["http", "tcp", "notify"], example);
    match (check, &ready.notify, &ready.watchdog) {
        (Some("notify"), Some(notify), _) if !notify.value => diags.error(
            notify.span.clone(),
            format!("{}.notify", section.path),
            "`notify = false` checks nothing: remove `ready` to start without a readiness check",
        ),
        (Some("http" | "tcp"), _, Some(watchdog)) => diags.error(
            watchdog.key.clone(),
            format!("{}.watchdog", section.path),
            "`watchdog` needs `notify = true`: only a notifying app can send WATCHDOG=1",
        ),
        _ => {}
    }
}

layer!(
    /// An app's `health` table.
    HealthLayer {
        http: HttpProbe,
        tcp: TcpProbe,
        interval: PositiveDuration,
        timeout: PositiveDuration,
        failures: Bounded<u32, 1, 1000>,
    }
    check: check_health
);

fn check_health(_: &HealthLayer, diags: &mut Diagnostics<'_>, section: &Section<'_>) {
    let example = r#"health = { http = "http://127.0.0.1:3000/health" }"#;
    exactly_one(diags, section, &["http", "tcp"], example);
}

/// Builds `ready` from its validated layer; `None` if validation failed.
pub(super) fn resolve_ready(ready: &ReadyLayer) -> Option<ReadyConfig> {
    let probe = value(&ready.http).map(|http| &http.0);
    let check = match probe.or(value(&ready.tcp).map(|tcp| &tcp.0)) {
        Some(target) => ReadyCheck::Probe(target.clone()),
        None if *value(&ready.notify)? => ReadyCheck::Notify {
            watchdog: value(&ready.watchdog).map(|watchdog| watchdog.0),
        },
        None => return None,
    };
    Some(ReadyConfig {
        check,
        timeout: or(&ready.timeout, Duration::from_secs(30)),
        interval: or(&ready.interval, Duration::from_millis(200)),
    })
}

/// Builds `health` from its validated layer; `None` if validation failed.
pub(super) fn resolve_health(health: &HealthLayer) -> Option<HealthConfig> {
    let probe = value(&health.http).map(|http| &http.0);
    let target = probe.or(value(&health.tcp).map(|tcp| &tcp.0))?;
    Some(HealthConfig {
        target: target.clone(),
        interval: or(&health.interval, Duration::from_secs(30)),
        timeout: or(&health.timeout, Duration::from_secs(5)),
        failures: value(&health.failures).map_or(3, |failures| failures.0),
    })
}

/// The duration in `field`, else `default`.
fn or(field: &Option<Field<PositiveDuration>>, default: Duration) -> Duration {
    value(field).map_or(default, |d| d.0)
}

/// `HOST[:PORT]`: a name, an IPv4 address or a bracketed IPv6 address, and a port from 1 to
/// 65535 (`default_port` if left out, required if `None`). IPv6 hosts come back unbracketed.
fn host_port(s: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or("unclosed `[` in the host")?;
        ip.parse::<Ipv6Addr>()
            .map_err(|_| format!("invalid IPv6 address `{ip}`"))?;
        match after {
            "" => (ip, None),
            _ => (
                ip,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or("expected `:PORT` after `]`")?,
                ),
            ),
        }
    } else if s.matches(':').count() > 1 {
        return Err("put an IPv6 address in brackets, e.g. [::1]:3000".to_owned());
    } else {
        match s.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("the host is missing".to_owned());
    }
    let name_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    let looks_ipv4 = host.chars().all(|c| c.is_ascii_digit() || c == '.');
    if !host.contains(':')
        && (!host.chars().all(name_chars) || looks_ipv4 && host.parse::<Ipv4Addr>().is_err())
    {
        return Err(format!("invalid host `{host}`"));
    }
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&port| port != 0)
            .ok_or_else(|| format!("invalid port `{port}`: expected 1 to 65535"))?,
        None => default_port.ok_or("the port is missing: expected HOST:PORT")?,
    };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(s: &str) -> Result<ProbeTarget, String> {
        HttpProbe::from_text(s).map(|probe| probe.0)
    }

    fn target(host: &str, port: u16, path: &str) -> ProbeTarget {
        let (host, path) = (host.to_owned(), path.to_owned());
        ProbeTarget::Http { host, port, path }
    }

    #[test]
    fn http_urls() {
        let ok = [
            (
                "http://127.0.0.1:1338/health",
                ("127.0.0.1", 1338, "/health"),
            ),
            ("http://localhost", ("localhost", 80, "/")),
            ("HTTP://api.internal/x?y=1", ("api.internal", 80, "/x?y=1")),
            ("http://[::1]:8080?ready", ("::1", 8080, "/?ready")),
        ];
        let described = [
            "http://127.0.0.1:1338/health",
            "http://localhost:80/",
            "http://api.internal:80/x?y=1",
            "http://[::1]:8080/?ready",
        ];
        for ((text, (host, port, path)), shown) in ok.into_iter().zip(described) {
            let parsed = http(text).unwrap();
            assert_eq!(parsed, target(host, port, path), "{text}");
            assert_eq!(parsed.describe(), shown);
        }
        let bad = [
            ("not a url", "expected http://HOST[:PORT][/PATH]"),
            ("http://", "the host is missing"),
            (
                "http://host:99999/",
                "invalid port `99999`: expected 1 to 65535",
            ),
            ("http://host:0/", "invalid port `0`"),
            ("http://host:/", "invalid port ``"),
            ("https://host/", "https probes are not supported"),
            ("ftp://host/", "unsupported scheme `ftp`"),
            ("http://a b/", "unexpected character ' '"),
            ("http://::1/", "put an IPv6 address in brackets"),
            ("http://[::g]/", "invalid IPv6 address"),
            ("http://user@host/", "invalid host `user@host`"),
            ("http://300.1.1.1/", "invalid host `300.1.1.1`"),
            ("http://host/#top", "remove the #fragment"),
        ];
        for (text, part) in bad {
            let err = http(text).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid probe URL {text:?}: ")),
                "{err}"
            );
            assert!(err.contains(part), "{text}: {err}");
        }
    }

    #[test]
    fn tcp_targets() {
        let tcp = |s: &str| TcpProbe::from_text(s).map(|probe| probe.0.describe());
        assert_eq!(tcp("127.0.0.1:1338"), Ok("tcp 127.0.0.1:1338".to_owned()));
        assert_eq!(tcp("[::1]:5432"), Ok("tcp [::1]:5432".to_owned()));
        assert!(tcp("db").unwrap_err().contains("the port is missing"));
        assert!(tcp("db:70000").unwrap_err().contains("invalid port"));
        assert!(tcp(":80").unwrap_err().contains("the host is missing"));
    }

    #[test]
    fn webhooks() {
        let hook = |s: &str| WebhookUrl::from_text(s).map(|url| url.0);
        let url = "https://hooks.example.com/T000/B000";
        assert_eq!(hook(url), Ok(url.to_owned()));
        assert!(hook("http://10.0.0.1:8080/notify").is_ok());
        assert!(hook("hooks.example.com")
            .unwrap_err()
            .contains("expected an http:// or https:// URL"));
        assert!(hook("https:///x").unwrap_err().contains("host is missing"));
        assert!(hook("https://a\tb/")
            .unwrap_err()
            .contains("unexpected character"));
    }
}
