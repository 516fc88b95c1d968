//! `citrusctl import-pm2`: turns a PM2 ecosystem file (JSON) or a `dump.pm2` into a `citrusd.toml`.
//!
//! [`convert`] is pure: text in, TOML text and warnings out. Each app is mapped onto the Citrus keys of
//! SPEC 2.1; every PM2 option that is dropped or only approximated yields one warning. Ecosystem entries
//! warn on every key they do not map. Dump entries (flattened `pm2_env` objects, or `pm2 jlist`-style
//! objects with a `pm2_env` field) carry dozens of PM2 internals and the whole shell environment, so
//! there only options that change behaviour are reported, the environment is filtered down to the app's
//! own variables, and the several processes of one clustered app are merged back into `instances = N`.
//! The TOML is written by hand (fixed key order, inline env tables while they stay short); the tests
//! read every output back through the `toml` parser.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Map, Value};

/// The command that turns an `ecosystem.config.js` into JSON.
const JS_HINT: &str =
    "node -e 'console.log(JSON.stringify(require(\"./ecosystem.config.js\")))' > ecosystem.json";

/// Longest `env = { … }` line written inline; longer tables become `[apps.NAME.env]` sections.
const INLINE_MAX: usize = 100;

/// Longest app name Citrus accepts.
const NAME_MAX: usize = 64;
/// The most instances an imported app gets (citrusd refuses more).
const MAX_INSTANCES: i64 = crate::config::MAX_INSTANCES as i64;

/// Order of the plain keys in each `[apps.NAME]` table.
const KEY_ORDER: &[&str] = &[
    "command",
    "cwd",
    "user",
    "instances",
    "autostart",
    "restart",
    "max_restarts",
    "min_uptime",
    "restart_delay",
    "exp_backoff_restart_delay",
    "kill_timeout",
    "max_memory_restart",
    "cron_restart",
    "log_timestamps",
];

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
    let file = source_name.to_string();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let root: Value = serde_json::from_str(text).map_err(|e| {
        if looks_like_js(text, source_name) {
            return ImportError::JavaScript { file: file.clone() };
        }
        let full = e.to_string();
        let message = match full.rfind(" at line ") {
            Some(i) => full[..i].to_string(),
            None => full,
        };
        ImportError::Json {
            file: file.clone(),
            line: e.line(),
            column: e.column(),
            message,
        }
    })?;

    let shape_err = |problem: String| ImportError::Shape {
        file: file.clone(),
        problem,
    };
    let mut warnings = Vec::new();
    let entries: Vec<(String, &Value)> = match &root {
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
            vec![("app".to_string(), &root)]
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

    let mut drafts: Vec<Draft> = Vec::new();
    for (at, value) in entries {
        let draft = convert_entry(value).map_err(|problem| ImportError::App {
            file: file.clone(),
            at,
            problem,
        })?;
        // A dump lists each instance of an app as its own process: merge identical ones back.
        if draft.from_dump {
            if let Some(prev) = drafts
                .iter_mut()
                .find(|p| p.from_dump && p.name == draft.name && p.app == draft.app)
            {
                prev.processes += 1;
                continue;
            }
        }
        drafts.push(draft);
    }

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

    Ok(Conversion {
        toml: render(source_name, &apps),
        warnings,
    })
}

/// A TOML value of an app key.
#[derive(Debug, Clone, PartialEq)]
enum TVal {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<String>),
}

/// One converted app, before naming.
#[derive(Debug, Clone, Default, PartialEq)]
struct App {
    keys: Vec<(&'static str, TVal)>,
    /// `env` and `env_<NAME>` tables, in that order.
    envs: Vec<(String, Vec<(String, String)>)>,
}

impl App {
    fn set(&mut self, key: &'static str, value: TVal) {
        match self.keys.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.keys.push((key, value)),
        }
    }
}

struct Draft {
    /// The PM2 name, unsanitised.
    name: String,
    app: App,
    warnings: Vec<String>,
    from_dump: bool,
    /// Dump processes merged into this app.
    processes: i64,
}

/// Keys read before the generic option loop.
const EXPLICIT: &[&str] = &[
    "name",
    "script",
    "args",
    "interpreter",
    "interpreter_args",
    "cwd",
    "user",
    "uid",
];

