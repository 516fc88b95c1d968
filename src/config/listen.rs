//! An app's `listen` addresses (socket activation): their syntax, the checks across the list and
//! the apps (count, duplicates, `[defaults]`), and the names the app receives in
//! `LISTEN_FDNAMES`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use toml::Spanned;

use super::diag::Diagnostics;
use super::probe::check_chars;
use super::schema::Field;
use super::units::{scalar_deserialize, Scalar};

/// The most addresses one app may listen on.
pub const MAX_LISTEN: usize = 16;

/// The longest path a Unix socket address holds (`sun_path` less its terminating NUL).
const MAX_UNIX_PATH: usize = 107;

const HINT: &str = r#"expected "tcp://HOST:PORT" (an IP address; IPv6 in brackets) or "unix:PATH", e.g. "tcp://127.0.0.1:8089""#;

/// An address citrusd listens on for an app and passes to it as a file descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListenAddr {
    /// `tcp://127.0.0.1:8089`, `tcp://[::1]:8089`.
    Tcp(SocketAddr),
    /// `unix:/run/web.sock`; absolute once the config is loaded (relative paths are resolved
    /// against the config file's directory).
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "tcp://{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl ListenAddr {
    /// The name in `LISTEN_FDNAMES`: the address as shown, each run of characters outside
    /// `[A-Za-z0-9._-]` replaced by one `_` (`tcp_127.0.0.1_8089`, `unix_run_web.sock`).
    pub fn fd_name(&self) -> String {
        let keep = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        let mut name = String::new();
        let mut replacing = false;
        for c in self.to_string().chars() {
            match keep(c) {
                true => name.push(c),
                false if !replacing => name.push('_'),
                false => {}
            }
            replacing = !keep(c);
        }
        name
    }

    /// The address with a relative Unix path made absolute against `base`, `.` components
    /// dropped.
    pub(super) fn resolve(&self, base: &Path) -> ListenAddr {
        match self {
            ListenAddr::Tcp(_) => self.clone(),
            ListenAddr::Unix(path) => {
                let path: PathBuf = base
                    .join(path)
                    .components()
                    .filter(|c| *c != Component::CurDir)
                    .collect();
                ListenAddr::Unix(path)
            }
        }
    }
}

impl Scalar for ListenAddr {
    const EXPECTING: &'static str =
        r#"an address such as "tcp://127.0.0.1:8089" or "unix:/run/web.sock""#;
    fn from_text(s: &str) -> Result<Self, String> {
        parse(s).map_err(|why| format!("invalid listen address {s:?}: {why}"))
    }
}

scalar_deserialize!(ListenAddr);

fn parse(s: &str) -> Result<ListenAddr, String> {
    if let Some(path) = strip_scheme(s, "unix:") {
        if path.is_empty() {
            return Err(r#"the path is empty; e.g. "unix:/run/web.sock""#.to_owned());
        }
        if path.contains('\0') {
            return Err("the path contains a NUL character".to_owned());
        }
        return Ok(ListenAddr::Unix(PathBuf::from(path)));
    }
    let Some(rest) = strip_scheme(s, "tcp://") else {
        return Err(match s.split_once(':') {
            Some((scheme, _)) if !scheme.is_empty() && !scheme.contains(['[', '.', '/']) => {
                format!("unsupported scheme `{scheme}`; {HINT}")
            }
            _ => HINT.to_owned(),
        });
    };
    check_chars(rest)?;
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && (!host.contains(':') || host.ends_with(']')) => {
            (host, port)
        }
        _ if rest.is_empty() => {
            return Err("the host is missing; e.g. \"tcp://127.0.0.1:8089\"".into())
        }
        _ if rest.starts_with('[') && !rest.contains(']') => {
            return Err("unclosed `[` in the host".to_owned())
        }
        _ if rest.matches(':').count() > 1 && !rest.starts_with('[') => {
            return Err("put an IPv6 address in brackets, e.g. tcp://[::1]:8089".to_owned())
        }
        _ if rest.starts_with(':') => {
            return Err("the host is missing; e.g. \"tcp://127.0.0.1:8089\"".into())
        }
        _ => return Err("the port is missing: expected tcp://HOST:PORT".to_owned()),
    };
    let ip = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6
            .parse::<std::net::Ipv6Addr>()
            .map(std::net::IpAddr::V6)
            .map_err(|_| format!("invalid IPv6 address `{v6}`"))?,
        None => host.parse::<std::net::Ipv4Addr>().map(std::net::IpAddr::V4).map_err(|_| {
            format!(
                "`{host}` is not an IP address: listen on an address, e.g. 127.0.0.1, 0.0.0.0 or [::1]"
            )
        })?,
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|&port| port != 0)
        .ok_or_else(|| format!("invalid port `{port}`: expected 1 to 65535"))?;
    Ok(ListenAddr::Tcp(SocketAddr::new(ip, port)))
}

/// `s` without `scheme` (compared without case).
fn strip_scheme<'a>(s: &'a str, scheme: &str) -> Option<&'a str> {
    let head = s.get(..scheme.len())?;
    head.eq_ignore_ascii_case(scheme)
        .then(|| &s[scheme.len()..])
}

/// A `listen` as written: each address with its span.
pub(super) type ListenList = Field<Vec<Spanned<ListenAddr>>>;

/// The app's `listen` as written, each address resolved against `base`.
pub(super) fn resolve(list: Option<&ListenList>, base: &Path) -> Vec<ListenAddr> {
    let written = list.map(|field| field.value.as_slice()).unwrap_or_default();
    written
        .iter()
        .map(|addr| addr.get_ref().resolve(base))
        .collect()
}

