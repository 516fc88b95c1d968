//! An app's deployments (`[apps.NAME.deploy]`, SPEC 2.5): where releases live, where the source
//! comes from, how it is built, what is shared between releases, how many are kept, and the probe a
//! new release must pass.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::diag::Diagnostics;
use super::fleet::GitName;
use super::probe::{
    check_chars, HealthConfig, HttpProbe, ProbeTarget, ReadyCheck, ReadyConfig, TcpProbe,
};
use super::schema::{exactly_one, layer, value, Field, Section};
use super::units::{scalar_deserialize, Bounded, PositiveDuration, Scalar};
use super::validate::CommandValue;

/// The longest `build_timeout`, `health.timeout` accepted: a day.
pub const MAX_DEPLOY_DURATION: Duration = Duration::from_secs(86_400);
/// The most `shared` entries.
pub const MAX_SHARED: usize = 64;
/// Default `keep`.
pub const DEFAULT_KEEP: u32 = 5;
/// Default `build_timeout`.
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a new release gets to pass its health probe unless `health.timeout` says otherwise.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// `[apps.NAME.deploy]`, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct DeployConfig {
    /// The app's deploy root, absolute: `releases/`, `shared/` and `current` live here.
    pub root: PathBuf,
    /// Where each release comes from.
    pub source: DeploySource,
    /// Run in the new release directory with the app's environment; no shell.
    pub build: Option<Vec<String>>,
    /// A build running longer than this is stopped and the deployment fails.
    pub build_timeout: Duration,
    /// Paths relative to a release kept in `<root>/shared/` and linked into every release.
    pub shared: Vec<PathBuf>,
    /// Completed releases kept (the current and the previous one are never deleted).
    pub keep: u32,
    /// What a new release must pass after the restart: `health`, else the app's http/tcp `ready`
    /// probe, else its `health` probe; `None`: the instances coming online is enough.
    pub health: Option<DeployHealth>,
}

impl DeployConfig {
    /// `<root>/current`, the symlink the app runs from.
    pub fn current(&self) -> PathBuf {
        self.root.join("current")
    }

    /// `<root>/releases`.
    pub fn releases(&self) -> PathBuf {
        self.root.join("releases")
    }

    /// `<root>/shared`.
    pub fn shared_dir(&self) -> PathBuf {
        self.root.join("shared")
    }
}

/// Where a release's files come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeploySource {
    /// A git repository: an `https://` or `file://` URL, or an absolute local path.
    Git { url: String, branch: String },
    /// A directory tree, copied.
    Path(PathBuf),
    /// A `.tar.gz` file, unpacked.
    Archive(PathBuf),
}

impl DeploySource {
    /// For messages: `git URL (branch B)`, `path DIR`, `archive FILE`.
    pub fn describe(&self) -> String {
        match self {
            DeploySource::Git { url, branch } => format!("git {url} (branch {branch})"),
            DeploySource::Path(dir) => format!("path {}", dir.display()),
            DeploySource::Archive(file) => format!("archive {}", file.display()),
        }
    }
}

/// The probe a new release must pass, and for how long it may try.
#[derive(Clone, Debug, PartialEq)]
pub struct DeployHealth {
    /// What to probe.
    pub target: ProbeTarget,
    /// The probe must pass within this long after the restart.
    pub timeout: Duration,
    /// Time between attempts.
    pub interval: Duration,
}

/// `source.git`: a repository URL without credentials, or a local path.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GitUrl(pub String);

impl Scalar for GitUrl {
    const EXPECTING: &'static str = "a git URL (https://, file://) or a local path";
    fn from_text(s: &str) -> Result<Self, String> {
        let invalid = |why: &str| format!("invalid git source {s:?}: {why}");
        check_chars(s).map_err(|why| invalid(&why))?;
        if s.is_empty() {
            return Err(invalid("it is empty"));
        }
        if s.starts_with('-') {
            return Err(invalid("it cannot start with `-`"));
        }
        match s.split_once("://") {
            Some((scheme, rest)) => {
                let scheme = scheme.to_ascii_lowercase();
                if !matches!(scheme.as_str(), "https" | "file") {
                    return Err(invalid(&format!(
                        "unsupported scheme `{scheme}`: use https:// or file:// (ssh is not supported)"
                    )));
                }
                let authority = rest.split('/').next().unwrap_or_default();
                if authority.contains('@') {
                    return Err(invalid(
                        "remove the `user:password@`: credentials do not belong in the URL",
                    ));
                }
                if scheme != "file" && authority.is_empty() {
                    return Err(invalid("the host is missing"));
                }
            }
            // `git@host:repo.git` is ssh in scp form.
            None if s.contains(':') && !s.starts_with(['/', '.']) => {
                return Err(invalid(
                    "ssh sources are not supported: use an https:// URL or a local path",
                ))
            }
            None => {}
        }
        Ok(Self(s.to_owned()))
    }
}

