//! The file as written: one layer per section, read key by key from toml's spanned document so
//! that every problem is reported, each value deserialised through serde with its span kept.
//!
//! A new key is one more line in a `layer!` list (plus its resolution into the public types).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;

use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::cron::{CronSchedule, Timezone};
use super::deploy::{GitUrl, SharedPath};
use super::diag::{suggest, Diagnostics};
use super::engine::{ApiBase, DatabaseUrl, PublicUrl, Sha256Hex};
use super::fleet::{AgentId, EngineUrl, EnrollToken, GitName, SiteTemplate};
use super::jobs::{EventKind, GlobPattern};
use super::listen::ListenAddr;
use super::probe::{HttpProbe, TcpProbe, WebhookUrl};
use super::units::{
    names, Bounded, Choice, DurationValue, Named, PositiveDuration, SignalValue, SizeValue,
};
pub(crate) use super::validate::EnvTable;
use super::validate::{check_argv, InstanceCount};
use super::{validate_name, RestartPolicy};

/// A key's value with the byte spans of the key and of the value.
#[derive(Clone, Debug)]
pub(crate) struct Field<T> {
    pub key: Range<usize>,
    pub span: Range<usize>,
    pub value: T,
}

/// Spans are where a value was written, not what it is.
impl<T: PartialEq> PartialEq for Field<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T> Field<T> {
    /// A value that was not read from the file (runtime apps).
    pub fn unspanned(value: T) -> Self {
        Self {
            key: 0..0,
            span: 0..0,
            value,
        }
    }
}

/// The value of an optional field.
pub(crate) fn value<T>(field: &Option<Field<T>>) -> Option<&T> {
    field.as_ref().map(|field| &field.value)
}

impl<T: FieldValue> Field<T> {
    /// Reads the value of the key at `key`, whose dotted path is `path`.
    fn read(
        diags: &mut Diagnostics<'_>,
        path: &str,
        key: Range<usize>,
        value: Spanned<DeValue<'_>>,
    ) -> Option<Self> {
        let span = value.span();
        T::read(diags, path, key.clone(), value).map(|value| Field { key, span, value })
    }
}

/// How a value is read: through serde for plain values, key by key for a table (a [`Layer`]).
pub(crate) trait FieldValue: Sized {
    /// `None` if the value is invalid; the problem is recorded in `diags`.
    fn read(
        diags: &mut Diagnostics<'_>,
        path: &str,
        key: Range<usize>,
        value: Spanned<DeValue<'_>>,
    ) -> Option<Self>;
}

// Layers are not `Deserialize`, so this does not overlap the impls `layer!` writes for them.
impl<T: DeserializeOwned> FieldValue for T {
    fn read(
        diags: &mut Diagnostics<'_>,
        path: &str,
        key: Range<usize>,
        value: Spanned<DeValue<'_>>,
    ) -> Option<Self> {
        T::deserialize(ValueDeserializer::from(value))
            .map_err(|e| diags.error(e.span().unwrap_or(key), path, e.message()))
            .ok()
    }
}

/// A table as written: its dotted path, where it starts (for "missing key" errors) and the known
/// keys written in it, valid or not.
pub(crate) struct Section<'a> {
    pub(super) path: &'a str,
    at: Range<usize>,
    keys: Vec<(String, Range<usize>)>,
}

impl Section<'_> {
    /// Where `key` was written, if it was.
    fn key(&self, key: &str) -> Option<Range<usize>> {
        let (_, span) = self.keys.iter().find(|(written, _)| written == key)?;
        Some(span.clone())
    }

    /// Records a problem with the table as a whole.
    fn error(&self, diags: &mut Diagnostics<'_>, message: impl Into<String>) {
        diags.error(self.at.clone(), self.path, message);
    }

    /// Records that `key`, which `what` needs, is missing; `example` shows how to write it.
    pub(super) fn require(
        &self,
        diags: &mut Diagnostics<'_>,
        what: &str,
        key: &str,
        example: &str,
    ) {
        if self.key(key).is_none() {
            self.error(diags, format!("{what} has no `{key}`; add e.g. {example}"));
        }
    }
}

/// A section whose keys are read one by one.
pub(crate) trait Layer: Default {
    /// The keys this section knows, for "did you mean".
    const KEYS: &'static [&'static str];
    /// Reads `value` into `key` (whose dotted path is `path`); `false` if there is no such key.
    fn set(
        &mut self,
        diags: &mut Diagnostics<'_>,
        path: &str,
        key: &str,
        key_span: Range<usize>,
        value: Spanned<DeValue<'_>>,
    ) -> bool;
    /// Checks between keys, once all are read.
    fn check(&self, _diags: &mut Diagnostics<'_>, _section: &Section<'_>) {}
}

