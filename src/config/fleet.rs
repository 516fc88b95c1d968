//! The fleet agent (`[fleet]`): how citrusd reaches its engine, and the commands it runs for it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::diag::Diagnostics;
use super::probe::{check_chars, Schemes, Url};
use super::schema::{layer, value, Field, Section};
use super::units::{scalar_deserialize, PositiveDuration, Scalar};
use super::validate::{check_argv, deserialize_argv, is_identifier, CommandValue};

/// `[fleet]`: the agent that connects citrusd to a fleet engine.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetConfig {
    /// The engine's agent endpoint: a `ws://` or `wss://` URL, normalised (scheme lowercased,
    /// default port left out, path at least `/`).
    pub engine_url: String,
    /// The engine's enrolment endpoint derived from `engine_url`: ws→http, wss→https, same host
    /// and port, path `/agent/enroll`.
    pub enroll_url: String,
    /// Where the engine serves releases, derived like `enroll_url`: path `/releases/`, to which
    /// a release's SHA-256 is appended.
    pub releases_url: String,
    /// This agent's id: 1 to 64 letters, digits, `_`, `.` or `-`.
    pub agent_id: String,
    /// The agent's key, absolute.
    pub key_file: PathBuf,
    /// Token for enrolling with the engine: non-empty, no whitespace or control characters.
    pub enroll_token: Option<Secret>,
    /// Extra CA certificates trusted for a `wss://` engine, absolute.
    pub ca_file: Option<PathBuf>,
    /// Time between status reports; more than zero.
    pub status_interval: Duration,
    /// Base of the reconnection backoff; more than zero.
    pub reconnect_delay: Duration,
    /// `[fleet.sites]`.
    pub sites: SiteTemplates,
    /// `[fleet.update]`, if the file has one.
    pub update: Option<UpdateConfig>,
}

/// A secret string whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `[fleet.sites]`: argv templates, each with `{domain}` in at least one element.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SiteTemplates {
    /// Creates a site.
    pub create: Option<Vec<String>>,
    /// Deletes a site.
    pub delete: Option<Vec<String>>,
}

impl SiteTemplates {
    /// The argv for `domain`: every "{domain}" inside each element replaced (the domain stays
    /// inside one element; no shell). `domain` is not checked here.
    pub fn render(template: &[String], domain: &str) -> Vec<String> {
        template
            .iter()
            .map(|arg| arg.replace(DOMAIN, domain))
            .collect()
    }
}

/// `[fleet.update]`: how citrus updates itself. Releases from the engine need none of it; the
/// git-checkout path needs `repo`.
#[derive(Clone, Debug, PartialEq)]
pub struct UpdateConfig {
    /// The git checkout, absolute; `None` when only release updates are used.
    pub repo: Option<PathBuf>,
    /// The remote to pull from.
    pub remote: String,
    /// The branch to pull.
    pub branch: String,
    /// Run (argv, no shell, in `repo`) after the checkout moved, before re-executing.
    pub build: Option<Vec<String>>,
    /// The citrusd the build made (absolute, or relative to `repo`): installed in place of the
    /// running binary (kept as `citrusd.prev`) before re-executing.
    pub binary: Option<PathBuf>,
    /// How long a re-executed citrusd has to reconnect to the engine after an update before it
    /// goes back to the previous version on its own (default 2 minutes).
    pub confirm_timeout: Duration,
}

const DOMAIN: &str = "{domain}";
const TEMPLATE_EXAMPLE: &str = r#"["ee", "site", "create", "{domain}"]"#;
const ENGINE_HINT: &str = r#"use ws:// or wss://, e.g. "wss://engine.example.com/agent""#;
const WS_SCHEMES: Schemes = &[("ws", 80), ("wss", 443)];

/// `engine_url`, normalised, with the enrolment URL derived from it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct EngineUrl {
    pub url: String,
    pub enroll_url: String,
    pub releases_url: String,
    /// `wss://`.
    pub tls: bool,
}

impl Scalar for EngineUrl {
    const EXPECTING: &'static str = "a wss:// URL";
    fn from_text(s: &str) -> Result<Self, String> {
        let invalid = |why: String| format!("invalid engine URL {s:?}: {why}");
        let url = Url::parse(s, WS_SCHEMES, ENGINE_HINT).map_err(invalid)?;
        let path = url.path().map_err(invalid)?;
        let tls = url.scheme == "wss";
        // ws and wss have the default ports of http and https.
        let (authority, http) = (url.authority(), if tls { "https" } else { "http" });
        Ok(Self {
            url: format!("{}://{authority}{path}", url.scheme),
            enroll_url: format!("{http}://{authority}/agent/enroll"),
            releases_url: format!("{http}://{authority}/releases/"),
            tls,
        })
    }
}

/// `agent_id`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct AgentId(pub String);

impl Scalar for AgentId {
    const EXPECTING: &'static str = "a string";
    fn from_text(s: &str) -> Result<Self, String> {
        match is_identifier(s) {
            true => Ok(Self(s.to_owned())),
            false => Err(format!(
                "invalid agent id {s:?}: use 1 to 64 letters, digits, `_`, `.` or `-`"
            )),
        }
    }
}

/// `enroll_token`; messages never show it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct EnrollToken(pub Secret);

impl Scalar for EnrollToken {
    const EXPECTING: &'static str = "a string";
    fn from_text(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("the enroll token is empty; give the token or remove the key".to_owned());
        }
        check_chars(s)
            .map(|()| Self(Secret::new(s)))
            .map_err(|why| format!("invalid enroll token: {why}"))
    }
}