/// Checks every `listen` (`defaults`: the one of `[defaults]`; `apps`: each app's name and its
/// own): none in `[defaults]`, at most [`MAX_LISTEN`] per app, Unix paths that fit a socket
/// address, and no address listed twice, in one app or across apps.
pub(super) fn check<'a>(
    diags: &mut Diagnostics<'_>,
    defaults: Option<&ListenList>,
    apps: impl IntoIterator<Item = (&'a str, &'a ListenList)>,
    base: &Path,
) {
    if let Some(listen) = defaults {
        diags.error(
            listen.key.clone(),
            "defaults.listen",
            "`listen` cannot be set in [defaults]: two apps cannot listen on one address; give \
             each app its own",
        );
    }
    let mut owners: BTreeMap<ListenAddr, &str> = BTreeMap::new();
    for (app, listen) in apps {
        let path = format!("apps.{app}.listen");
        if listen.value.len() > MAX_LISTEN {
            let message = format!(
                "{} addresses; an app may listen on at most {MAX_LISTEN}",
                listen.value.len()
            );
            diags.error(listen.span.clone(), &path, message);
        }
        for written in &listen.value {
            let addr = written.get_ref().resolve(base);
            if let ListenAddr::Unix(file) = &addr {
                let len = file.as_os_str().len();
                if len > MAX_UNIX_PATH {
                    let message = format!(
                        "the socket path {} is {len} bytes long; a Unix socket path holds at \
                         most {MAX_UNIX_PATH}: choose a shorter one",
                        file.display()
                    );
                    diags.error(written.span(), &path, message);
                }
            }
            match owners.get(&addr) {
                Some(&owner) if owner == app => {
                    let message = format!("{addr} is listed twice; remove one");
                    diags.error(written.span(), &path, message);
                }
                Some(owner) => {
                    let message = format!(
                        "{addr} is already in the `listen` of app `{owner}`: two apps cannot \
                         listen on one address"
                    );
                    diags.error(written.span(), &path, message);
                }
                None => {
                    owners.insert(addr, app);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> ListenAddr {
        ListenAddr::from_text(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn addresses_and_their_names() {
        let cases = [
            (
                "tcp://127.0.0.1:8089",
                "tcp://127.0.0.1:8089",
                "tcp_127.0.0.1_8089",
            ),
            ("TCP://0.0.0.0:80", "tcp://0.0.0.0:80", "tcp_0.0.0.0_80"),
            ("tcp://[::1]:8089", "tcp://[::1]:8089", "tcp_1_8089"),
            (
                "unix:/run/web.sock",
                "unix:/run/web.sock",
                "unix_run_web.sock",
            ),
            (
                "unix:/run/my app.sock",
                "unix:/run/my app.sock",
                "unix_run_my_app.sock",
            ),
        ];
        for (text, shown, name) in cases {
            let addr = ok(text);
            assert_eq!(addr.to_string(), shown, "{text}");
            assert_eq!(addr.fd_name(), name, "{text}");
            assert_eq!(ok(shown), addr, "the written form reads back");
        }
    }

    #[test]
    fn relative_unix_paths_resolve_against_the_base() {
        let base = Path::new("/etc/citrus");
        assert_eq!(
            ok("unix:run/web.sock").resolve(base),
            ListenAddr::Unix("/etc/citrus/run/web.sock".into())
        );
        assert_eq!(
            ok("unix:./web.sock").resolve(base),
            ListenAddr::Unix("/etc/citrus/web.sock".into())
        );
        assert_eq!(
            ok("unix:/run/web.sock").resolve(base),
            ListenAddr::Unix("/run/web.sock".into())
        );
        let tcp = ok("tcp://127.0.0.1:1");
        assert_eq!(tcp.resolve(base), tcp);
    }

    #[test]
    fn malformed_addresses() {
        let bad = [
            ("tcp://nohost", "the port is missing"),
            ("tcp://localhost:80", "`localhost` is not an IP address"),
            ("tcp://example.com:80", "is not an IP address"),
            ("tcp://300.1.1.1:80", "`300.1.1.1` is not an IP address"),
            ("tcp://127.0.0.1:0", "invalid port `0`"),
            ("tcp://127.0.0.1:70000", "invalid port `70000`"),
            ("tcp://127.0.0.1:", "invalid port ``"),
            ("tcp://:80", "the host is missing"),
            ("tcp://", "the host is missing"),
            ("tcp://::1:80", "put an IPv6 address in brackets"),
            ("tcp://[::1:80", "unclosed `[`"),
            ("tcp://[::g]:80", "invalid IPv6 address `::g`"),
            ("tcp://[::1]", "the port is missing"),
            ("tcp://127.0.0.1 :80", "unexpected character ' '"),
            ("udp://127.0.0.1:53", "unsupported scheme `udp`"),
            ("http://127.0.0.1:80", "unsupported scheme `http`"),
            ("127.0.0.1:8089", "expected \"tcp://HOST:PORT\""),
            ("/run/web.sock", "expected \"tcp://HOST:PORT\""),
            ("unix:", "the path is empty"),
            ("", "expected \"tcp://HOST:PORT\""),
        ];
        for (text, part) in bad {
            let err = ListenAddr::from_text(text).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid listen address {text:?}: ")),
                "{err}"
            );
            assert!(err.contains(part), "{text}: {err}");
        }
    }
}