/// Converts one app object (ecosystem) or process object (dump); `Err` is the problem text.
fn convert_entry(value: &Value) -> Result<Draft, String> {
    let Value::Object(obj) = value else {
        return Err(format!("expected an object, found {}", kind(value)));
    };
    let mut w = Vec::new();
    let (m, dump) = match obj.get("pm2_env") {
        Some(Value::Object(env)) => {
            let mut merged = env.clone();
            for (k, v) in obj {
                if !matches!(k.as_str(), "pm2_env" | "monit" | "pid" | "pm_id") {
                    merged.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            (canonical_keys(&merged, true, &mut w), true)
        }
        _ => {
            let dump = obj.contains_key("pm_exec_path") && !obj.contains_key("script");
            (canonical_keys(obj, dump, &mut w), dump)
        }
    };

    let script = match m.get("script") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => return Err("\"script\" is empty".to_string()),
        Some(other) => {
            return Err(format!(
                "\"script\" must be a string, found {}",
                kind(other)
            ))
        }
        None if dump => return Err("missing \"pm_exec_path\"".to_string()),
        None => return Err("missing \"script\"".to_string()),
    };
    let name = match m.get("name").and_then(scalar_text) {
        Some(n) if !n.is_empty() => n,
        _ => Path::new(&script)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "app".to_string()),
    };

    let mut app = App::default();
    let argv = command(&m, &script, dump, &mut w)?;
    crate::config::check_command(&argv)?;
    if dump {
        if let Some(dir) = version_manager_dir(&m, &argv[0]) {
            w.push(format!(
                "{:?} came from {dir} on PM2's PATH; citrusd's PATH may lack it: write {dir}/{} if so",
                argv[0], argv[0]
            ));
        }
    }
    app.set("command", TVal::List(argv));

    match m.get("cwd") {
        Some(Value::String(cwd)) if !cwd.is_empty() => app.set("cwd", TVal::Str(cwd.clone())),
        None | Some(Value::Null) => {
            let relative = !script.starts_with('/') && !script.contains(char::is_whitespace);
            if !dump && relative && (script.contains('/') || default_interpreter(&script).is_some())
            {
                w.push(format!(
                    "no \"cwd\": PM2 resolved {script:?} against the ecosystem file's directory; set cwd"
                ));
            }
        }
        Some(other) => w.push(format!("\"cwd\" {other} is not a path; dropped")),
    }

    let user = ["user", "uid"]
        .iter()
        .find_map(|k| m.get(*k).filter(|v| !v.is_null()));
    match user {
        Some(Value::String(u)) if !u.trim().is_empty() => app.set("user", TVal::Str(u.clone())),
        Some(v) if !is_off(v) => w.push(format!(
            "user {v}: Citrus needs a user name; set user = \"NAME\" by hand"
        )),
        _ => {}
    }

    let mut autorestart_off = false;
    let mut on_failure = false;
    for (key, v) in &m {
        if v.is_null() || EXPLICIT.contains(&key.as_str()) {
            continue;
        }
        match key.as_str() {
            "env_" => w.push(format!(
                "{key}: an environment needs a name after `env_`; dropped"
            )),
            k if k == "env" || (k.starts_with("env_") && v.is_object()) => {
                let vars = env_table(k, v, dump, &name, &mut w);
                if !vars.is_empty() {
                    app.envs.push((k.to_string(), vars));
                }
            }
            "instances" if dump => {} // one dump entry is one process; merged later
            "instances" => {
                let n = int_of(v).unwrap_or(0);
                if n > MAX_INSTANCES {
                    app.set("instances", TVal::Int(MAX_INSTANCES));
                    w.push(format!(
                        "instances {v}: more than citrusd allows; wrote instances = {MAX_INSTANCES}"
                    ));
                } else if n >= 1 {
                    app.set("instances", TVal::Int(n));
                } else {
                    app.set("instances", TVal::Int(1));
                    w.push(format!(
                        "instances {v}: Citrus does not size by CPU count; wrote instances = 1, set it by hand"
                    ));
                }
            }
            "exec_mode" => match v.as_str().unwrap_or_default() {
                "cluster" | "cluster_mode" => w.push(
                    "exec_mode \"cluster\": Citrus runs N independent instances with no shared port \
                     (NODE_APP_INSTANCE is still set)"
                        .to_string(),
                ),
                "fork" | "fork_mode" => {}
                _ => w.push(format!("exec_mode {v} is unknown; dropped")),
            },
            "autorestart" => autorestart_off = as_bool(v) == Some(false),
            "stop_exit_codes" => {
                let codes: Vec<i64> = match v {
                    Value::Array(a) => a.iter().filter_map(int_of).collect(),
                    other => int_of(other).into_iter().collect(),
                };
                if codes.contains(&0) {
                    on_failure = true;
                    w.push(format!(
                        "stop_exit_codes {v}: Citrus has no per-code list; wrote restart = \"on-failure\""
                    ));
                } else {
                    w.push(format!(
                        "stop_exit_codes {v}: Citrus has no per-code list; dropped"
                    ));
                }
            }
            "max_restarts" => match int_of(v) {
                Some(n) if n >= 0 => app.set("max_restarts", TVal::Int(n)),
                _ => w.push(format!("max_restarts {v} is not a count; dropped")),
            },
            k @ ("min_uptime" | "restart_delay" | "exp_backoff_restart_delay" | "kill_timeout") => {
                match duration_ms(v) {
                    Some(ms) => app.set(static_key(k), TVal::Str(format_duration(ms))),
                    None => w.push(format!("{k} {v} is not a duration; dropped")),
                }
            }
            "max_memory_restart" => match size(v) {
                Some(s) => app.set("max_memory_restart", TVal::Str(s)),
                None if is_off(v) => {}
                None => w.push(format!("max_memory_restart {v} is not a size; dropped")),
            },
            "cron_restart" => match v {
                Value::String(s) if !s.trim().is_empty() => {
                    match crate::config::CronSchedule::parse(s.trim()) {
                        Ok(_) => app.set("cron_restart", TVal::Str(s.trim().to_string())),
                        Err(e) => w.push(format!("cron_restart {v}: {e}; dropped")),
                    }
                }
                _ if is_off(v) => {}
                _ => w.push(format!("cron_restart {v} is not a cron expression; dropped")),
            },
            "autostart" => {
                if as_bool(v) == Some(false) {
                    app.set("autostart", TVal::Bool(false));
                }
            }
            "status" if dump => {
                if v.as_str() == Some("stopped") {
                    app.set("autostart", TVal::Bool(false));
                }
            }
            "log_date_format" if !is_off(v) => {
                app.set("log_timestamps", TVal::Bool(true));
                w.push(format!(
                    "log_date_format {v}: Citrus timestamps lines in RFC 3339; wrote log_timestamps = true"
                ));
            }
            "time" if as_bool(v) == Some(true) => {
                app.set("log_timestamps", TVal::Bool(true));
                w.push(
                    "time: Citrus timestamps lines in RFC 3339; wrote log_timestamps = true".to_string(),
                );
            }
            k @ ("out_file" | "error_file" | "log_file") if !is_off(v) => w.push(format!(
                "{k} {v} dropped: logs go to the daemon's log_dir as <app>-out.log and <app>-err.log"
            )),
            "merge_logs" if !dump && !is_off(v) => w.push(
                "merge_logs dropped: logs go to the daemon's log_dir, one file per instance"
                    .to_string(),
            ),
            "watch" if !is_off(v) => {
                w.push("watch dropped: Citrus does not restart on file changes".to_string())
            }
            k @ ("ignore_watch" | "watch_options" | "watch_delay") if !dump && !is_off(v) => {
                w.push(format!("{k} dropped: Citrus does not watch files"))
            }
            "increment_var" if !is_off(v) => w.push(format!(
                "increment_var {v} dropped: each instance gets CITRUS_INSTANCE and NODE_APP_INSTANCE instead"
            )),
            "wait_ready" if as_bool(v) == Some(true) => w.push(
                "wait_ready dropped: Citrus does not listen for process.send('ready'); \
                 use ready = { http = ... }, { tcp = ... } or { notify = true }"
                    .to_string(),
            ),
            "listen_timeout" if !dump => w.push(format!(
                "listen_timeout {v} dropped: see the ready key for readiness checks"
            )),
            "shutdown_with_message" if as_bool(v) == Some(true) => w.push(
                "shutdown_with_message dropped: Citrus stops apps with kill_signal (SIGTERM) \
                 to the process group"
                    .to_string(),
            ),
            "namespace" if !matches!(v.as_str(), Some("default" | "")) => w.push(format!(
                "namespace {v} dropped: Citrus has no namespaces"
            )),
            "treekill" if as_bool(v) == Some(false) => w.push(
                "treekill false dropped: Citrus always stops the whole process group".to_string(),
            ),
            "instance_var" if v.as_str() != Some("NODE_APP_INSTANCE") => w.push(format!(
                "instance_var {v} dropped: Citrus sets NODE_APP_INSTANCE and CITRUS_INSTANCE"
            )),
            "gid" if !dump => {
                w.push(format!("gid {v} dropped: Citrus uses the user's primary group"))
            }
            "filter_env" if !dump && !is_off(v) => w.push(
                "filter_env dropped: Citrus passes apps only the variables the config names \
                 (and inherit_env)"
                    .to_string(),
            ),
            _ if dump => {} // PM2 internals and the shell environment
            // Ecosystem options that are off or at a default that Citrus already has.
            "merge_logs" | "watch" | "ignore_watch" | "watch_options" | "watch_delay"
            | "log_date_format" | "time" | "out_file" | "error_file" | "log_file"
            | "increment_var" | "wait_ready" | "shutdown_with_message" | "namespace"
            | "treekill" | "instance_var" | "filter_env" => {}
            k @ ("vizion" | "source_map_support" | "disable_source_map_support" | "pmx"
            | "automation" | "trace" | "disable_trace" | "force" | "kill_retry_time"
            | "pid_file" | "post_update" | "append_env_to_name" | "log_type" | "disable_logs"
            | "windows_hide") => {
                if !is_off(v) {
                    w.push(format!("{k} dropped: not supported by Citrus"));
                }
            }
            "env_file" => w.push(format!(
                "env_file {v} dropped: not a PM2 option; Citrus reads env_file, set it by hand if you meant it"
            )),
            k => w.push(format!("unknown PM2 option {k:?} dropped")),
        }
    }
    if autorestart_off {
        app.set("restart", TVal::Str("never".to_string()));
    } else if on_failure {
        app.set("restart", TVal::Str("on-failure".to_string()));
    }

    Ok(Draft {
        name,
        app,
        warnings: w,
        from_dump: dump,
        processes: 1,
    })
}

