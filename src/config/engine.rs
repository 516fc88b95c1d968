//! `engine.toml`, citrus-engine's config (SPEC 4): read through the same spanned schema as
//! `citrusd.toml`, so every problem is reported at once with its line, column and key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::diag::{ConfigError, Diagnostics};
use super::fleet::AgentId;
use super::probe::{check_chars, Schemes, Url};
use super::schema::{layer, read_layer, value, Field, Section};
use super::units::{scalar_deserialize, Bounded, PositiveDuration, Scalar, SizeValue};

/// A loaded and validated `engine.toml`.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// The file, absolute.
    pub path: PathBuf,
    /// Address of the HTTP server (agents, enrolment, admin API).
    pub listen: SocketAddr,
    /// Base URL given to agents and cloud-init, without a trailing `/`.
    pub public_url: String,
    /// The store.
    pub database: Database,
    /// File holding the admin token; created (0600) with a random token when missing.
    pub admin_token_file: Option<PathBuf>,
    /// A server whose agent has not connected this long after deploy fails.
    pub agent_connect_timeout: Duration,
    /// Lifetime of an enrolment token.
    pub enroll_token_ttl: Duration,
    /// How long status history is kept.
    pub status_history_retention: Duration,
    /// The agents' `status_interval`; an agent silent for 3 of them is offline.
    pub status_interval: Duration,
    /// An operation without a final report this long after it was sent fails.
    pub command_timeout: Duration,
    /// Largest WebSocket frame and message accepted from an agent, in bytes.
    pub max_frame: usize,
    /// Failed authentications from one address before it is refused for the window.
    pub auth_max_failures: u32,
    /// The window of `auth_max_failures`.
    pub auth_failure_window: Duration,
    /// `[digitalocean]`, with its defaults.
    pub digitalocean: DigitalOceanConfig,
    /// `[install]`: where cloud-init downloads citrusd; `None` when not configured.
    pub install: Option<InstallConfig>,
    /// `[local_agent]`: the agent of the engine's own host.
    pub local_agent: Option<LocalAgentConfig>,
    /// Where uploaded citrusd releases are kept, one file per SHA-256 (default: `releases/`
    /// beside the SQLite file, or `state/releases` beside this file with PostgreSQL).
    pub releases_dir: PathBuf,
    /// The largest release accepted by `POST /admin/releases`, in bytes (default 64 MiB).
    pub max_release_size: u64,
    /// A citrusd.toml fragment (apps, jobs, `[fleet.sites]`) every provisioned host gets.
    pub host_profile: Option<PathBuf>,
}

/// Where the engine keeps its state.
#[derive(Clone, PartialEq)]
pub enum Database {
    /// An SQLite file (created with its directory if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://user@host/db`); a password comes from `PGPASSWORD`.
    Postgres(String),
}

/// The URL may carry a password: never show it.
impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "Sqlite({})", path.display()),
            Database::Postgres(_) => f.write_str("Postgres(…)"),
        }
    }
}

/// `[digitalocean]`: droplet defaults of SPEC 4.
#[derive(Clone, Debug, PartialEq)]
pub struct DigitalOceanConfig {
    pub api_base: String,
    pub region: String,
    pub size: String,
    pub image: String,
    pub backups: bool,
    pub ipv6: bool,
    pub monitoring: bool,
    pub tags: Vec<String>,
    /// How often a droplet being created is polled.
    pub poll_interval: Duration,
    /// Per-request timeout of DigitalOcean's API.
    pub timeout: Duration,
    /// Tries per request (429, 5xx and connection failures are retried).
    pub attempts: u32,
}

impl Default for DigitalOceanConfig {
    fn default() -> Self {
        Self {
            api_base: "https://api.digitalocean.com/v2".into(),
            region: "sfo3".into(),
            size: "s-1vcpu-512mb-10gb".into(),
            image: "ubuntu-22-04-x64".into(),
            backups: false,
            ipv6: true,
            monitoring: true,
            tags: vec!["citrus-host".into()],
            poll_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            attempts: 4,
        }
    }
}

