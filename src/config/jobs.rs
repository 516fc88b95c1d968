//! Scheduled jobs (`[jobs.NAME]`) and notifications (`[notify]`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use toml::Spanned;

use super::app::{default_inherit_env, resolve_program};
use super::cron::{CronSchedule, Timezone};
use super::diag::Diagnostics;
use super::probe::WebhookUrl;
use super::schema::{layer, value, Field, NonEmpty, Section};
use super::units::{names, scalar_deserialize, Bounded, Choice, Named, PositiveDuration, Scalar};
use super::validate::{CommandValue, EnvTable};

/// One `[jobs.NAME]`.
#[derive(Clone, Debug, PartialEq)]
pub struct JobConfig {
    /// The job's name (same rules as app names).
    pub name: String,
    /// When it runs.
    pub schedule: CronSchedule,
    /// A run still going after this is killed.
    pub timeout: Duration,
    /// What it does.
    pub kind: JobKind,
}

/// What a job does.
#[derive(Clone, Debug, PartialEq)]
pub enum JobKind {
    /// Probes the apps' `health` checks.
    Health {
        /// Apps to check; empty means every app.
        apps: Vec<String>,
    },
    /// Warns when a file system is fuller than `threshold`.
    Disk {
        /// Any path on each file system to check, absolute.
        paths: Vec<PathBuf>,
        /// Percent of the space used, 1 to 100.
        threshold: u8,
    },
    /// Deletes old files from log directories.
    LogCleanup {
        /// Directories searched recursively (never through a symlink), absolute; never empty.
        dirs: Vec<PathBuf>,
        /// Which file names; see [`glob_match`].
        pattern: String,
        /// Files last modified longer ago than this are deleted; more than zero.
        max_age: Duration,
    },
    /// Saves the process list, as `citrusctl save` does.
    Save,
    /// Checks every app with `[deploy]`: `current` and the shared links repaired, unfinished
    /// deployments whose task died taken up again.
    DeployReconcile,
    /// Runs a program.
    Command {
        /// Program and arguments; never empty. A relative program path containing `/` has been
        /// resolved against `cwd`.
        command: Vec<String>,
        /// Environment variables set.
        env: BTreeMap<String, String>,
        /// Working directory, absolute.
        cwd: PathBuf,
        /// User to run as.
        user: Option<String>,
        /// Variables passed through from citrusd's own environment.
        inherit_env: Vec<String>,
    },
}

impl JobKind {
    /// The kind as written in the config: `"health"`, `"disk"`, `"log-cleanup"`, `"save"` or
    /// `"command"`.
    pub fn name(&self) -> &'static str {
        let tag = match self {
            JobKind::Health { .. } => JobKindTag::Health,
            JobKind::Disk { .. } => JobKindTag::Disk,
            JobKind::LogCleanup { .. } => JobKindTag::LogCleanup,
            JobKind::Save => JobKindTag::Save,
            JobKind::DeployReconcile => JobKindTag::DeployReconcile,
            JobKind::Command { .. } => JobKindTag::Command,
        };
        tag.name()
    }
}

/// Something worth a notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An app stopped restarting after too many crashes.
    Errored,
    /// An app was restarted for exceeding `max_memory_restart`.
    MemoryRestart,
    /// An app failed its health check.
    HealthFailed,
    /// A disk job found a file system above its threshold.
    Disk,
    /// A job failed or timed out.
    JobFailed,
    /// A deployment failed or was rolled back, or `current` was repaired.
    Deploy,
    /// An app's log file was refused (a symlink at its path): its output is dropped.
    Log,
}

impl EventKind {
    /// Every event.
    pub const ALL: [EventKind; 7] = [
        EventKind::Errored,
        EventKind::MemoryRestart,
        EventKind::HealthFailed,
        EventKind::Disk,
        EventKind::JobFailed,
        EventKind::Deploy,
        EventKind::Log,
    ];