/// A git remote or branch: not empty, no whitespace, not an option.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GitName(pub String);

impl Scalar for GitName {
    const EXPECTING: &'static str = "a string";
    fn from_text(s: &str) -> Result<Self, String> {
        let invalid = |why: &str| format!("invalid git name {s:?}: {why}");
        match s {
            "" => Err(invalid("it is empty")),
            _ if s.starts_with('-') => Err(invalid("it cannot start with `-`")),
            _ => check_chars(s)
                .map(|()| Self(s.to_owned()))
                .map_err(|why| invalid(&why)),
        }
    }
}

scalar_deserialize!(EngineUrl, AgentId, EnrollToken, GitName);

/// A `[fleet.sites]` template: an argv written as a command is, using `{domain}`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SiteTemplate(pub Vec<String>);

impl<'de> Deserialize<'de> for SiteTemplate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_argv(d, |argv| {
            check_argv(argv, TEMPLATE_EXAMPLE)?;
            match argv.iter().any(|arg| arg.contains(DOMAIN)) {
                true => Ok(()),
                false => Err(format!(
                    "the template does not use {DOMAIN}; put it where the site's domain goes, \
                     e.g. {TEMPLATE_EXAMPLE}"
                )),
            }
        })
        .map(Self)
    }
}

layer!(
    /// `[fleet]`.
    FleetLayer {
        engine_url: EngineUrl,
        agent_id: AgentId,
        key_file: PathBuf,
        enroll_token: EnrollToken,
        ca_file: PathBuf,
        status_interval: PositiveDuration,
        reconnect_delay: PositiveDuration,
        sites: SitesLayer,
        update: UpdateLayer,
    }
    check: check_fleet
);

fn check_fleet(fleet: &FleetLayer, diags: &mut Diagnostics<'_>, section: &Section<'_>) {
    let required = [
        (
            "engine_url",
            r#"engine_url = "wss://engine.example.com/agent""#,
        ),
        ("agent_id", r#"agent_id = "web-1""#),
        ("key_file", r#"key_file = "/etc/citrus/agent.key""#),
    ];
    section.require(diags, "[fleet]", &required);
    if let (Some(url), Some(ca_file)) = (value(&fleet.engine_url), &fleet.ca_file) {
        if !url.tls {
            diags.error(
                ca_file.key.clone(),
                format!("{}.ca_file", section.path),
                "`ca_file` is for TLS, but `engine_url` is ws://; use wss://",
            );
        }
    }
}

layer!(
    /// `[fleet.sites]`.
    SitesLayer {
        create: SiteTemplate,
        delete: SiteTemplate,
    }
);

layer!(
    /// `[fleet.update]`.
    UpdateLayer {
        repo: PathBuf,
        remote: GitName,
        branch: GitName,
        build: CommandValue,
        binary: PathBuf,
        confirm_timeout: PositiveDuration,
    }
    check: check_update
);

/// `repo` is needed by every key of the git-checkout path; `confirm_timeout` alone (for release
/// updates) needs none.
fn check_update(_: &UpdateLayer, diags: &mut Diagnostics<'_>, section: &Section<'_>) {
    let git_keys = ["remote", "branch", "build", "binary"];
    if git_keys.iter().any(|k| section.key(k).is_some()) {
        section.require(
            diags,
            "[fleet.update]",
            &[("repo", r#"repo = "/opt/citrus""#)],
        );
    }
}

/// Builds `[fleet]` from its validated layer; `None` if validation failed.
pub(super) fn resolve(fleet: &FleetLayer, base: &Path) -> Option<FleetConfig> {
    let engine = value(&fleet.engine_url)?;
    let template = |field: &Option<Field<SiteTemplate>>| value(field).map(|t| t.0.clone());
    let sites = value(&fleet.sites).map(|sites| SiteTemplates {
        create: template(&sites.create),
        delete: template(&sites.delete),
    });
    Some(FleetConfig {
        engine_url: engine.url.clone(),
        enroll_url: engine.enroll_url.clone(),
        releases_url: engine.releases_url.clone(),
        agent_id: value(&fleet.agent_id)?.0.clone(),
        key_file: base.join(value(&fleet.key_file)?),
        enroll_token: value(&fleet.enroll_token).map(|token| token.0.clone()),
        ca_file: value(&fleet.ca_file).map(|file| base.join(file)),
        status_interval: value(&fleet.status_interval).map_or(Duration::from_secs(60), |d| d.0),
        reconnect_delay: value(&fleet.reconnect_delay).map_or(Duration::from_secs(5), |d| d.0),
        sites: sites.unwrap_or_default(),
        update: value(&fleet.update).and_then(|update| resolve_update(update, base)),
    })
}

fn resolve_update(update: &UpdateLayer, base: &Path) -> Option<UpdateConfig> {
    let name = |field: &Option<Field<GitName>>, default: &str| {
        value(field).map_or_else(|| default.to_owned(), |name| name.0.clone())
    };
    let repo = value(&update.repo).map(|r| base.join(r));
    Some(UpdateConfig {
        binary: value(&update.binary).and_then(|b| Some(repo.as_ref()?.join(b))),
        build: value(&update.build).map(|b| b.0.clone()),
        repo,
        remote: name(&update.remote, "origin"),
        branch: name(&update.branch, "main"),
        confirm_timeout: value(&update.confirm_timeout).map_or(Duration::from_secs(120), |d| d.0),
    })
}