/// A `shared` entry: a relative path of normal components, at most 255 bytes.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SharedPath(pub PathBuf);

impl Scalar for SharedPath {
    const EXPECTING: &'static str = r#"a path relative to the release, e.g. "storage""#;
    fn from_text(s: &str) -> Result<Self, String> {
        let invalid = |why: &str| format!("invalid shared path {s:?}: {why}");
        check_chars(s).map_err(|why| invalid(&why))?;
        if s.is_empty() || s.len() > 255 {
            return Err(invalid("give 1 to 255 bytes"));
        }
        let path = Path::new(s);
        if !path.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(invalid(
                "use a path inside the release: relative, without `..` or `.`",
            ));
        }
        Ok(Self(path.components().collect()))
    }
}

scalar_deserialize!(GitUrl, SharedPath);

layer!(
    /// An app's `[deploy]` table.
    DeployLayer {
        root: PathBuf,
        source: SourceLayer,
        build: CommandValue,
        build_timeout: PositiveDuration,
        shared: Vec<SharedPath>,
        keep: Bounded<u32, 1, 100>,
        health: DeployHealthLayer,
    }
    check: check_deploy
);

layer!(
    /// `source = { … }` of `[deploy]`.
    SourceLayer {
        git: GitUrl,
        branch: GitName,
        path: PathBuf,
        archive: PathBuf,
    }
    check: check_source
);

layer!(
    /// `health = { … }` of `[deploy]`.
    DeployHealthLayer {
        http: HttpProbe,
        tcp: TcpProbe,
        timeout: PositiveDuration,
        interval: PositiveDuration,
    }
    check: check_deploy_health
);