    /// The name used in the config and in serde: `"memory_restart"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Errored => "errored",
            EventKind::MemoryRestart => "memory_restart",
            EventKind::HealthFailed => "health_failed",
            EventKind::Disk => "disk",
            EventKind::JobFailed => "job_failed",
            EventKind::Deploy => "deploy",
            EventKind::Log => "log",
        }
    }
}

impl Named for EventKind {
    const WHAT: &'static str = "event";
    const ALL: &'static [Self] = &EventKind::ALL;
    fn name(self) -> &'static str {
        self.as_str()
    }
}

/// `[notify]`.
#[derive(Clone, Debug, PartialEq)]
pub struct NotifyConfig {
    /// Where to POST notifications: an `http://` or `https://` URL.
    pub webhook: Option<String>,
    /// Which events to send, each once, in the order written.
    pub events: Vec<EventKind>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            webhook: None,
            events: EventKind::ALL.to_vec(),
        }
    }
}

/// Whether the file name `name` matches the glob `pattern`: `*` matches any run of characters,
/// `?` any one, `[abc]`, `[a-z]` one of a set, `[!a-z]` (or `[^a-z]`) one not in it. A pattern
/// that is not valid matches nothing.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let Ok(tokens) = compile(pattern) else {
        return false;
    };
    let name: Vec<char> = name.chars().collect();
    // Backtracking over the last `*` only is enough: each `*` can absorb what an earlier one
    // would have.
    let (mut t, mut n) = (0, 0);
    let mut last_star = None;
    while n < name.len() {
        match tokens.get(t) {
            Some(Token::Star) => {
                last_star = Some((t, n));
                t += 1;
            }
            Some(token) if token.matches(name[n]) => (t, n) = (t + 1, n + 1),
            _ => match last_star {
                Some((star, from)) => {
                    (t, n) = (star + 1, from + 1);
                    last_star = Some((star, from + 1));
                }
                None => return false,
            },
        }
    }
    tokens[t..].iter().all(|token| matches!(token, Token::Star))
}

enum Token {
    Star,
    AnyChar,
    Char(char),
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    /// Whether this one-character token matches `c`.
    fn matches(&self, c: char) -> bool {
        match self {
            Token::Star | Token::AnyChar => true,
            Token::Char(own) => *own == c,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&c)) != *negated
            }
        }
    }
}

/// Parses a glob; the error says what is wrong.
fn compile(pattern: &str) -> Result<Vec<Token>, String> {
    if pattern.is_empty() {
        return Err("the pattern is empty".to_owned());
    }
    if pattern.contains('/') {
        return Err("the pattern matches file names, so it cannot contain `/`".to_owned());
    }
    let mut tokens = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '*' => Token::Star,
            '?' => Token::AnyChar,
            '[' => {
                let negated = chars.as_str().starts_with(['!', '^']);
                if negated {
                    chars.next();
                }
                let mut ranges = Vec::new();
                loop {
                    let lo = chars.next().ok_or("unclosed `[`")?;
                    // A `]` right after the `[` is a member, not the end.
                    if lo == ']' && !ranges.is_empty() {
                        break;
                    }
                    let mut ahead = chars.clone();
                    let hi = match (ahead.next(), ahead.next()) {
                        (Some('-'), Some(hi)) if hi != ']' => {
                            chars = ahead;
                            hi
                        }
                        _ => lo,
                    };
                    if hi < lo {
                        return Err(format!("the range `{lo}-{hi}` is backwards"));
                    }
                    ranges.push((lo, hi));
                }
                Token::Class { negated, ranges }
            }
            c => Token::Char(c),
        });
    }
    Ok(tokens)
}

/// `pattern`: a valid glob.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GlobPattern(pub String);

impl Scalar for GlobPattern {
    const EXPECTING: &'static str = r#"a file name pattern such as "*.log""#;
    fn from_text(s: &str) -> Result<Self, String> {
        compile(s)
            .map(|_| Self(s.to_owned()))
            .map_err(|why| format!("invalid pattern {s:?}: {why}"))
    }
}

scalar_deserialize!(GlobPattern);

