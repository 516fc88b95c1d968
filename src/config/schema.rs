//! The machinery every section is read with: a [`Field`] (a value with the spans of its key and
//! of its value), a [`Layer`] (a section of optional fields read key by key from toml's spanned
//! document, so that every problem is reported, each value deserialised through serde with its
//! span kept), the [`layer!`] macro that declares one, and the readers of tables and of sections
//! of named tables. Each section's module declares its own layer with it; this module knows none
//! of them.
//!
//! A new key is one more line in a `layer!` list (plus its resolution into the public types).

use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::diag::Diagnostics;
use super::validate::validate_name;

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
    pub(super) fn read(
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
    pub(super) keys: Vec<(String, Range<usize>)>,
}

impl Section<'_> {
    /// Where `key` was written, if it was.
    pub(super) fn key(&self, key: &str) -> Option<Range<usize>> {
        let (_, span) = self.keys.iter().find(|(written, _)| written == key)?;
        Some(span.clone())
    }

    /// Records a problem with the table as a whole.
    pub(super) fn error(&self, diags: &mut Diagnostics<'_>, message: impl Into<String>) {
        diags.error(self.at.clone(), self.path, message);
    }

    /// Records each of `keys`, which `what` needs, that is missing; each comes with an example
    /// of how to write it.
    pub(super) fn require(&self, diags: &mut Diagnostics<'_>, what: &str, keys: &[(&str, &str)]) {
        for &(key, example) in keys {
            if self.key(key).is_none() {
                self.error(diags, format!("{what} has no `{key}`; add e.g. {example}"));
            }
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
            $(pub $field: Option<$crate::config::schema::Field<$ty>>,)*
        }

        impl $crate::config::schema::Layer for $name {
            const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];
            fn set(
                &mut self,
                diags: &mut $crate::config::diag::Diagnostics<'_>,
                path: &str,
                key: &str,
                key_span: std::ops::Range<usize>,
                value: toml::Spanned<toml::de::DeValue<'_>>,
            ) -> bool {
                match key {
                    $(stringify!($field) => {
                        self.$field = $crate::config::schema::Field::read(diags, path, key_span, value)
                    })*
                    _ => return false,
                }
                true
            }
            $(fn check(
                &self,
                diags: &mut $crate::config::diag::Diagnostics<'_>,
                section: &$crate::config::schema::Section<'_>,
            ) {
                $check(self, diags, section)
            })?
        }

        impl $crate::config::schema::FieldValue for $name {
            fn read(
                diags: &mut $crate::config::diag::Diagnostics<'_>,
                path: &str,
                key: std::ops::Range<usize>,
                value: toml::Spanned<toml::de::DeValue<'_>>,
            ) -> Option<Self> {
                $crate::config::schema::read_table(diags, path, key, value)
            }
        }
    };
}

pub(super) use layer;

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

/// One `[SECTION.NAME]` table, not read yet.
pub(super) struct NamedTable<'i> {
    pub name: String,
    /// `SECTION.NAME`.
    pub path: String,
    /// The name's.
    pub span: Range<usize>,
    pub table: DeTable<'i>,
}

/// The tables of a section of named ones (`apps`, `jobs`), their names checked; `what` names
/// one, e.g. "app".
pub(super) fn named_tables<'i>(
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
pub(super) fn read_table<L: Layer>(
    diags: &mut Diagnostics<'_>,
    path: &str,
    at: Range<usize>,
    value: Spanned<DeValue<'_>>,
) -> Option<L> {
    table(diags, path, value).map(|table| read_layer(diags, path, at, table))
}

/// Reads `table`, the table at `path` opened at `at`, into a layer, then runs its checks.
pub(super) fn read_layer<L: Layer>(
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