/// Renames PM2 aliases and camelCase keys to one spelling. In a dump, `pm_exec_path` and `pm_cwd`
/// (PM2's resolved values) win over `script` and `cwd`.
fn canonical_keys(obj: &Map<String, Value>, dump: bool, w: &mut Vec<String>) -> Map<String, Value> {
    let mut out = Map::new();
    for (raw, v) in obj {
        let snake = if !dump
            && raw.starts_with(|c: char| c.is_ascii_lowercase())
            && raw.chars().all(|c| c.is_ascii_alphanumeric())
            && raw.chars().any(|c| c.is_ascii_uppercase())
        {
            raw.chars().fold(String::new(), |mut s, c| {
                if c.is_ascii_uppercase() {
                    s.push('_');
                }
                s.push(c.to_ascii_lowercase());
                s
            })
        } else {
            raw.clone()
        };
        let canon = match snake.as_str() {
            "exec_interpreter" => "interpreter",
            "node_args" => "interpreter_args",
            "pm_exec_path" if dump => "script",
            "pm_cwd" if dump => "cwd",
            "err_file" | "error" | "err" if !dump => "error_file",
            "output" | "out" if !dump => "out_file",
            "log" if !dump => "log_file",
            "combine_logs" => "merge_logs",
            "cron" => "cron_restart",
            "pid" if !dump => "pid_file",
            other => other,
        }
        .to_string();
        if dump && raw.starts_with("pm_") {
            out.insert(canon, v.clone());
        } else if out.contains_key(&canon) {
            if !dump {
                w.push(format!("{raw:?} repeats {canon:?}; ignored"));
            }
        } else {
            out.insert(canon, v.clone());
        }
    }
    out
}

/// Builds the argv: interpreter, its arguments, the script, then the script's arguments.
fn command(
    m: &Map<String, Value>,
    script: &str,
    dump: bool,
    w: &mut Vec<String>,
) -> Result<Vec<String>, String> {
    let mut script = script.to_string();
    let mut args = argv(m.get("args"), "args")?;
    // `script: "npm run start"`: PM2 users write commands here; Citrus wants argv.
    if !dump && script.contains(char::is_whitespace) {
        let mut words = split_shell_words(&script).map_err(|e| format!("\"script\": {e}"))?;
        if words.is_empty() {
            return Err("\"script\" is empty".to_string());
        }
        let rest = words.split_off(1);
        if !rest.is_empty() {
            w.push(format!(
                "script {script:?} split into argv {:?}; check it",
                [&words[..], &rest[..]].concat()
            ));
        }
        script = words.remove(0);
        args.splice(0..0, rest);
    }

    let interpreter = match m.get("interpreter") {
        Some(Value::String(i)) if i == "none" || i.is_empty() => None,
        Some(Value::String(i)) if i.starts_with("node@") => {
            w.push(format!(
                "interpreter {i:?}: Citrus has no per-app Node version; wrote \"node\""
            ));
            Some("node".to_string())
        }
        Some(Value::String(i)) => Some(i.clone()),
        None | Some(Value::Null) => default_interpreter(&script).map(str::to_string),
        Some(other) => {
            return Err(format!(
                "\"interpreter\" must be a string, found {}",
                kind(other)
            ))
        }
    };
    let interpreter_args = argv(m.get("interpreter_args"), "interpreter_args")?;

    let mut out = Vec::new();
    match interpreter {
        Some(i) => {
            out.push(i);
            out.extend(interpreter_args);
        }
        None if !interpreter_args.is_empty() => w.push(format!(
            "interpreter_args {interpreter_args:?} dropped: {script:?} runs without an interpreter"
        )),
        None => {}
    }
    out.push(script);
    out.extend(args);
    Ok(out)
}

/// For a bare program name in a dump, the nvm/volta/fnm/asdf directory on PM2's `PATH` it ran from.
fn version_manager_dir(m: &Map<String, Value>, program: &str) -> Option<String> {
    if program.contains('/') {
        return None;
    }
    let path = m.get("env")?.get("PATH")?.as_str()?;
    path.split(':')
        .find(|dir| {
            ["/.nvm/", "/.volta/", "/fnm", "/.asdf/", "/.n/"]
                .iter()
                .any(|vm| dir.contains(vm))
        })
        .map(str::to_string)
}

/// PM2's interpreter for a script extension; `None` runs the script itself.
fn default_interpreter(script: &str) -> Option<&'static str> {
    let ext = Path::new(script)
        .extension()?
        .to_str()?
        .to_ascii_lowercase();
    Some(match ext.as_str() {
        "js" | "mjs" | "cjs" => "node",
        "py" => "python3",
        "sh" => "bash",
        "rb" => "ruby",
        "php" => "php",
        "pl" => "perl",
        "coffee" => "coffee",
        _ => return None,
    })
}

/// An argument list: a shell-words string or an array of scalars.
fn argv(v: Option<&Value>, key: &str) -> Result<Vec<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => split_shell_words(s).map_err(|e| format!("{key:?}: {e}")),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                scalar_text(i)
                    .ok_or_else(|| format!("{key:?} must hold strings, found {}", kind(i)))
            })
            .collect(),
        Some(other) => Ok(vec![scalar_text(other).ok_or_else(|| {
            format!("{key:?} must be a string or a list, found {}", kind(other))
        })?]),
    }
}