layer!(
    /// `[jobs.NAME]`: the keys of every kind; [`JobKindTag::keys`] says which kind owns which.
    JobLayer {
        schedule: CronSchedule,
        kind: Choice<JobKindTag>,
        timezone: Choice<Timezone>,
        timeout: PositiveDuration,
        apps: Vec<Spanned<String>>,
        paths: NonEmpty<PathBuf>,
        threshold: Bounded<u8, 1, 100>,
        dirs: NonEmpty<PathBuf>,
        pattern: GlobPattern,
        max_age: PositiveDuration,
        command: CommandValue,
        env: EnvTable,
        cwd: PathBuf,
        user: String,
        inherit_env: Vec<String>,
    }
    check: check_job
);

/// A job's `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JobKindTag {
    Health,
    Disk,
    LogCleanup,
    Save,
    DeployReconcile,
    Command,
}

impl Named for JobKindTag {
    const WHAT: &'static str = "job kind";
    const ALL: &'static [Self] = &[
        JobKindTag::Health,
        JobKindTag::Disk,
        JobKindTag::LogCleanup,
        JobKindTag::Save,
        JobKindTag::DeployReconcile,
        JobKindTag::Command,
    ];
    fn name(self) -> &'static str {
        match self {
            JobKindTag::Health => "health",
            JobKindTag::Disk => "disk",
            JobKindTag::LogCleanup => "log-cleanup",
            JobKindTag::Save => "save",
            JobKindTag::DeployReconcile => "deploy-reconcile",
            JobKindTag::Command => "command",
        }
    }
}