/// `[install]`.
#[derive(Clone, Debug, PartialEq)]
pub struct InstallConfig {
    pub citrusd_url: String,
    /// 64 lowercase hex digits.
    pub citrusd_sha256: String,
}

/// `[local_agent]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalAgentConfig {
    pub id: String,
    pub name: String,
    /// The key file the local citrusd reads (`[fleet] key_file`); written by the engine, 0600.
    pub key_file: PathBuf,
}

impl EngineConfig {
    /// Reads and validates the file.
    pub fn load(path: &Path) -> Result<EngineConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Same from text; `path` is used in messages and its directory for relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<EngineConfig, ConfigError> {
        let mut diags = Diagnostics::new(text, path);
        let root = toml::de::DeTable::parse(text).map_err(|error| {
            diags.error(error.span().unwrap_or(0..0), "", error.message());
            diags.take()
        })?;
        let layer: EngineLayer = read_layer(&mut diags, "", 0..0, root.into_inner());
        diags.check()?;
        let abs_path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let base = abs_path.parent().unwrap_or(Path::new("/")).to_owned();
        Ok(resolve(&layer, abs_path.clone(), &base))
    }
}

layer!(
    /// The whole of `engine.toml` (citrus-engine's config).
    EngineLayer {
        listen: SocketAddr,
        public_url: PublicUrl,
        database_url: DatabaseUrl,
        admin_token_file: PathBuf,
        agent_connect_timeout: PositiveDuration,
        enroll_token_ttl: PositiveDuration,
        status_history_retention: PositiveDuration,
        status_interval: PositiveDuration,
        command_timeout: PositiveDuration,
        max_frame: Bounded<u64, 1024, { 64 << 20 }>,
        auth_max_failures: Bounded<u32, 1, 100_000>,
        auth_failure_window: PositiveDuration,
        digitalocean: DigitalOceanLayer,
        install: InstallLayer,
        local_agent: LocalAgentLayer,
        releases_dir: PathBuf,
        max_release_size: SizeValue,
        host_profile: PathBuf,
    }
    check: check_engine
);

/// A citrusd binary is several MiB: a smaller `max_release_size` would refuse every release.
fn check_engine(engine: &EngineLayer, diags: &mut Diagnostics<'_>, _: &Section<'_>) {
    if let Some(size) = engine
        .max_release_size
        .as_ref()
        .filter(|s| s.value.0 < 1 << 20)
    {
        diags.error(
            size.span.clone(),
            "max_release_size",
            "max_release_size is below 1 MiB, smaller than any citrusd binary: use e.g. \"64M\"",
        );
    }
}

layer!(
    /// `[digitalocean]` in `engine.toml`.
    DigitalOceanLayer {
        api_base: ApiBase,
        region: String,
        size: String,
        image: String,
        backups: bool,
        ipv6: bool,
        monitoring: bool,
        tags: Vec<String>,
        poll_interval: PositiveDuration,
        timeout: PositiveDuration,
        attempts: Bounded<u32, 1, 10>,
    }
);

layer!(
    /// `[install]` in `engine.toml`: where cloud-init fetches citrusd from.
    InstallLayer {
        citrusd_url: ApiBase,
        citrusd_sha256: Sha256Hex,
    }
);

layer!(
    /// `[local_agent]` in `engine.toml`: the agent of the host the engine runs on.
    LocalAgentLayer {
        id: AgentId,
        name: String,
        key_file: PathBuf,
    }
    check: check_local_agent
);