/// Checks within `[apps.NAME.deploy]`: its required keys and the `shared` list.
fn check_deploy(deploy: &DeployLayer, diags: &mut Diagnostics<'_>, section: &Section<'_>) {
    let required = [
        ("root", r#"root = "/var/www/web""#),
        (
            "source",
            r#"source = { git = "https://example.com/web.git", branch = "main" }"#,
        ),
    ];
    section.require(diags, "[deploy]", &required);
    if let Some(shared) = &deploy.shared {
        if shared.value.len() > MAX_SHARED {
            let message = format!(
                "{} shared paths; at most {MAX_SHARED} are allowed",
                shared.value.len()
            );
            diags.error(
                shared.span.clone(),
                format!("{}.shared", section.path),
                message,
            );
        }
        for (i, path) in shared.value.iter().enumerate() {
            let earlier = &shared.value[..i];
            if let Some(other) = earlier
                .iter()
                .find(|p| path.0.starts_with(&p.0) || p.0.starts_with(&path.0))
            {
                let message = format!(
                    "shared paths {:?} and {:?} overlap; list each path once",
                    other.0, path.0
                );
                diags.error(
                    shared.span.clone(),
                    format!("{}.shared", section.path),
                    message,
                );
            }
        }
    }
    let too_long = |field: &Option<Field<PositiveDuration>>, key: &str| {
        field
            .as_ref()
            .filter(|f| f.value.0 > MAX_DEPLOY_DURATION)
            .map(|f| (f.span.clone(), key.to_owned()))
    };
    let health_timeout = deploy
        .health
        .as_ref()
        .and_then(|h| too_long(&h.value.timeout, "health.timeout"));
    for (span, key) in too_long(&deploy.build_timeout, "build_timeout")
        .into_iter()
        .chain(health_timeout)
    {
        let message = "at most a day (\"24h\") is allowed";
        diags.error(span, format!("{}.{key}", section.path), message);
    }
}

/// Checks within `source = { … }`: exactly one kind, `branch` only with `git`.
fn check_source(source: &SourceLayer, diags: &mut Diagnostics<'_>, section: &Section<'_>) {
    let example = r#"source = { git = "https://example.com/web.git", branch = "main" }"#;
    let kind = exactly_one(diags, section, &["git", "path", "archive"], example);
    if let (Some(kind), Some(branch)) = (kind, &source.branch) {
        if kind != "git" {
            let message = format!("`branch` is for a git source; a {kind} source has none");
            diags.error(
                branch.key.clone(),
                format!("{}.branch", section.path),
                message,
            );
        }
    }
}

/// Checks within `health = { … }` of `[deploy]`: exactly one probe.
fn check_deploy_health(_: &DeployHealthLayer, diags: &mut Diagnostics<'_>, section: &Section<'_>) {
    let example = r#"health = { http = "http://127.0.0.1:3000/health" }"#;
    exactly_one(diags, section, &["http", "tcp"], example);
}

/// Builds `[deploy]` from its validated layer and the app's own probes (its resolved `ready`
/// and `health`); `None` if validation failed.
pub(super) fn resolve(
    layer: &DeployLayer,
    base: &Path,
    ready: Option<&ReadyConfig>,
    health: Option<&HealthConfig>,
) -> Option<DeployConfig> {
    let root = base.join(value(&layer.root)?);
    let source = value(&layer.source)?;
    let source = if let Some(url) = value(&source.git) {
        // A relative local repository path is relative to the config file, like other paths.
        let url = match url.0.contains("://") || Path::new(&url.0).is_absolute() {
            true => url.0.clone(),
            false => base.join(&url.0).to_string_lossy().into_owned(),
        };
        let branch = value(&source.branch).map_or_else(|| "main".to_owned(), |b| b.0.clone());
        DeploySource::Git { url, branch }
    } else if let Some(dir) = value(&source.path) {
        DeploySource::Path(base.join(dir))
    } else {
        DeploySource::Archive(base.join(value(&source.archive)?))
    };
    let probe = match value(&layer.health) {
        Some(h) => Some(DeployHealth {
            target: value(&h.http)
                .map(|p| p.0.clone())
                .or_else(|| value(&h.tcp).map(|p| p.0.clone()))?,
            timeout: value(&h.timeout).map_or(DEFAULT_HEALTH_TIMEOUT, |d| d.0),
            interval: value(&h.interval).map_or(Duration::from_millis(200), |d| d.0),
        }),
        None => app_probe(ready, health),
    };
    Some(DeployConfig {
        root,
        source,
        build: value(&layer.build).map(|b| b.0.clone()),
        build_timeout: value(&layer.build_timeout).map_or(DEFAULT_BUILD_TIMEOUT, |d| d.0),
        shared: value(&layer.shared)
            .map(|s| s.iter().map(|p| p.0.clone()).collect())
            .unwrap_or_default(),
        keep: value(&layer.keep).map_or(DEFAULT_KEEP, |k| k.0),
        health: probe,
    })
}

/// The app's http/tcp `ready` probe, else its `health` probe, as a deploy health check.
fn app_probe(ready: Option<&ReadyConfig>, health: Option<&HealthConfig>) -> Option<DeployHealth> {
    let ready = ready.and_then(|r| match &r.check {
        ReadyCheck::Probe(target) => Some(DeployHealth {
            target: target.clone(),
            timeout: r.timeout.max(DEFAULT_HEALTH_TIMEOUT),
            interval: r.interval,
        }),
        ReadyCheck::Notify { .. } => None,
    });
    ready.or_else(|| {
        health.map(|h| DeployHealth {
            target: h.target.clone(),
            timeout: DEFAULT_HEALTH_TIMEOUT,
            interval: Duration::from_millis(200),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_urls() {
        for ok in [
            "https://example.com/web.git",
            "file:///srv/git/web.git",
            "/srv/git/web.git",
            "../repos/web",
        ] {
            assert_eq!(GitUrl::from_text(ok).map(|u| u.0).as_deref(), Ok(ok));
        }
        for (bad, part) in [
            ("ssh://git@example.com/web.git", "unsupported scheme `ssh`"),
            ("http://example.com/web.git", "unsupported scheme `http`"),
            ("git@github.com:me/web.git", "ssh sources are not supported"),
            ("https://user:tok@example.com/x.git", "credentials"),
            ("https:///x.git", "the host is missing"),
            ("--upload-pack=sh", "cannot start with `-`"),
            ("https://a b/x", "unexpected character"),
            ("", "it is empty"),
        ] {
            let err = GitUrl::from_text(bad).unwrap_err();
            assert!(err.contains(part), "{bad}: {err}");
        }
    }

    #[test]
    fn shared_paths() {
        assert_eq!(
            SharedPath::from_text("storage/app").unwrap().0,
            PathBuf::from("storage/app")
        );
        assert_eq!(
            SharedPath::from_text(".env").unwrap().0,
            PathBuf::from(".env")
        );
        for bad in ["", "/etc", "../x", "a/../../b", "./x", "a\nb"] {
            assert!(SharedPath::from_text(bad).is_err(), "{bad:?}");
        }
    }
}