/// Splits a command line like a POSIX shell: whitespace separates words; single quotes are literal;
/// in double quotes `\` escapes `"`, `\`, `$` and `` ` ``; outside quotes `\` escapes any character.
/// No expansion of any kind.
fn split_shell_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unterminated single quote".to_string()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("unterminated double quote".to_string()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("unterminated double quote".to_string()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    cur.push(c);
                }
                None => {
                    in_word = true;
                    cur.push('\\');
                }
            },
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Converts an `env`/`env_<NAME>` object to string pairs. In a dump, `env` holds the whole environment
/// PM2 ran with: the shell's variables and PM2's own are left out, with one summary warning.
fn env_table(
    table: &str,
    v: &Value,
    dump: bool,
    app_name: &str,
    w: &mut Vec<String>,
) -> Vec<(String, String)> {
    let Value::Object(vars) = v else {
        w.push(format!("{table} {v} is not a table of variables; dropped"));
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut inherited = Vec::new();
    for (k, val) in vars {
        if dump {
            // PM2 also stores module configuration as `"<name>": "{...}"`.
            let pm2_conf = k == app_name && val.as_str().is_some_and(|s| s.starts_with('{'));
            if is_shell_var(k) || pm2_conf || val.is_object() || val.is_array() {
                inherited.push(k.as_str());
                continue;
            }
        }
        if k.is_empty() || k.contains(['=', '\0']) {
            w.push(format!(
                "{table}: variable name {k:?} is not valid; dropped"
            ));
            continue;
        }
        let text = match val {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => {
                w.push(format!("{table}.{k} is null; dropped"));
                continue;
            }
            other => {
                w.push(format!(
                    "{table}.{k} is {}, not a string; dropped",
                    kind(other)
                ));
                continue;
            }
        };
        if text.contains('\0') {
            w.push(format!("{table}.{k} contains a NUL byte; dropped"));
            continue;
        }
        out.push((k.clone(), text));
    }
    if !inherited.is_empty() {
        let shown: Vec<&str> = inherited.iter().take(5).copied().collect();
        let more = if inherited.len() > shown.len() {
            ", ..."
        } else {
            ""
        };
        w.push(format!(
            "{table}: left out {} variables of PM2's own environment ({}{more})",
            inherited.len(),
            shown.join(", ")
        ));
    }
    out
}

/// Variables of the shell, the login session, systemd or PM2, not of the app.
fn is_shell_var(k: &str) -> bool {
    const EXACT: &[&str] = &[
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "PWD",
        "OLDPWD",
        "LANG",
        "LANGUAGE",
        "TERM",
        "COLORTERM",
        "SHLVL",
        "_",
        "PS1",
        "PS2",
        "MAIL",
        "HOSTNAME",
        "LS_COLORS",
        "LESSOPEN",
        "LESSCLOSE",
        "DISPLAY",
        "MOTD_SHOWN",
        "DBUS_SESSION_BUS_ADDRESS",
        "INVOCATION_ID",
        "JOURNAL_STREAM",
        "NOTIFY_SOCKET",
        "SYSTEMD_EXEC_PID",
        "TMUX",
        "TMUX_PANE",
        "NODE_APP_INSTANCE",
        "unique_id",
    ];
    const PREFIXES: &[&str] = &[
        "LC_",
        "PM2_",
        "pm_",
        "XDG_",
        "SSH_",
        "SUDO_",
        "NVM_",
        "TERM_",
        "NODE_CHANNEL_",
    ];
    EXACT.contains(&k) || PREFIXES.iter().any(|p| k.starts_with(p))
}

/// A duration in ms: a number of ms, or a string like `"1000"`, `"10s"`, `"1.5m"`, `"2h"`.
fn duration_ms(v: &Value) -> Option<u64> {
    let (num, unit) = match v {
        Value::Number(n) => (n.as_f64()?, ""),
        Value::String(s) => {
            let s = s.trim();
            let i = s
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(s.len());
            (s[..i].parse::<f64>().ok()?, s[i..].trim())
        }
        _ => return None,
    };
    let factor = match unit {
        "" | "ms" => 1.0,
        "s" => 1_000.0,
        "m" | "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return None,
    };
    let ms = num * factor;
    (0.0..1e15).contains(&ms).then(|| ms.round() as u64)
}

/// Writes a duration in its largest exact unit: 10000 → "10s", 1500 → "1500ms", 0 → "0s".
fn format_duration(ms: u64) -> String {
    crate::config::format_duration(std::time::Duration::from_millis(ms))
}

/// A size as Citrus writes it: `"1G"`, `"300M"`, `"200K"`, or bytes as `"N"` (PM2 units are 1024-based).
fn size(v: &Value) -> Option<String> {
    let (num, unit) = match v {
        Value::Number(n) => (n.as_f64()?, String::new()),
        Value::String(s) => {
            let s = s.trim();
            let i = s
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(s.len());
            let unit = s[i..].trim().to_ascii_uppercase();
            let unit = match unit.as_str() {
                "B" => String::new(),
                u if u.len() == 2 && u.ends_with('B') => u[..1].to_string(),
                u => u.to_string(),
            };
            (s[..i].parse::<f64>().ok()?, unit)
        }
        _ => return None,
    };
    let factor: f64 = match unit.as_str() {
        "" => 1.0,
        "K" => 1024.0,
        "M" => 1024.0 * 1024.0,
        "G" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    if !(num.is_finite() && num > 0.0 && num * factor < 1e18) {
        return None;
    }
    if num.fract() == 0.0 {
        Some(format!("{}{unit}", num as u64))
    } else {
        Some(format!("{}", (num * factor).round() as u64))
    }
}

/// An integer from a number or a numeric string.
fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s == "true" => Some(true),
        Value::String(s) if s == "false" => Some(false),
        _ => None,
    }
}

/// Whether an option is unset in effect: null, false, 0, "" or an empty list.
fn is_off(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || s == "false",
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn static_key(k: &str) -> &'static str {
    KEY_ORDER.iter().find(|o| **o == k).copied().unwrap_or("")
}

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

fn render(source_name: &str, apps: &[(String, App)]) -> String {
    let source: String = source_name
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out = format!("# Converted from {source} by citrusctl import-pm2\n");
    for (name, app) in apps {
        let table = format!("apps.{}", toml_key(name));
        let _ = writeln!(out, "\n[{table}]");
        let mut keys = app.keys.clone();
        keys.sort_by_key(|(k, _)| KEY_ORDER.iter().position(|o| o == k));
        for (k, v) in &keys {
            let _ = writeln!(out, "{k} = {}", toml_value(v));
        }
        let mut sections = Vec::new();
        for (env, vars) in &app.envs {
            let pairs: Vec<String> = vars
                .iter()
                .map(|(k, v)| format!("{} = {}", toml_key(k), toml_str(v)))
                .collect();
            let line = format!("{} = {{ {} }}", toml_key(env), pairs.join(", "));
            if line.len() <= INLINE_MAX {
                let _ = writeln!(out, "{line}");
            } else {
                sections.push((env, pairs));
            }
        }
        for (env, pairs) in sections {
            let _ = writeln!(out, "\n[{table}.{}]", toml_key(env));
            for pair in pairs {
                let _ = writeln!(out, "{pair}");
            }
        }
    }
    out
}

fn toml_value(v: &TVal) -> String {
    match v {
        TVal::Str(s) => toml_str(s),
        TVal::Int(n) => n.to_string(),
        TVal::Bool(b) => b.to_string(),
        TVal::List(items) => {
            let items: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
            format!("[{}]", items.join(", "))
        }
    }
}