/// Declares a section struct of optional spanned fields, with its [`Layer`] impl (whose `check`
/// is the given function, if any) and a [`FieldValue`] impl to nest it in other sections.
macro_rules! layer {
    (
        $(#[$meta:meta])* $name:ident { $($field:ident: $ty:ty,)* }
        $(check: $check:path)?
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq)]
        pub(crate) struct $name {
            $(pub $field: Option<Field<$ty>>,)*
        }

        impl Layer for $name {
            const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];
            fn set(
                &mut self,
                diags: &mut Diagnostics<'_>,
                path: &str,
                key: &str,
                key_span: Range<usize>,
                value: Spanned<DeValue<'_>>,
            ) -> bool {
                match key {
                    $(stringify!($field) => self.$field = Field::read(diags, path, key_span, value),)*
                    _ => return false,
                }
                true
            }
            $(fn check(&self, diags: &mut Diagnostics<'_>, section: &Section<'_>) {
                $check(self, diags, section)
            })?
        }

        impl FieldValue for $name {
            fn read(
                diags: &mut Diagnostics<'_>,
                path: &str,
                key: Range<usize>,
                value: Spanned<DeValue<'_>>,
            ) -> Option<Self> {
                read_table(diags, path, key, value)
            }
        }
    };
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
    }
);

layer!(
    /// The fixed keys of an app (and of `[defaults]`).
    AppFields {
        command: CommandValue,
        cwd: PathBuf,
        instances: InstanceCount,
        user: String,
        env: EnvTable,
        env_file: PathBuf,
        inherit_env: Vec<String>,
        max_memory_restart: SizeValue,
        autostart: bool,
        after: Vec<Spanned<String>>,
        cron_restart: CronSchedule,
        restart: RestartPolicy,
        max_restarts: Bounded<u32, 0, 1_000_000>,
        min_uptime: DurationValue,
        restart_delay: DurationValue,
        exp_backoff_restart_delay: DurationValue,
        kill_signal: SignalValue,
        kill_timeout: DurationValue,
        log_max_size: SizeValue,
        log_keep: Bounded<u32, 0, 1000>,
        log_max_age: DurationValue,
        log_compress: bool,
        log_timestamps: bool,
        ready: ReadyLayer,
        health: HealthLayer,
        deploy: DeployLayer,
        listen: Vec<Spanned<ListenAddr>>,
    }
);

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
    check: super::deploy::check_deploy
);

layer!(
    /// `source = { … }` of `[deploy]`.
    SourceLayer {
        git: GitUrl,
        branch: GitName,
        path: PathBuf,
        archive: PathBuf,
    }
    check: super::deploy::check_source
);

layer!(
    /// `health = { … }` of `[deploy]`.
    DeployHealthLayer {
        http: HttpProbe,
        tcp: TcpProbe,
        timeout: PositiveDuration,
        interval: PositiveDuration,
    }
    check: super::deploy::check_deploy_health
);

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

/// Requires exactly one of `options` in `section`, and returns it.
pub(super) fn exactly_one(
    diags: &mut Diagnostics<'_>,
    section: &Section<'_>,
    options: &[&'static str],
    example: &str,
) -> Option<&'static str> {
    let mut written: Vec<(&'static str, Range<usize>)> = options
        .iter()
        .filter_map(|&option| Some((option, section.key(option)?)))
        .collect();
    written.sort_by_key(|(_, span)| span.start);
    let table = section.path.rsplit('.').next().unwrap_or_default();
    let listed: Vec<String> = options.iter().map(|option| format!("`{option}`")).collect();
    let listed = listed.join(", ");
    match written.as_slice() {
        [] => section.error(
            diags,
            format!("`{table}` needs one of {listed}, e.g. {example}"),
        ),
        [(only, _)] => return Some(only),
        [(first, _), (second, span), ..] => diags.error(
            span.clone(),
            section.path,
            format!("`{table}` takes only one of {listed}; found both `{first}` and `{second}`"),
        ),
    }
    None
}

/// `[apps.NAME]` or `[defaults]`: the fixed keys plus any `env_<NAME>` tables.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct AppLayer {
    pub fields: AppFields,
    pub named_env: BTreeMap<String, Field<EnvTable>>,
}

