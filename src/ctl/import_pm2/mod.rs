//! `citrusctl import-pm2`: turns a PM2 ecosystem file (JSON) or a `dump.pm2` into a `citrusd.toml`.
//!
//! [`convert`] is pure: text in, TOML text and warnings out. Each app is mapped onto the Citrus keys of
//! SPEC 2.1 (`entry`); every PM2 option that is dropped or only approximated yields one warning.
//! Ecosystem entries warn on every key they do not map. Dump entries (flattened `pm2_env` objects, or
//! `pm2 jlist`-style objects with a `pm2_env` field) carry dozens of PM2 internals and the whole shell
//! environment, so there only options that change behaviour are reported, the environment is filtered
//! down to the app's own variables, and the several processes of one clustered app are merged back
//! into `instances = N` (here). Names are made valid and unique here, and the TOML is written by
//! `render`.

mod entry;
mod render;
mod values;

use std::collections::HashSet;

use serde_json::Value;

use entry::{convert_entry, Draft};
use render::{render, App, TVal};
use values::kind;

/// The command that turns an `ecosystem.config.js` into JSON.
const JS_HINT: &str =
    "node -e 'console.log(JSON.stringify(require(\"./ecosystem.config.js\")))' > ecosystem.json";

/// Longest app name Citrus accepts.
const NAME_MAX: usize = 64;

/// Why a PM2 file could not be converted. Each message names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file is JavaScript (`module.exports = …`), which this converter does not evaluate.
    #[error("{file}: this is a JavaScript file, not JSON; convert it first with: {hint}", hint = JS_HINT)]
    JavaScript { file: String },
    /// The file is not valid JSON.
    #[error("{file}: invalid JSON at line {line}, column {column}: {message}")]
    Json {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// The JSON is not an ecosystem, a list of apps or a dump.
    #[error("{file}: {problem}")]
    Shape { file: String, problem: String },
    /// One app cannot be converted; `at` locates it, e.g. `apps[2]`.
    #[error("{file}: {at}: {problem}")]
    App {
        file: String,
        at: String,
        problem: String,
    },
}

/// The result of a conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    /// The `citrusd.toml` text, starting with a header comment.
    pub toml: String,
    /// PM2 options dropped or approximated, one line each (for stderr).
    pub warnings: Vec<String>,
}

/// Converts the text of a PM2 file. `source_name` is used in messages and in a header comment.
pub fn convert(text: &str, source_name: &str) -> Result<Conversion, ImportError> {
    let root = parse(text, source_name)?;
    let mut warnings = Vec::new();
    let entries = entries(&root, source_name, &mut warnings)?;
    let mut drafts: Vec<Draft> = Vec::new();
    for (at, value) in entries {
        let draft = convert_entry(value).map_err(|problem| ImportError::App {
            file: source_name.to_string(),
            at,
            problem,
        })?;
        merge_or_push(&mut drafts, draft);
    }
    let apps = name_apps(drafts, &mut warnings);
    Ok(Conversion {
        toml: render(source_name, &apps),
        warnings,
    })
}

/// The file's JSON (a leading BOM allowed); JavaScript gets the hint that converts it.
fn parse(text: &str, source_name: &str) -> Result<Value, ImportError> {
    let file = source_name.to_string();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    serde_json::from_str(text).map_err(|e| {
        if looks_like_js(text, source_name) {
            return ImportError::JavaScript { file };
        }
        let full = e.to_string();
        let message = match full.rfind(" at line ") {
            Some(i) => full[..i].to_string(),
            None => full,
        };
        ImportError::Json {
            file,
            line: e.line(),
            column: e.column(),
            message,
        }
    })
}

