//! The file as written: one layer per section, read key by key from toml's spanned document so
//! that every problem is reported, each value deserialised through serde with its span kept.
//!
//! A new key is one more line in a `layer!` list (plus its resolution in `mod.rs`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;

use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::cron::CronSchedule;
use super::diag::{suggest, Diagnostics};
use super::units::{DurationValue, EnvValue, SignalValue, SizeValue};
use super::{validate_app_name, RestartPolicy};

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

/// A section whose keys are read one by one.
pub(crate) trait Layer: Default {
    /// The keys this section knows, for "did you mean".
    const KEYS: &'static [&'static str];
    /// Stores `value` under `key`; `None` if the section has no such key.
    fn set(
        &mut self,
        key: &str,
        key_span: Range<usize>,
        value: Spanned<DeValue<'_>>,
    ) -> Option<Result<(), toml::de::Error>>;
}

fn decode<T: DeserializeOwned>(
    key: Range<usize>,
    value: Spanned<DeValue<'_>>,
) -> Result<Field<T>, toml::de::Error> {
    let span = value.span();
    T::deserialize(ValueDeserializer::from(value)).map(|value| Field { key, span, value })
}

/// Declares a section struct of optional spanned fields, with its [`Layer`] impl.
macro_rules! layer {
    ($(#[$meta:meta])* $name:ident { $($field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq)]
        pub(crate) struct $name {
            $(pub $field: Option<Field<$ty>>,)*
        }

        impl Layer for $name {
            const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];
            fn set(
                &mut self,
                key: &str,
                key_span: Range<usize>,
                value: Spanned<DeValue<'_>>,
            ) -> Option<Result<(), toml::de::Error>> {
                match key {
                    $(stringify!($field) => {
                        Some(decode(key_span, value).map(|f| self.$field = Some(f)))
                    })*
                    _ => None,
                }
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

/// An env table: `env` or `env_<NAME>`.
pub(crate) type EnvTable = BTreeMap<String, EnvValue>;

layer!(
    /// The fixed keys of an app (and of `[defaults]`).
    AppFields {
        command: CommandValue,
        cwd: PathBuf,
        instances: u32,
        user: String,
        env: EnvTable,
        env_file: PathBuf,
        inherit_env: Vec<String>,
        max_memory_restart: SizeValue,
        autostart: bool,
        after: Vec<Spanned<String>>,
        cron_restart: CronSchedule,
        restart: RestartPolicy,
        max_restarts: u32,
        min_uptime: DurationValue,
        restart_delay: DurationValue,
        exp_backoff_restart_delay: DurationValue,
        kill_signal: SignalValue,
        kill_timeout: DurationValue,
        log_max_size: SizeValue,
        log_keep: u32,
        log_max_age: DurationValue,
        log_compress: bool,
        log_timestamps: bool,
    }
);

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
        key: &str,
        key_span: Range<usize>,
        value: Spanned<DeValue<'_>>,
    ) -> Option<Result<(), toml::de::Error>> {
        let name = key.strip_prefix("env_").filter(|name| !name.is_empty());
        // `env_fil = ".env"` is a typo, not an environment named "fil".
        let env_table =
            value.get_ref().is_table() || suggest(key, Self::KEYS.iter().copied()).is_none();
        match name {
            Some(name) if env_table && !Self::KEYS.contains(&key) => Some(
                decode(key_span, value).map(|f| drop(self.named_env.insert(name.to_owned(), f))),
            ),
            _ => self.fields.set(key, key_span, value),
        }
    }
}

/// An argv: an array of strings, or one string split shell-words style. Never empty.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CommandValue(pub Vec<String>);

impl<'de> Deserialize<'de> for CommandValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Argv;

        fn non_empty<E: de::Error>(argv: Vec<String>) -> Result<CommandValue, E> {
            match argv.first() {
                Some(program) if !program.trim().is_empty() => Ok(CommandValue(argv)),
                _ => Err(E::custom(
                    r#"command is empty; give the program and its arguments, e.g. ["node", "index.js"]"#,
                )),
            }
        }

        impl<'de> Visitor<'de> for Argv {
            type Value = CommandValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of strings or a command string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CommandValue, E> {
                let argv = shell_words::split(v)
                    .map_err(|e| E::custom(format!("cannot split command {v:?}: {e}")))?;
                non_empty(argv)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CommandValue, A::Error> {
                let mut argv = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    argv.push(arg);
                }
                non_empty(argv)
            }
        }

        d.deserialize_any(Argv)
    }
}

/// The whole file, section by section.
#[derive(Default)]
pub(crate) struct RawConfig {
    pub daemon: DaemonLayer,
    pub defaults: AppLayer,
    pub apps: Vec<RawApp>,
}

/// One `[apps.NAME]` table.
pub(crate) struct RawApp {
    pub name: String,
    pub layer: AppLayer,
}

const SECTIONS: &[&str] = &["daemon", "defaults", "apps"];

/// Reads the document into layers, recording every unknown key and bad value in `diags`.
pub(crate) fn read(diags: &mut Diagnostics<'_>, root: DeTable<'_>) -> RawConfig {
    let mut raw = RawConfig::default();
    for (key, value) in root {
        let key_span = key.span();
        let key = key.into_inner();
        match &*key {
            "daemon" => {
                if let Some(table) = table(diags, "daemon", value) {
                    raw.daemon = read_layer(diags, "daemon", table);
                }
            }
            "defaults" => {
                if let Some(table) = table(diags, "defaults", value) {
                    raw.defaults = read_layer(diags, "defaults", table);
                }
            }
            "apps" => {
                let Some(apps) = table(diags, "apps", value) else {
                    continue;
                };
                for (name, value) in apps {
                    let name_span = name.span();
                    let name = name.into_inner().into_owned();
                    let path = format!("apps.{name}");
                    if let Err(message) = validate_app_name(&name) {
                        diags.error(name_span.clone(), &path, message);
                    }
                    if let Some(table) = table(diags, &path, value) {
                        if !table.iter().any(|(key, _)| key.get_ref() == "command") {
                            let message =
                                r#"app has no `command`; add e.g. command = ["node", "index.js"]"#;
                            diags.error(name_span.clone(), &path, message);
                        }
                        let layer = read_layer(diags, &path, table);
                        raw.apps.push(RawApp { name, layer });
                    }
                }
            }
            _ => diags.unknown_key(key_span, key.to_string(), &key, SECTIONS),
        }
    }
    raw
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

fn read_layer<L: Layer>(diags: &mut Diagnostics<'_>, path: &str, table: DeTable<'_>) -> L {
    let mut layer = L::default();
    for (key, value) in table {
        let key_span = key.span();
        let key = key.into_inner();
        let key_path = format!("{path}.{key}");
        match layer.set(&key, key_span.clone(), value) {
            Some(Ok(())) => {}
            Some(Err(e)) => diags.error(e.span().unwrap_or(key_span), key_path, e.message()),
            None => diags.unknown_key(key_span, key_path, &key, L::KEYS),
        }
    }
    layer
}