/// A TOML basic string with every character TOML forbids escaped.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A key, bare when TOML allows it, quoted otherwise.
fn toml_key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        k.to_string()
    } else {
        toml_str(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(json: &str) -> (Conversion, toml::Table) {
        let conv = convert(json, "ecosystem.json").expect("converts");
        let table: toml::Table = conv
            .toml
            .parse()
            .unwrap_or_else(|e| panic!("output is not TOML: {e}\n{}", conv.toml));
        (conv, table)
    }

    fn app<'a>(table: &'a toml::Table, name: &str) -> &'a toml::Table {
        table["apps"][name]
            .as_table()
            .unwrap_or_else(|| panic!("no [apps.{name}] in {table:?}"))
    }

    fn strs(v: &toml::Value) -> Vec<&str> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| s.as_str().expect("string"))
            .collect()
    }

    #[test]
    fn design_doc_ecosystem() {
        let (conv, t) = ok(
            r#"{"apps":[{"name":"amexing-api","script":"./src/index.js","instances":1,"exec_mode":"fork",
 "env_production":{"NODE_ENV":"production","PORT":1338},"autorestart":true,"max_restarts":10,
 "min_uptime":"10s","max_memory_restart":"1G"}]}"#,
        );
        assert!(conv
            .toml
            .starts_with("# Converted from ecosystem.json by citrusctl import-pm2\n"));
        assert!(conv
            .toml
            .contains("env_production = { NODE_ENV = \"production\", PORT = \"1338\" }"));
        let a = app(&t, "amexing-api");
        assert_eq!(strs(&a["command"]), ["node", "./src/index.js"]);
        assert_eq!(a["instances"].as_integer(), Some(1));
        assert_eq!(a["max_restarts"].as_integer(), Some(10));
        assert_eq!(a["min_uptime"].as_str(), Some("10s"));
        assert_eq!(a["max_memory_restart"].as_str(), Some("1G"));
        let prod = a["env_production"].as_table().unwrap();
        assert_eq!(prod["NODE_ENV"].as_str(), Some("production"));
        assert_eq!(prod["PORT"].as_str(), Some("1338"));
        assert!(
            !a.contains_key("restart"),
            "autorestart true is the default"
        );
        assert_eq!(a.len(), 6, "{a:?}");
        // Only the relative-script note; exec_mode fork and autorestart true are silent.
        assert_eq!(conv.warnings.len(), 1, "{:?}", conv.warnings);
        assert!(conv.warnings[0].starts_with("amexing-api: no \"cwd\""));
    }

    /// What `pm2 save` writes: flattened pm2_env objects, the environment both under `env` and at the
    /// top level, and PM2's bookkeeping around it.
    const DUMP: &str = r#"[
  {
    "name": "api",
    "pm_exec_path": "/home/ubuntu/api/src/index.js",
    "pm_cwd": "/home/ubuntu/api",
    "cwd": "/home/ubuntu/api",
    "exec_interpreter": "node",
    "node_args": ["--max-old-space-size=512"],
    "args": ["--port", "3000"],
    "exec_mode": "fork_mode",
    "autorestart": true,
    "autostart": true,
    "max_restarts": 16,
    "min_uptime": 1000,
    "restart_delay": 0,
    "kill_timeout": 1600,
    "max_memory_restart": 314572800,
    "vizion": true,
    "watch": false,
    "merge_logs": true,
    "treekill": true,
    "instance_var": "NODE_APP_INSTANCE",
    "namespace": "default",
    "username": "ubuntu",
    "windowsHide": true,
    "kill_retry_time": 100,
    "pmx": true,
    "automation": true,
    "filter_env": [],
    "status": "online",
    "pm_out_log_path": "/home/ubuntu/.pm2/logs/api-out.log",
    "pm_err_log_path": "/home/ubuntu/.pm2/logs/api-err.log",
    "pm_pid_path": "/home/ubuntu/.pm2/pids/api-0.pid",
    "km_link": false,
    "vizion_running": false,
    "NODE_APP_INSTANCE": 0,
    "NODE_ENV": "production",
    "PATH": "/home/ubuntu/.nvm/versions/node/v20.11.0/bin:/usr/local/bin:/usr/bin:/bin",
    "HOME": "/home/ubuntu",
    "PM2_HOME": "/home/ubuntu/.pm2",
    "unique_id": "9f0c3a1e-6f1e-4c39-9d3b-1a8a7e3f2b10",
    "created_at": 1700000000000,
    "pm_uptime": 1700000005000,
    "restart_time": 3,
    "unstable_restarts": 0,
    "version": "1.4.2",
    "node_version": "20.11.0",
    "versioning": null,
    "axm_actions": [],
    "axm_monitor": {"Heap Size": {"value": "40.12", "unit": "MiB"}},
    "axm_options": {"tracing": false},
    "axm_dynamic": {},
    "env": {
      "NODE_ENV": "production",
      "DATABASE_URL": "postgres://api@localhost/api",
      "PORT": "3000",
      "PATH": "/home/ubuntu/.nvm/versions/node/v20.11.0/bin:/usr/local/bin:/usr/bin:/bin",
      "HOME": "/home/ubuntu",
      "USER": "ubuntu",
      "SHELL": "/bin/bash",
      "PWD": "/home/ubuntu/api",
      "OLDPWD": "/home/ubuntu",
      "LANG": "C.UTF-8",
      "LC_ALL": "C.UTF-8",
      "TERM": "xterm-256color",
      "SHLVL": "1",
      "_": "/usr/bin/pm2",
      "PM2_HOME": "/home/ubuntu/.pm2",
      "PM2_USAGE": "CLI",
      "PM2_JSON_PROCESSING": "true",
      "pm_id": 0,
      "NODE_APP_INSTANCE": 0,
      "unique_id": "9f0c3a1e-6f1e-4c39-9d3b-1a8a7e3f2b10",
      "api": "{}",
      "axm_options": {"tracing": false}
    }
  },
  {
    "name": "worker",
    "pm_exec_path": "/home/ubuntu/worker/run.sh",
    "pm_cwd": "/home/ubuntu/worker",
    "exec_interpreter": "bash",
    "node_args": [],
    "args": ["--queue", "mail jobs"],
    "exec_mode": "fork_mode",
    "autorestart": false,
    "status": "stopped",
    "vizion": true,
    "pm_out_log_path": "/home/ubuntu/.pm2/logs/worker-out.log",
    "HOME": "/home/ubuntu",
    "env": {
      "QUEUE_URL": "redis://127.0.0.1:6379/2",
      "HOME": "/home/ubuntu",
      "PATH": "/usr/bin:/bin",
      "SSH_CONNECTION": "10.0.0.2 5000 10.0.0.3 22",
      "XDG_RUNTIME_DIR": "/run/user/1000"
    }
  }
]"#;

    #[test]
    fn dump_keeps_only_the_apps_own_settings() {
        let conv = convert(DUMP, "dump.pm2").unwrap();
        let t: toml::Table = conv.toml.parse().unwrap();
        let api = app(&t, "api");
        assert_eq!(
            strs(&api["command"]),
            [
                "node",
                "--max-old-space-size=512",
                "/home/ubuntu/api/src/index.js",
                "--port",
                "3000"
            ]
        );
        assert_eq!(api["cwd"].as_str(), Some("/home/ubuntu/api"));
        assert_eq!(api["max_restarts"].as_integer(), Some(16));
        assert_eq!(api["min_uptime"].as_str(), Some("1s"));
        assert_eq!(api["restart_delay"].as_str(), Some("0s"));
        assert_eq!(api["kill_timeout"].as_str(), Some("1600ms"));
        assert_eq!(api["max_memory_restart"].as_str(), Some("314572800"));
        assert!(!api.contains_key("autostart") && !api.contains_key("restart"));
        let env = api["env"].as_table().unwrap();
        let keys: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(keys, ["DATABASE_URL", "NODE_ENV", "PORT"]);

        let worker = app(&t, "worker");
        assert_eq!(
            strs(&worker["command"]),
            ["bash", "/home/ubuntu/worker/run.sh", "--queue", "mail jobs"]
        );
        assert_eq!(worker["autostart"].as_bool(), Some(false));
        assert_eq!(worker["restart"].as_str(), Some("never"));
        let env = worker["env"].as_table().unwrap();
        assert_eq!(env.len(), 1);
        assert_eq!(env["QUEUE_URL"].as_str(), Some("redis://127.0.0.1:6379/2"));

        // PM2 internals are not reported; only the environment summaries are.
        assert_eq!(conv.warnings.len(), 3, "{:?}", conv.warnings);
        assert_eq!(
            conv.warnings[0],
            "api: \"node\" came from /home/ubuntu/.nvm/versions/node/v20.11.0/bin on PM2's PATH; \
             citrusd's PATH may lack it: write /home/ubuntu/.nvm/versions/node/v20.11.0/bin/node if so"
        );
        assert!(conv.warnings[1].starts_with("api: env: left out 19 variables"));
        assert!(conv.warnings[2].starts_with("worker: env: left out 4 variables"));
    }

    #[test]
    fn jlist_shape_and_cluster_instances_merge() {
        let proc = |id: u32| {
            format!(
                r#"{{"pid": {pid}, "name": "web", "pm_id": {id}, "monit": {{"memory": 1, "cpu": 0}},
                   "pm2_env": {{"pm_exec_path": "/srv/web/server.js", "pm_cwd": "/srv/web",
                   "exec_interpreter": "node", "exec_mode": "cluster_mode", "instances": 2,
                   "status": "online", "NODE_APP_INSTANCE": {id},
                   "env": {{"NODE_ENV": "production", "NODE_APP_INSTANCE": {id}, "PATH": "/bin"}}}}}}"#,
                pid = 100 + id
            )
        };
        let json = format!("[{}, {}]", proc(0), proc(1));
        let conv = convert(&json, "jlist.json").unwrap();
        let t: toml::Table = conv.toml.parse().unwrap();
        let web = app(&t, "web");
        assert_eq!(strs(&web["command"]), ["node", "/srv/web/server.js"]);
        assert_eq!(web["instances"].as_integer(), Some(2));
        assert_eq!(t["apps"].as_table().unwrap().len(), 1);
        let w = conv.warnings.join("\n");
        assert!(
            w.contains("web: 2 PM2 processes merged into instances = 2"),
            "{w}"
        );
        assert!(w.contains("exec_mode \"cluster\""), "{w}");
    }

    #[test]
    fn args_string_is_split_like_a_shell() {
        let (_, t) = ok(r#"{"apps":[{"name":"a","script":"server.py","cwd":"/srv",
            "args":"--name 'hello world' --msg=\"say \\\"hi\\\" \\\\ now\" plain\\ space ''"}]}"#);
        assert_eq!(
            strs(&app(&t, "a")["command"]),
            [
                "python3",
                "server.py",
                "--name",
                "hello world",
                "--msg=say \"hi\" \\ now",
                "plain space",
                ""
            ]
        );
    }

    #[test]
    fn shell_words() {
        let split = |s: &str| split_shell_words(s).unwrap();
        assert_eq!(split("  a  b\tc \n"), ["a", "b", "c"]);
        assert_eq!(split(r#"a"b c"'d e'f"#), ["ab cd ef"]);
        assert_eq!(split(r#""\n\$x""#), ["\\n$x"]);
        assert_eq!(split(r"a\"), ["a\\"]);
        assert!(split("").is_empty());
        assert!(split_shell_words("'open").is_err());
        assert!(split_shell_words("\"open").is_err());
    }

    #[test]
    fn interpreters_and_commands() {
        let (conv, t) = ok(r#"[
            {"name":"npm-app","script":"npm","args":"start","cwd":"/srv/a"},
            {"name":"bin","script":"/usr/local/bin/server","interpreter":"none","node_args":"--x","cwd":"/"},
            {"name":"run","script":"npm run serve","cwd":"/srv/b"},
            {"name":"ver","script":"app.mjs","interpreter":"node@18.20.0","interpreterArgs":["--inspect"],"cwd":"/"},
            {"name":"sh","script":"start.sh","cwd":"/"}
        ]"#);
        assert_eq!(strs(&app(&t, "npm-app")["command"]), ["npm", "start"]);
        assert_eq!(strs(&app(&t, "bin")["command"]), ["/usr/local/bin/server"]);
        assert_eq!(strs(&app(&t, "run")["command"]), ["npm", "run", "serve"]);
        assert_eq!(
            strs(&app(&t, "ver")["command"]),
            ["node", "--inspect", "app.mjs"]
        );
        assert_eq!(strs(&app(&t, "sh")["command"]), ["bash", "start.sh"]);
        let w = conv.warnings.join("\n");
        assert!(w.contains("bin: interpreter_args [\"--x\"] dropped"), "{w}");
        assert!(w.contains("run: script \"npm run serve\" split"), "{w}");
        assert!(w.contains("ver: interpreter \"node@18.20.0\""), "{w}");
        assert_eq!(conv.warnings.len(), 3, "{w}");
    }

    #[test]
    fn names_are_sanitised_and_deduplicated() {
        let (conv, t) = ok(r#"{"apps":[
            {"name":"My API (prod)","script":"a","cwd":"/"},
            {"name":"api","script":"a","cwd":"/"},
            {"name":"api","script":"b","cwd":"/"},
            {"name":"api","script":"c","cwd":"/"},
            {"name":"_api.v2","script":"d","cwd":"/"},
            {"script":"/srv/bin/worker.js","cwd":"/"},
            {"name":"***","script":"e","cwd":"/"}
        ]}"#);
        let names: Vec<&str> = t["apps"]
            .as_table()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for n in [
            "My-API-prod",
            "api",
            "api-2",
            "api-3",
            "api.v2",
            "worker",
            "app",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        assert!(conv.toml.contains("[apps.\"api.v2\"]"));
        // Input order is kept.
        let first = conv.toml.find("[apps.My-API-prod]").unwrap();
        let last = conv.toml.find("[apps.app]").unwrap();
        assert!(first < last);
        let w = conv.warnings.join("\n");
        assert!(w.contains(r#"My-API-prod: app name "My API (prod)" is not valid in Citrus; renamed to "My-API-prod""#), "{w}");
        assert!(
            w.contains(r#"api-2: duplicate app name "api"; renamed to "api-2""#),
            "{w}"
        );
        assert!(
            w.contains(r#"api-3: duplicate app name "api"; renamed to "api-3""#),
            "{w}"
        );
        assert_eq!(sanitise_name(&"x".repeat(80)).len(), NAME_MAX);
        let used: HashSet<String> = [("y".repeat(64))].into();
        assert_eq!(unique_name(&"y".repeat(64), &used).len(), NAME_MAX);
    }

    #[test]
    fn javascript_file_gets_the_conversion_hint() {
        let js = "module.exports = {\n  apps: [{ name: 'api', script: './index.js' }]\n};\n";
        let err = convert(js, "ecosystem.config.js").unwrap_err();
        assert!(matches!(err, ImportError::JavaScript { .. }));
        let msg = err.to_string();
        assert!(msg.starts_with("ecosystem.config.js: "), "{msg}");
        assert!(
            msg.contains(r#"node -e 'console.log(JSON.stringify(require("./ecosystem.config.js")))' > ecosystem.json"#),
            "{msg}"
        );
        // The file name alone is not needed to recognise it.
        let err = convert(js, "config.txt").unwrap_err();
        assert!(matches!(err, ImportError::JavaScript { .. }));
    }

    #[test]
    fn malformed_json_names_file_line_and_column() {
        let err = convert(
            "{\"apps\": [\n  {\"name\": \"a\",\n   \"script\" \"x\"}\n]}",
            "ecosystem.json",
        )
        .unwrap_err();
        let ImportError::Json { line, column, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!((*line, *column), (3, 13));
        let msg = err.to_string();
        assert!(
            msg.starts_with("ecosystem.json: invalid JSON at line 3, column 13: expected `:`"),
            "{msg}"
        );
    }

    #[test]
    fn app_errors_name_the_index() {
        let err = convert(
            r#"{"apps":[{"script":"a.js"},{"script":"b.js"},{"name":"c"}]}"#,
            "ecosystem.json",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "ecosystem.json: apps[2]: missing \"script\""
        );
        let err = convert(r#"[{"name":"x","pm_exec_path":5}]"#, "dump.pm2").unwrap_err();
        assert_eq!(
            err.to_string(),
            "dump.pm2: [0]: \"script\" must be a string, found a number"
        );
        let err = convert(r#"[{"script":"a","args":"'oops"}]"#, "x.json").unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.json: [0]: \"args\": unterminated single quote"
        );
    }

    #[test]
    fn shape_errors() {
        for (json, want) in [
            ("{\"apps\": []}", "e.json: no apps to convert"),
            ("[]", "e.json: no apps to convert"),
            ("{\"apps\": 3}", "e.json: \"apps\" must be a list of apps, found a number"),
            ("\"hi\"", "e.json: expected an ecosystem ({\"apps\": [...]}), a list of apps or a dump.pm2 list, found a string"),
            ("[1]", "e.json: [0]: expected an object, found a number"),
        ] {
            assert_eq!(convert(json, "e.json").unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn hostile_strings_round_trip() {
        let values = [
            "plain",
            "with \"quotes\" and 'single'",
            "line1\nline2\r\nline3",
            r"C:\path\to\file \\ \u0041 \n",
            "tab\tbell\u{7}esc\u{1b}del\u{7f}c1\u{85}",
            "\"\"\" ''' ]] [[ # = { }",
            "ünïcødé ✓ 🍋",
            "",
        ];
        let mut env = Map::new();
        for (i, v) in values.iter().enumerate() {
            env.insert(format!("K{i}"), Value::String(v.to_string()));
        }
        let keys = [
            "MY.KEY",
            "my-key",
            "with space",
            "quo\"te",
            "back\\slash",
            "new\nline",
        ];
        for k in keys {
            env.insert(k.to_string(), Value::String(format!("v-{k}")));
        }
        let json = serde_json::json!({"apps": [{
            "name": "hostile",
            "script": "/bin/echo",
            "cwd": "/tmp/\"x\"\n",
            "args": ["a\"b", "c\\d", "e\nf"],
            "env": env,
            "env_weird.name": {"A": "1"},
        }]});
        let conv = convert(&json.to_string(), "evil\nname\"].json").unwrap();
        let t: toml::Table = conv
            .toml
            .parse()
            .unwrap_or_else(|e| panic!("{e}\n{}", conv.toml));
        let a = app(&t, "hostile");
        assert_eq!(strs(&a["command"]), ["/bin/echo", "a\"b", "c\\d", "e\nf"]);
        assert_eq!(a["cwd"].as_str(), Some("/tmp/\"x\"\n"));
        let out = a["env"].as_table().unwrap();
        assert_eq!(out.len(), env.len());
        for (k, v) in &env {
            assert_eq!(out[k].as_str(), v.as_str(), "{k:?}");
        }
        assert_eq!(a["env_weird.name"]["A"].as_str(), Some("1"));
        assert!(conv
            .toml
            .starts_with("# Converted from evil name\"].json by"));
        // A long env table goes into its own section.
        assert!(
            conv.toml.contains("\n[apps.hostile.env]\n"),
            "{}",
            conv.toml
        );
    }

    #[test]
    fn option_mapping_and_warnings() {
        let (conv, t) = ok(r#"{"apps":[{
            "name":"x","script":"x.js","cwd":"/srv/x",
            "instances":"max","exec_mode":"cluster","autorestart":false,
            "stop_exit_codes":[0],"restart_delay":60000,"exp_backoff_restart_delay":150,
            "kill_timeout":"3000","minUptime":"1.5s","max_memory_restart":"512mb",
            "cron_restart":"0 3 * * *","autostart":false,"log_date_format":"YYYY-MM-DD",
            "out_file":"/var/log/x.log","error_file":"/var/log/x.err","merge_logs":true,
            "watch":["src"],"ignore_watch":["node_modules"],"time":true,"vizion":false,
            "source_map_support":true,"increment_var":"PORT","wait_ready":true,
            "listen_timeout":8000,"shutdown_with_message":true,"namespace":"team",
            "uid":"www-data","gid":"www-data","frobnicate":1,"env_file":".env",
            "env":{"N":1.5,"B":true,"O":{"a":1},"Z":null}
        },{
            "name":"y","script":"y","cwd":"/","uid":1000,"stop_exit_codes":3,"instances":-1
        }]}"#);
        let x = app(&t, "x");
        assert_eq!(x["instances"].as_integer(), Some(1));
        assert_eq!(x["restart"].as_str(), Some("never"));
        assert_eq!(x["restart_delay"].as_str(), Some("1m"));
        assert_eq!(x["exp_backoff_restart_delay"].as_str(), Some("150ms"));
        assert_eq!(x["kill_timeout"].as_str(), Some("3s"));
        assert_eq!(x["min_uptime"].as_str(), Some("1500ms"));
        assert_eq!(x["max_memory_restart"].as_str(), Some("512M"));
        assert_eq!(x["cron_restart"].as_str(), Some("0 3 * * *"));
        assert_eq!(x["autostart"].as_bool(), Some(false));
        assert_eq!(x["log_timestamps"].as_bool(), Some(true));
        assert_eq!(x["user"].as_str(), Some("www-data"));
        let env = x["env"].as_table().unwrap();
        assert_eq!(env["N"].as_str(), Some("1.5"));
        assert_eq!(env["B"].as_str(), Some("true"));
        assert_eq!(env.len(), 2);
        let y = app(&t, "y");
        assert_eq!(y["instances"].as_integer(), Some(1));
        assert!(!y.contains_key("user") && !y.contains_key("restart"));

        let w = conv.warnings.join("\n");
        for needle in [
            "x: instances \"max\": Citrus does not size by CPU count",
            "x: exec_mode \"cluster\"",
            "x: stop_exit_codes [0]:",
            "x: log_date_format \"YYYY-MM-DD\"",
            "x: time:",
            "x: out_file \"/var/log/x.log\" dropped",
            "x: error_file \"/var/log/x.err\" dropped",
            "x: merge_logs dropped",
            "x: watch dropped",
            "x: ignore_watch dropped",
            "x: source_map_support dropped",
            "x: increment_var \"PORT\" dropped",
            "x: wait_ready dropped",
            "x: listen_timeout 8000 dropped",
            "x: shutdown_with_message dropped",
            "x: namespace \"team\" dropped",
            "x: gid \"www-data\" dropped",
            "x: unknown PM2 option \"frobnicate\" dropped",
            "x: env_file \".env\" dropped",
            "x: env.O is an object, not a string; dropped",
            "x: env.Z is null; dropped",
            "y: user 1000: Citrus needs a user name",
            "y: stop_exit_codes 3: Citrus has no per-code list; dropped",
            "y: instances -1:",
        ] {
            assert!(w.contains(needle), "missing {needle:?} in\n{w}");
        }
        assert!(!w.contains("vizion"), "vizion false is silent: {w}");
        assert_eq!(conv.warnings.len(), 24, "{w}");
    }

    #[test]
    fn stop_exit_codes_with_zero_means_on_failure() {
        let (_, t) = ok(r#"[{"name":"j","script":"j","cwd":"/","stop_exit_codes":[0, 2]}]"#);
        assert_eq!(app(&t, "j")["restart"].as_str(), Some("on-failure"));
    }

    #[test]
    fn durations_and_sizes() {
        let d = |v: Value| duration_ms(&v).map(format_duration);
        assert_eq!(d(10000.into()).as_deref(), Some("10s"));
        assert_eq!(d(1500.into()).as_deref(), Some("1500ms"));
        assert_eq!(d(60000.into()).as_deref(), Some("1m"));
        assert_eq!(d(0.into()).as_deref(), Some("0s"));
        assert_eq!(d(7_200_000.into()).as_deref(), Some("2h"));
        assert_eq!(d(172_800_000.into()).as_deref(), Some("2d"));
        assert_eq!(d("10s".into()).as_deref(), Some("10s"));
        assert_eq!(d("1000".into()).as_deref(), Some("1s"));
        assert_eq!(d(" 250ms ".into()).as_deref(), Some("250ms"));
        assert_eq!(d("1.5s".into()).as_deref(), Some("1500ms"));
        assert_eq!(d("90m".into()).as_deref(), Some("90m"));
        assert_eq!(d("1h".into()).as_deref(), Some("1h"));
        assert_eq!(d("soon".into()), None);
        assert_eq!(d("10 parsecs".into()), None);
        assert_eq!(d((-5).into()), None);

        let s = |v: Value| size(&v);
        assert_eq!(s("1G".into()).as_deref(), Some("1G"));
        assert_eq!(s("300M".into()).as_deref(), Some("300M"));
        assert_eq!(s("200K".into()).as_deref(), Some("200K"));
        assert_eq!(s("4GB".into()).as_deref(), Some("4G"));
        assert_eq!(s("512mb".into()).as_deref(), Some("512M"));
        assert_eq!(s("1.5G".into()).as_deref(), Some("1610612736"));
        assert_eq!(s("1048576".into()).as_deref(), Some("1048576"));
        assert_eq!(s(1_073_741_824u64.into()).as_deref(), Some("1073741824"));
        assert_eq!(s("1T".into()), None);
        assert_eq!(s(0.into()), None);
    }

    #[test]
    fn toml_quoting() {
        assert_eq!(toml_key("NODE_ENV"), "NODE_ENV");
        assert_eq!(toml_key("my-key"), "my-key");
        assert_eq!(toml_key("MY.KEY"), "\"MY.KEY\"");
        assert_eq!(toml_key(""), "\"\"");
        assert_eq!(toml_str("a\"b\\c\n\u{1}"), r#""a\"b\\c\n\u0001""#);
    }

    #[test]
    fn bom_camel_case_and_single_app_object() {
        let (conv, t) = ok("\u{feff}{\"name\":\"solo\",\"script\":\"s.js\",\"cwd\":\"/\",\"maxMemoryRestart\":\"100M\",\"killTimeout\":5000}");
        let a = app(&t, "solo");
        assert_eq!(a["max_memory_restart"].as_str(), Some("100M"));
        assert_eq!(a["kill_timeout"].as_str(), Some("5s"));
        assert!(conv.warnings.is_empty(), "{:?}", conv.warnings);

        let (conv, _) =
            ok(r#"{"apps":[{"name":"a","script":"a","cwd":"/"}],"deploy":{"production":{}}}"#);
        assert_eq!(
            conv.warnings,
            ["ecosystem.json: top-level \"deploy\" dropped: Citrus deploys with [apps.NAME.deploy]; set it up by hand"]
        );
    }
}

#[cfg(test)]
mod citrusd_accepts {
    use super::*;

    /// Hostile ecosystem entries: whatever import-pm2 makes of them, citrusd must accept it.
    #[test]
    fn every_conversion_is_a_config_citrusd_accepts() {
        let entries = [
            r#"{"name": "a", "script": "x.js", "instances": 0}"#,
            r#"{"name": "a", "script": "x.js", "instances": -1}"#,
            r#"{"name": "a", "script": "x.js", "instances": "max"}"#,
            r#"{"name": "a", "script": "x.js", "instances": 10000000000}"#,
            r#"{"name": "a", "script": "x.js", "env": {"A=B": "1", "": "2", "C\u0000": "3"}}"#,
            r#"{"name": "a", "script": "x.js", "env": {"OK": {"nested": 1}}}"#,
            r#"{"name": "a", "script": "x.js", "max_memory_restart": "abc"}"#,
            r#"{"name": "a", "script": "x.js", "max_memory_restart": -5}"#,
            r#"{"name": "a", "script": "x.js", "cron_restart": "not a cron"}"#,
            r#"{"name": "a", "script": "x.js", "kill_timeout": -5}"#,
            r#"{"name": "a", "script": "x.js", "kill_timeout": 1e300}"#,
            r#"{"name": "a", "script": "x.js", "restart_delay": 1e300}"#,
            r#"{"name": "a", "script": "x.js", "min_uptime": "forever"}"#,
            r#"{"name": "a", "script": "x.js", "max_restarts": -3}"#,
            r#"{"name": "a", "script": "x.js", "max_restarts": 1e12}"#,
            r#"{"name": "all", "script": "x.js"}"#,
            r#"{"name": "", "script": "x.js"}"#,
            r#"{"name": "a", "script": ""}"#,
            r#"{"name": "a", "script": "x.js", "args": ["a\u0000b"]}"#,
            r#"{"name": "a", "script": "x.js", "cwd": ""}"#,
            r#"{"name": "a", "script": "x.js", "kill_signal": "SIGNOPE"}"#,
            r#"{"name": "a", "script": "x.js", "exp_backoff_restart_delay": -100}"#,
            r#"{"name": "a", "script": "x.js", "log_date_format": "YYYY", "time": true}"#,
            r#"{"name": "a", "script": "x.js", "env_production": {"X": "1"}, "env_": {"Y": "2"}}"#,
            r#"{"name": "a", "script": "x.js", "env_a b": {"Y": "2"}}"#,
            r#"{"name": "a", "script": "x.js", "autorestart": "maybe"}"#,
            r#"{"name": "a", "script": "x.js", "user": ""}"#,
            r#"{"name": "a", "script": "x.js", "interpreter": ""}"#,
            r#"{"name": "a", "script": "x.js", "node_args": "--inspect \"unclosed"}"#,
        ];
        let mut failures = Vec::new();
        for entry in entries {
            let json = format!("[{entry}]");
            let Ok(conv) = convert(&json, "ecosystem.json") else {
                continue;
            };
            if let Err(e) = crate::config::Config::parse(
                &conv.toml,
                std::path::Path::new("/etc/citrus/citrusd.toml"),
                None,
            ) {
                failures.push(format!("{entry}\n{}\n=> {e}", conv.toml));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }
}