/// The app entries of an ecosystem (`{"apps": …}`, its other top-level keys dropped with a
/// warning), of a single app object, or of a list of apps or dump processes; each with where it
/// is, e.g. `apps[2]`.
fn entries<'a>(
    root: &'a Value,
    source_name: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<(String, &'a Value)>, ImportError> {
    let shape_err = |problem: String| ImportError::Shape {
        file: source_name.to_string(),
        problem,
    };
    let entries: Vec<(String, &Value)> = match root {
        Value::Object(top) if top.contains_key("apps") => {
            for key in top.keys().filter(|k| *k != "apps") {
                let why = if key == "deploy" {
                    "Citrus deploys with [apps.NAME.deploy]; set it up by hand"
                } else {
                    "only \"apps\" is converted"
                };
                warnings.push(format!("{source_name}: top-level \"{key}\" dropped: {why}"));
            }
            match &top["apps"] {
                Value::Array(apps) => apps
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (format!("apps[{i}]"), v))
                    .collect(),
                one @ Value::Object(_) => vec![("apps".to_string(), one)],
                other => {
                    return Err(shape_err(format!(
                        "\"apps\" must be a list of apps, found {}",
                        kind(other)
                    )))
                }
            }
        }
        Value::Object(top)
            if ["script", "pm_exec_path", "pm2_env"]
                .iter()
                .any(|k| top.contains_key(*k)) =>
        {
            vec![("app".to_string(), root)]
        }
        Value::Array(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("[{i}]"), v))
            .collect(),
        other => {
            return Err(shape_err(format!(
                "expected an ecosystem ({{\"apps\": [...]}}), a list of apps or a dump.pm2 list, found {}",
                kind(other)
            )))
        }
    };
    if entries.is_empty() {
        return Err(shape_err("no apps to convert".to_string()));
    }
    Ok(entries)
}

/// Adds `draft`, unless it is one more process of a dump's app already drafted: a dump lists each
/// instance of an app as its own process, merged back here.
fn merge_or_push(drafts: &mut Vec<Draft>, draft: Draft) {
    if draft.from_dump {
        if let Some(prev) = drafts
            .iter_mut()
            .find(|p| p.from_dump && p.name == draft.name && p.app == draft.app)
        {
            prev.processes += 1;
            return;
        }
    }
    drafts.push(draft);
}

/// Each draft under a valid, unique name (renames noted), its merged processes written as
/// `instances`, its warnings prefixed with the name.
fn name_apps(drafts: Vec<Draft>, warnings: &mut Vec<String>) -> Vec<(String, App)> {
    let mut used = HashSet::new();
    let mut apps = Vec::new();
    for mut draft in drafts {
        let mut notes = Vec::new();
        if draft.processes > 1 {
            draft.app.set("instances", TVal::Int(draft.processes));
            notes.push(format!(
                "{} PM2 processes merged into instances = {}",
                draft.processes, draft.processes
            ));
        }
        let base = sanitise_name(&draft.name);
        if base != draft.name {
            notes.push(format!(
                "app name {:?} is not valid in Citrus; renamed to {base:?}",
                draft.name
            ));
        }
        let name = unique_name(&base, &used);
        if name != base {
            notes.push(format!("duplicate app name {base:?}; renamed to {name:?}"));
        }
        used.insert(name.clone());
        warnings.extend(
            notes
                .into_iter()
                .chain(draft.warnings)
                .map(|w| format!("{name}: {w}")),
        );
        apps.push((name, draft.app));
    }
    apps
}

/// Whether `text` (the file `source_name`) is JavaScript rather than JSON.
fn looks_like_js(text: &str, source_name: &str) -> bool {
    let t = text.trim_start();
    let lower = source_name.to_ascii_lowercase();
    [".js", ".cjs", ".mjs"].iter().any(|e| lower.ends_with(e))
        || text.contains("module.exports")
        || [
            "exports.",
            "export ",
            "'use strict'",
            "\"use strict\"",
            "const ",
            "let ",
            "var ",
            "require(",
        ]
        .iter()
        .any(|p| t.starts_with(p))
}

/// Makes a PM2 name match `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`: runs of other characters become one `-`.
fn sanitise_name(raw: &str) -> String {
    let mut out = String::new();
    let mut replaced = false;
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
            out.push(c);
            replaced = false;
        } else if !replaced {
            out.push('-');
            replaced = true;
        }
    }
    let start = out
        .find(|c: char| c.is_ascii_alphanumeric())
        .unwrap_or(out.len());
    let mut name = out[start..].to_string();
    if replaced {
        name.truncate(name.trim_end_matches('-').len());
    }
    name.truncate(NAME_MAX);
    if name.is_empty() {
        name = "app".to_string();
    }
    // `all` names every app on the command line.
    if crate::config::validate_app_name(&name).is_err() {
        name = format!("{name}-app");
    }
    name
}

/// `base`, or `base-2`, `base-3`… when taken, kept within [`NAME_MAX`].
fn unique_name(base: &str, used: &HashSet<String>) -> String {
    if !used.contains(base) {
        return base.to_string();
    }
    (2..)
        .map(|n| {
            let suffix = format!("-{n}");
            let keep = base.len().min(NAME_MAX - suffix.len());
            format!("{}{suffix}", &base[..keep])
        })
        .find(|candidate| !used.contains(candidate))
        .expect("unbounded candidates")
}

#[cfg(test)]
mod tests;