impl Layer for AppLayer {
    const KEYS: &'static [&'static str] = AppFields::KEYS;
    fn set(
        &mut self,
        diags: &mut Diagnostics<'_>,
        path: &str,
        key: &str,
        key_span: Range<usize>,
        value: Spanned<DeValue<'_>>,
    ) -> bool {
        let name = key.strip_prefix("env_").filter(|name| !name.is_empty());
        // `env_fil = ".env"` is a typo, not an environment named "fil".
        let env_table =
            value.get_ref().is_table() || suggest(key, Self::KEYS.iter().copied()).is_none();
        match name {
            Some(name) if env_table && !Self::KEYS.contains(&key) => {
                if let Some(table) = Field::read(diags, path, key_span, value) {
                    self.named_env.insert(name.to_owned(), table);
                }
                true
            }
            _ => self.fields.set(diags, path, key, key_span, value),
        }
    }
}

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
    section.require(diags, "job", "schedule", r#"schedule = "0 3 * * *""#);
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
    for (key, example) in required {
        section.require(diags, "[fleet]", key, example);
    }
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
        section.require(diags, "[fleet.update]", "repo", r#"repo = "/opt/citrus""#);
    }
}

/// An argv: an array of strings, or one string split shell-words style. Never empty.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CommandValue(pub Vec<String>);

impl<'de> Deserialize<'de> for CommandValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_argv(d, |argv| has_program(argv, r#"["node", "index.js"]"#)).map(Self)
    }
}

/// Reads an argv written as [`CommandValue`] is, then checks it with `check` (whose `Err` is the
/// message), so that every problem is reported at the value.
pub(crate) fn deserialize_argv<'de, D: Deserializer<'de>>(
    d: D,
    check: fn(&[String]) -> Result<(), String>,
) -> Result<Vec<String>, D::Error> {
    struct Argv(fn(&[String]) -> Result<(), String>);

    impl Argv {
        fn checked<E: de::Error>(self, argv: Vec<String>) -> Result<Vec<String>, E> {
            (self.0)(&argv).map_err(E::custom)?;
            Ok(argv)
        }
    }

    impl<'de> Visitor<'de> for Argv {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of strings or a command string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            let argv = shell_words::split(v)
                .map_err(|e| E::custom(format!("cannot split command {v:?}: {e}")))?;
            self.checked(argv)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut argv = Vec::new();
            while let Some(arg) = seq.next_element::<String>()? {
                argv.push(arg);
            }
            self.checked(argv)
        }
    }

    d.deserialize_any(Argv(check))
}

/// `Err` unless `argv` names a program; the message shows `example`.
pub(crate) fn has_program(argv: &[String], example: &str) -> Result<(), String> {
    check_argv(argv, example)
}

/// A list of at least one item.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NonEmpty<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for NonEmpty<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Items<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for Items<T> {
            type Value = NonEmpty<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-empty array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NonEmpty<T>, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                match items.is_empty() {
                    true => Err(de::Error::custom(
                        "the list is empty; give at least one item",
                    )),
                    false => Ok(NonEmpty(items)),
                }
            }
        }

        d.deserialize_seq(Items(PhantomData))
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
    for (key, example) in required {
        section.require(diags, "[local_agent]", key, example);
    }
}

/// Reads `engine.toml`'s document, recording every unknown key and bad value in `diags`.
pub(crate) fn read_engine(diags: &mut Diagnostics<'_>, root: DeTable<'_>) -> EngineLayer {
    read_layer(diags, "", 0..0, root)
}

/// The whole file, section by section.
#[derive(Default)]
pub(crate) struct RawConfig {
    pub daemon: DaemonLayer,
    pub defaults: AppLayer,
    pub apps: Vec<RawApp>,
    pub jobs: Vec<RawJob>,
    pub notify: NotifyLayer,
    pub fleet: Option<FleetLayer>,
}

/// One `[apps.NAME]` table.
pub(crate) struct RawApp {
    pub name: String,
    /// The name's, in its table header.
    pub span: Range<usize>,
    pub layer: AppLayer,
}

/// One `[jobs.NAME]` table.
pub(crate) struct RawJob {
    pub name: String,
    pub layer: JobLayer,
}

const SECTIONS: &[&str] = &["daemon", "defaults", "apps", "jobs", "notify", "fleet"];