impl JobKindTag {
    /// The keys only this kind has, each with an example if it is required.
    fn keys(self) -> &'static [(&'static str, Option<&'static str>)] {
        match self {
            JobKindTag::Health => &[("apps", None)],
            JobKindTag::Disk => &[("paths", None), ("threshold", None)],
            JobKindTag::LogCleanup => &[
                ("dirs", Some(r#"dirs = ["logs"]"#)),
                ("pattern", None),
                ("max_age", Some(r#"max_age = "7d""#)),
            ],
            JobKindTag::Save | JobKindTag::DeployReconcile => &[],
            JobKindTag::Command => &[
                ("command", Some(r#"command = ["/usr/local/bin/backup.sh"]"#)),
                ("env", None),
                ("cwd", None),
                ("user", None),
                ("inherit_env", None),
            ],
        }
    }

    /// The kind that `key` belongs to, if it is not common to all.
    fn owner(key: &str) -> Option<Self> {
        let owns = |kind: &Self| kind.keys().iter().any(|&(own, _)| own == key);
        Self::ALL.iter().copied().find(owns)
    }
}

fn check_job(job: &JobLayer, diags: &mut Diagnostics<'_>, section: &Section<'_>) {
    section.require(diags, "job", &[("schedule", r#"schedule = "0 3 * * *""#)]);
    let Some(kind) = &job.kind else {
        if section.key("kind").is_none() {
            let message = format!("job has no `kind`; add one of: {}", names::<JobKindTag>());
            section.error(diags, message);
        }
        return;
    };
    let kind = kind.value.0;
    for (key, span) in &section.keys {
        match JobKindTag::owner(key) {
            Some(owner) if owner != kind => diags.error(
                span.clone(),
                format!("{}.{key}", section.path),
                format!(
                    "`{key}` is not a key of kind \"{}\" (it belongs to kind \"{}\")",
                    kind.name(),
                    owner.name()
                ),
            ),
            _ => {}
        }
    }
    for &(key, required) in kind.keys() {
        if let (Some(example), None) = (required, section.key(key)) {
            let kind = kind.name();
            let message =
                format!("job has no `{key}`, which kind \"{kind}\" needs; add e.g. {example}");
            section.error(diags, message);
        }
    }
}

layer!(
    /// `[notify]`.
    NotifyLayer {
        webhook: WebhookUrl,
        events: Vec<Choice<EventKind>>,
    }
);

/// Builds a job from its validated layer; `None` if validation failed.
pub(super) fn resolve_job(name: &str, job: &JobLayer, base: &Path) -> Option<JobConfig> {
    let absolute = |list: &Option<Field<NonEmpty<PathBuf>>>| {
        value(list).map(|list| list.0.iter().map(|path| base.join(path)).collect())
    };
    let kind = match value(&job.kind)?.0 {
        JobKindTag::Health => JobKind::Health {
            apps: value(&job.apps)
                .into_iter()
                .flatten()
                .map(|app| app.get_ref().clone())
                .collect(),
        },
        JobKindTag::Disk => JobKind::Disk {
            paths: absolute(&job.paths).unwrap_or_else(|| vec![PathBuf::from("/")]),
            threshold: value(&job.threshold).map_or(80, |threshold| threshold.0),
        },
        JobKindTag::LogCleanup => JobKind::LogCleanup {
            dirs: absolute(&job.dirs)?,
            pattern: value(&job.pattern).map_or_else(|| "*.log".to_owned(), |p| p.0.clone()),
            max_age: value(&job.max_age)?.0,
        },
        JobKindTag::Save => JobKind::Save,
        JobKindTag::DeployReconcile => JobKind::DeployReconcile,
        JobKindTag::Command => {
            let cwd = value(&job.cwd).map_or_else(|| base.to_path_buf(), |cwd| base.join(cwd));
            let mut command = value(&job.command)?.0.clone();
            resolve_program(&mut command, &cwd);
            let env = value(&job.env).into_iter().flat_map(|env| &env.0);
            JobKind::Command {
                command,
                env: env
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect(),
                cwd,
                user: value(&job.user).cloned(),
                inherit_env: value(&job.inherit_env).map_or_else(default_inherit_env, Vec::clone),
            }
        }
    };
    let timezone = value(&job.timezone).map_or(Timezone::Local, |tz| tz.0);
    Some(JobConfig {
        name: name.to_owned(),
        schedule: value(&job.schedule)?.clone().in_zone(timezone),
        timeout: value(&job.timeout).map_or(Duration::from_secs(600), |timeout| timeout.0),
        kind,
    })
}

pub(super) fn resolve_notify(layer: &NotifyLayer) -> NotifyConfig {
    let events = value(&layer.events).map_or_else(
        || EventKind::ALL.to_vec(),
        |events| {
            let mut unique = Vec::new();
            for event in events {
                if !unique.contains(&event.0) {
                    unique.push(event.0);
                }
            }
            unique
        },
    );
    NotifyConfig {
        webhook: value(&layer.webhook).map(|url| url.0.clone()),
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::Layer;

    #[test]
    fn job_kind_keys_are_job_keys() {
        for kind in JobKindTag::ALL {
            for (key, _) in kind.keys() {
                assert!(JobLayer::KEYS.contains(key), "{key}");
                assert_eq!(JobKindTag::owner(key), Some(*kind), "{key}");
            }
        }
    }

    #[test]
    fn globs() {
        let cases = [
            ("*.log", "api.log", true),
            ("*.log", ".log", true),
            ("*.log", "api.log.1", false),
            ("*.log*", "api.log.1.gz", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*a*b*", "xxaxxbxx", true),
            ("*a*b", "xxaxxbxxb", true),
            ("*a*b", "xxbxxa", false),
            ("[a-c]x", "bx", true),
            ("[!a-c]x", "bx", false),
            ("[^a-c]x", "dx", true),
            ("[]]", "]", true),
            ("[a-]", "-", true),
            ("app-[0-9].log", "app-7.log", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(glob_match(pattern, name), expected, "{pattern} {name}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("logs/*.log", "cannot contain `/`"),
            ("[a", "unclosed `[`"),
            ("[z-a]", "backwards"),
        ] {
            assert!(compile(bad).is_err_and(|e| e.contains(why)), "{bad}");
            assert!(!glob_match(bad, "a"));
        }
    }

    #[test]
    fn event_names_match_serde() {
        for event in EventKind::ALL {
            let de =
                serde::de::value::StrDeserializer::<serde::de::value::Error>::new(event.as_str());
            assert_eq!(EventKind::deserialize(de), Ok(event));
        }
    }
}