fn check_local_agent(_: &LocalAgentLayer, diags: &mut Diagnostics<'_>, section: &Section<'_>) {
    let required = [
        ("id", r#"id = "local""#),
        ("key_file", r#"key_file = "../.citrus/agent.key""#),
    ];
    section.require(diags, "[local_agent]", &required);
}

fn or<T: Clone>(field: &Option<Field<T>>, default: T) -> T {
    value(field).cloned().unwrap_or(default)
}

fn duration<T: Copy + Into<Duration>>(field: &Option<Field<T>>, default: Duration) -> Duration {
    value(field).map_or(default, |d| (*d).into())
}

impl From<PositiveDuration> for Duration {
    fn from(d: PositiveDuration) -> Duration {
        d.0
    }
}

fn resolve(layer: &EngineLayer, path: PathBuf, base: &Path) -> EngineConfig {
    let listen = or(&layer.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
    let public_url =
        value(&layer.public_url).map_or_else(|| format!("http://{listen}"), |u| u.0.clone());
    let database = match value(&layer.database_url).map(|url| &url.0) {
        Some(Database::Sqlite(file)) => Database::Sqlite(base.join(file)),
        Some(postgres) => postgres.clone(),
        None => Database::Sqlite(base.join("state/engine.db")),
    };
    let minutes = |m: u64| Duration::from_secs(60 * m);
    let releases_dir = match (value(&layer.releases_dir), &database) {
        (Some(dir), _) => base.join(dir),
        (None, Database::Sqlite(file)) => file.parent().unwrap_or(base).join("releases"),
        (None, Database::Postgres(_)) => base.join("state/releases"),
    };
    EngineConfig {
        path,
        listen,
        public_url,
        database,
        admin_token_file: value(&layer.admin_token_file).map(|file| base.join(file)),
        agent_connect_timeout: duration(&layer.agent_connect_timeout, minutes(10)),
        enroll_token_ttl: duration(&layer.enroll_token_ttl, minutes(30)),
        status_history_retention: duration(&layer.status_history_retention, minutes(7 * 24 * 60)),
        status_interval: duration(&layer.status_interval, Duration::from_secs(60)),
        command_timeout: duration(&layer.command_timeout, minutes(15)),
        max_frame: value(&layer.max_frame).map_or(1 << 20, |b| b.0 as usize),
        auth_max_failures: value(&layer.auth_max_failures).map_or(10, |n| n.0),
        auth_failure_window: duration(&layer.auth_failure_window, minutes(1)),
        digitalocean: value(&layer.digitalocean).map_or_else(Default::default, resolve_do),
        install: value(&layer.install).and_then(|install| {
            Some(InstallConfig {
                citrusd_url: value(&install.citrusd_url)?.0.clone(),
                citrusd_sha256: value(&install.citrusd_sha256)?.0.clone(),
            })
        }),
        local_agent: value(&layer.local_agent).and_then(|local| {
            let id = value(&local.id)?.0.clone();
            Some(LocalAgentConfig {
                name: value(&local.name).cloned().unwrap_or_else(|| id.clone()),
                id,
                key_file: base.join(value(&local.key_file)?),
            })
        }),
        releases_dir,
        max_release_size: value(&layer.max_release_size).map_or(64 << 20, |s| s.0),
        host_profile: value(&layer.host_profile).map(|file| base.join(file)),
    }
}

fn resolve_do(layer: &DigitalOceanLayer) -> DigitalOceanConfig {
    let d = DigitalOceanConfig::default();
    DigitalOceanConfig {
        api_base: value(&layer.api_base).map_or(d.api_base, |u| u.0.clone()),
        region: or(&layer.region, d.region),
        size: or(&layer.size, d.size),
        image: or(&layer.image, d.image),
        backups: or(&layer.backups, d.backups),
        ipv6: or(&layer.ipv6, d.ipv6),
        monitoring: or(&layer.monitoring, d.monitoring),
        tags: or(&layer.tags, d.tags),
        poll_interval: duration(&layer.poll_interval, d.poll_interval),
        timeout: duration(&layer.timeout, d.timeout),
        attempts: value(&layer.attempts).map_or(d.attempts, |n| n.0),
    }
}

const HTTP_SCHEMES: Schemes = &[("http", 80), ("https", 443)];

/// `public_url`: http(s), stored without a trailing `/`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PublicUrl(pub String);

impl Scalar for PublicUrl {
    const EXPECTING: &'static str = "an http:// or https:// URL";
    fn from_text(s: &str) -> Result<Self, String> {
        let hint = r#"e.g. "https://engine.example.com""#;
        let url = Url::parse(s, HTTP_SCHEMES, hint)
            .map_err(|why| format!("invalid public URL {s:?}: {why}"))?;
        let path = url
            .path()
            .map_err(|why| format!("invalid public URL {s:?}: {why}"))?;
        if s.contains(['?', '#']) {
            return Err(format!(
                "invalid public URL {s:?}: no query or fragment, {hint}"
            ));
        }
        let path = path.trim_end_matches('/');
        Ok(Self(format!("{}://{}{path}", url.scheme, url.authority())))
    }
}

/// An http(s) URL kept as written (minus a trailing `/`): `api_base`, `citrusd_url`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ApiBase(pub String);

impl Scalar for ApiBase {
    const EXPECTING: &'static str = "an http:// or https:// URL";
    fn from_text(s: &str) -> Result<Self, String> {
        Url::parse(s, HTTP_SCHEMES, r#"e.g. "https://api.digitalocean.com/v2""#)
            .map_err(|why| format!("invalid URL {s:?}: {why}"))?;
        if let Some(c) = s
            .chars()
            .find(|c| matches!(c, '\'' | '"' | '`' | '$' | '\\'))
        {
            return Err(format!("invalid URL {s:?}: unexpected character {c:?}"));
        }
        Ok(Self(s.trim_end_matches('/').to_owned()))
    }
}

/// A SHA-256 digest in hex.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sha256Hex(pub String);

impl Scalar for Sha256Hex {
    const EXPECTING: &'static str = "64 hex digits";
    fn from_text(s: &str) -> Result<Self, String> {
        match s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            true => Ok(Self(s.to_ascii_lowercase())),
            false => Err(format!(
                "invalid SHA-256 {s:?}: expected 64 hex digits (the output of `sha256sum citrusd`)"
            )),
        }
    }
}

/// `database_url`: `sqlite://PATH` (relative to the config file until resolved) or
/// `postgres://…`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct DatabaseUrl(pub Database);

impl Scalar for DatabaseUrl {
    const EXPECTING: &'static str = "a database URL";
    fn from_text(s: &str) -> Result<Self, String> {
        let hint = r#"use "sqlite://state/engine.db" or "postgres://user@host/db""#;
        check_chars(s).map_err(|why| format!("invalid database URL: {why}"))?;
        if let Some(file) = s
            .strip_prefix("sqlite://")
            .or_else(|| s.strip_prefix("sqlite:"))
        {
            let file = file.split('?').next().unwrap_or_default();
            if file.is_empty() || file == ":memory:" {
                return Err(format!(
                    "invalid database URL: no file after `sqlite:`; {hint} (the store must outlive the engine)"
                ));
            }
            return Ok(Self(Database::Sqlite(PathBuf::from(file))));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Self(Database::Postgres(s.to_owned())));
        }
        // The URL may hold a password: do not echo it.
        let scheme = s.split(':').next().unwrap_or_default();
        Err(format!(
            "unsupported database URL scheme `{scheme}`; {hint}"
        ))
    }
}

scalar_deserialize!(PublicUrl, ApiBase, Sha256Hex, DatabaseUrl);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<EngineConfig, String> {
        EngineConfig::parse(text, Path::new("/etc/citrus/engine.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.public_url, "http://127.0.0.1:8080");
        assert_eq!(
            c.database,
            Database::Sqlite("/etc/citrus/state/engine.db".into())
        );
        assert_eq!(c.agent_connect_timeout, Duration::from_secs(600));
        assert_eq!(c.enroll_token_ttl, Duration::from_secs(1800));
        assert_eq!(c.status_history_retention, Duration::from_secs(7 * 86400));
        assert_eq!(c.digitalocean, DigitalOceanConfig::default());
        assert_eq!(c.digitalocean.tags, ["citrus-host"]);
        assert_eq!(c.max_frame, 1 << 20);
        assert!(c.install.is_none() && c.local_agent.is_none());
    }

    #[test]
    fn full() {
        let c = parse(
            r#"
listen = "0.0.0.0:9000"
public_url = "https://engine.example.com/"
database_url = "sqlite://db/e.db"
admin_token_file = "admin.token"
agent_connect_timeout = "5m"
enroll_token_ttl = "10m"
status_history_retention = "2d"
status_interval = "5s"
command_timeout = "1m"
max_frame = 65536
[digitalocean]
api_base = "http://127.0.0.1:9/v2/"
region = "ams3"
tags = ["a", "b"]
backups = true
poll_interval = "1s"
[install]
citrusd_url = "https://releases.example.com/citrusd"
citrusd_sha256 = "ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
[local_agent]
id = "local"
key_file = "../keys/agent.key"
"#,
        )
        .unwrap();
        assert_eq!(c.public_url, "https://engine.example.com");
        assert_eq!(c.database, Database::Sqlite("/etc/citrus/db/e.db".into()));
        assert_eq!(
            c.admin_token_file.unwrap(),
            Path::new("/etc/citrus/admin.token")
        );
        assert_eq!(c.status_interval, Duration::from_secs(5));
        assert_eq!(c.max_frame, 65536);
        assert_eq!(c.digitalocean.api_base, "http://127.0.0.1:9/v2");
        assert_eq!(c.digitalocean.region, "ams3");
        assert_eq!(c.digitalocean.size, "s-1vcpu-512mb-10gb");
        assert!(c.digitalocean.backups);
        let install = c.install.unwrap();
        assert!(install.citrusd_sha256.starts_with("abcdef0123"));
        let local = c.local_agent.unwrap();
        assert_eq!(local.name, "local");
        assert_eq!(local.key_file, Path::new("/etc/citrus/../keys/agent.key"));
    }

    #[test]
    fn releases_dir_and_max_release_size() {
        let c = parse("").unwrap();
        assert_eq!(c.releases_dir, Path::new("/etc/citrus/state/releases"));
        assert_eq!(c.max_release_size, 64 << 20);
        let c = parse("database_url = \"postgres://db/citrus\"").unwrap();
        assert_eq!(c.releases_dir, Path::new("/etc/citrus/state/releases"));
        let c = parse("database_url = \"sqlite:///var/lib/citrus/e.db\"").unwrap();
        assert_eq!(c.releases_dir, Path::new("/var/lib/citrus/releases"));
        let c = parse("releases_dir = \"/srv/rel\"\nmax_release_size = \"100M\"").unwrap();
        assert_eq!(c.releases_dir, Path::new("/srv/rel"));
        assert_eq!(c.max_release_size, 100 << 20);
        let e = parse("max_release_size = \"10K\"").unwrap_err();
        assert!(e.contains("below 1 MiB"), "{e}");
    }

    #[test]
    fn postgres_url_is_kept_but_not_shown() {
        let c = parse(r#"database_url = "postgres://citrus:hunter2@db/citrus""#).unwrap();
        assert_eq!(
            c.database,
            Database::Postgres("postgres://citrus:hunter2@db/citrus".into())
        );
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn errors_name_line_and_key() {
        let err =
            parse("listen = \"nope\"\nstatus_intervall = \"5s\"\n[digitalocean]\nregoin = \"x\"\n")
                .unwrap_err();
        assert!(err.contains("engine.toml:1:10: listen:"), "{err}");
        assert!(
            err.contains("2:1: status_intervall: unknown key `status_intervall`; did you mean `status_interval`?"),
            "{err}"
        );
        assert!(err.contains("4:1: digitalocean.regoin"), "{err}");
        let err = parse(r#"database_url = "mysql://u:pw@h/db""#).unwrap_err();
        assert!(
            err.contains("unsupported database URL scheme `mysql`"),
            "{err}"
        );
        assert!(!err.contains("pw@"), "{err}");
        let err = parse("[install]\ncitrusd_sha256 = \"abc\"").unwrap_err();
        assert!(err.contains("64 hex digits"), "{err}");
        let err = parse("[local_agent]\nid = \"x\"").unwrap_err();
        assert!(err.contains("has no `key_file`"), "{err}");
        let err = parse(r#"public_url = "ftp://x""#).unwrap_err();
        assert!(err.contains("unsupported scheme"), "{err}");
        let err = parse(r#"database_url = "sqlite::memory:""#).unwrap_err();
        assert!(err.contains("no file"), "{err}");
    }
}