/// Reads the document into layers, recording every unknown key and bad value in `diags`.
pub(crate) fn read(diags: &mut Diagnostics<'_>, root: DeTable<'_>) -> RawConfig {
    let mut raw = RawConfig::default();
    for (key, value) in root {
        let key_span = key.span();
        let key = key.into_inner();
        match &*key {
            "daemon" => raw.daemon = read_table(diags, &key, key_span, value).unwrap_or_default(),
            "defaults" => {
                raw.defaults = read_table(diags, &key, key_span, value).unwrap_or_default();
            }
            "notify" => raw.notify = read_table(diags, &key, key_span, value).unwrap_or_default(),
            "fleet" => raw.fleet = read_table(diags, &key, key_span, value),
            "apps" => {
                for named in named_tables(diags, "app", &key, value) {
                    if !named
                        .table
                        .iter()
                        .any(|(key, _)| key.get_ref() == "command")
                    {
                        let message =
                            r#"app has no `command`; add e.g. command = ["node", "index.js"]"#;
                        diags.error(named.span.clone(), &named.path, message);
                    }
                    let layer = read_layer(diags, &named.path, named.span.clone(), named.table);
                    raw.apps.push(RawApp {
                        name: named.name,
                        span: named.span,
                        layer,
                    });
                }
            }
            "jobs" => {
                for named in named_tables(diags, "job", &key, value) {
                    let layer = read_layer(diags, &named.path, named.span, named.table);
                    raw.jobs.push(RawJob {
                        name: named.name,
                        layer,
                    });
                }
            }
            _ => diags.unknown_key(key_span, key.to_string(), &key, SECTIONS),
        }
    }
    raw
}

/// One `[SECTION.NAME]` table, not read yet.
struct NamedTable<'i> {
    name: String,
    /// `SECTION.NAME`.
    path: String,
    /// The name's.
    span: Range<usize>,
    table: DeTable<'i>,
}

/// The tables of a section of named ones (`apps`, `jobs`), their names checked; `what` names
/// one, e.g. "app".
fn named_tables<'i>(
    diags: &mut Diagnostics<'_>,
    what: &str,
    section: &str,
    value: Spanned<DeValue<'i>>,
) -> Vec<NamedTable<'i>> {
    let Some(tables) = table(diags, section, value) else {
        return Vec::new();
    };
    let mut named = Vec::new();
    for (name, value) in tables {
        let span = name.span();
        let name = name.into_inner().into_owned();
        let path = format!("{section}.{name}");
        if let Err(message) = validate_name(what, &name) {
            diags.error(span.clone(), &path, message);
        }
        if let Some(table) = table(diags, &path, value) {
            named.push(NamedTable {
                name,
                path,
                span,
                table,
            });
        }
    }
    named
}

fn table<'i>(
    diags: &mut Diagnostics<'_>,
    path: &str,
    value: Spanned<DeValue<'i>>,
) -> Option<DeTable<'i>> {
    let span = value.span();
    match value.into_inner() {
        DeValue::Table(table) => Some(table),
        other => {
            let found = other.type_str();
            diags.error(span, path, format!("expected a table, found {found}"));
            None
        }
    }
}

/// Reads `value`, the table at `path` opened at `at`, into a layer.
fn read_table<L: Layer>(
    diags: &mut Diagnostics<'_>,
    path: &str,
    at: Range<usize>,
    value: Spanned<DeValue<'_>>,
) -> Option<L> {
    table(diags, path, value).map(|table| read_layer(diags, path, at, table))
}

fn read_layer<L: Layer>(
    diags: &mut Diagnostics<'_>,
    path: &str,
    at: Range<usize>,
    table: DeTable<'_>,
) -> L {
    let mut layer = L::default();
    let mut section = Section {
        path,
        at,
        keys: Vec::new(),
    };
    for (key, value) in table {
        let key_span = key.span();
        let key = key.into_inner();
        let key_path = match path {
            "" => key.to_string(),
            _ => format!("{path}.{key}"),
        };
        if layer.set(diags, &key_path, &key, key_span.clone(), value) {
            section.keys.push((key.into_owned(), key_span));
        } else {
            diags.unknown_key(key_span, key_path, &key, L::KEYS);
        }
    }
    layer.check(diags, &section);
    layer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_kind_keys_are_job_keys() {
        for kind in JobKindTag::ALL {
            for (key, _) in kind.keys() {
                assert!(JobLayer::KEYS.contains(key), "{key}");
                assert_eq!(JobKindTag::owner(key), Some(*kind), "{key}");
            }
        }
    }
}
