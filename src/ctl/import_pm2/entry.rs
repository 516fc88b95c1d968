//! One PM2 app (an ecosystem entry) or process (a dump entry) made into a Citrus app: its options
//! read under one spelling, its command built, then each option mapped onto a Citrus key or
//! dropped; every option dropped or only approximated yields one warning.

use std::path::Path;

use serde_json::{Map, Value};

use super::render::{static_key, App, TVal};
use super::values::{as_bool, duration, int_of, is_off, kind, scalar_text, size};
use crate::config::format_duration;

/// The most instances an imported app gets (citrusd refuses more).
const MAX_INSTANCES: i64 = crate::config::MAX_INSTANCES as i64;

/// Keys read before the options are mapped one by one.
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

/// One converted app, before naming.
pub(super) struct Draft {
    /// The PM2 name, unsanitised.
    pub name: String,
    pub app: App,
    pub warnings: Vec<String>,
    pub from_dump: bool,
    /// Dump processes merged into this app.
    pub processes: i64,
}

/// Converts one app object (ecosystem) or process object (dump); `Err` is the problem text.
pub(super) fn convert_entry(value: &Value) -> Result<Draft, String> {
    let mut warnings = Vec::new();
    let (m, dump) = entry_options(value, &mut warnings)?;
    let script = script(&m, dump)?;
    let name = app_name(&m, &script);
    let argv = checked_command(&m, &script, dump, &mut warnings)?;
    let mut entry = Converting {
        dump,
        app: App::default(),
        warnings,
        autorestart_off: false,
        on_failure: false,
    };
    entry.app.set("command", TVal::List(argv));
    entry.cwd(m.get("cwd"), &script);
    entry.user(&m);
    for (key, v) in &m {
        if v.is_null() || EXPLICIT.contains(&key.as_str()) {
            continue;
        }
        if !entry.option(key, v, &name) {
            entry.warnings.extend(dropped(key, v, dump));
        }
    }
    entry.restart();
    Ok(Draft {
        name,
        app: entry.app,
        warnings: entry.warnings,
        from_dump: dump,
        processes: 1,
    })
}

/// The entry's options under one spelling, and whether it is a dump's process. A `pm2 jlist`
/// object has its options in `pm2_env`, and the process's own fields around it.
fn entry_options(value: &Value, w: &mut Vec<String>) -> Result<(Map<String, Value>, bool), String> {
    let Value::Object(obj) = value else {
        return Err(format!("expected an object, found {}", kind(value)));
    };
    Ok(match obj.get("pm2_env") {
        Some(Value::Object(env)) => {
            let mut merged = env.clone();
            for (k, v) in obj {
                if !matches!(k.as_str(), "pm2_env" | "monit" | "pid" | "pm_id") {
                    merged.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            (canonical_keys(&merged, true, w), true)
        }
        _ => {
            let dump = obj.contains_key("pm_exec_path") && !obj.contains_key("script");
            (canonical_keys(obj, dump, w), dump)
        }
    })
}

/// `script` (a dump's `pm_exec_path`): a string that is not blank.
fn script(m: &Map<String, Value>, dump: bool) -> Result<String, String> {
    match m.get("script") {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err("\"script\" is empty".to_string()),
        Some(other) => Err(format!(
            "\"script\" must be a string, found {}",
            kind(other)
        )),
        None if dump => Err("missing \"pm_exec_path\"".to_string()),
        None => Err("missing \"script\"".to_string()),
    }
}

/// The PM2 name, else the script's file name without its extension.
fn app_name(m: &Map<String, Value>, script: &str) -> String {
    match m.get("name").and_then(scalar_text) {
        Some(n) if !n.is_empty() => n,
        _ => Path::new(script)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "app".to_string()),
    }
}

/// The argv for `command`, checked as citrusd checks it. A dump's bare program name that PM2
/// found through a Node version manager gets a warning: citrusd's `PATH` may lack that directory.
fn checked_command(
    m: &Map<String, Value>,
    script: &str,
    dump: bool,
    w: &mut Vec<String>,
) -> Result<Vec<String>, String> {
    let argv = command(m, script, dump, w)?;
    crate::config::check_command(&argv)?;
    if dump {
        if let Some(dir) = version_manager_dir(m, &argv[0]) {
            w.push(format!(
                "{:?} came from {dir} on PM2's PATH; citrusd's PATH may lack it: write {dir}/{} if so",
                argv[0], argv[0]
            ));
        }
    }
    Ok(argv)
}

/// An app being converted: the Citrus keys written so far, the warnings, and what decides its
/// `restart` once every option is read.
struct Converting {
    /// A dump's process rather than an ecosystem entry.
    dump: bool,
    app: App,
    warnings: Vec<String>,
    /// `autorestart: false`.
    autorestart_off: bool,
    /// `stop_exit_codes` holds 0: restart only after a failure.
    on_failure: bool,
}

impl Converting {
    fn warn(&mut self, warning: impl Into<String>) {
        self.warnings.push(warning.into());
    }

    /// `cwd`. An ecosystem entry without one ran its relative script from the ecosystem file's
    /// directory, which the converted config does not know: a warning says to set it.
    fn cwd(&mut self, cwd: Option<&Value>, script: &str) {
        match cwd {
            Some(Value::String(cwd)) if !cwd.is_empty() => {
                self.app.set("cwd", TVal::Str(cwd.clone()))
            }
            None | Some(Value::Null) => {
                let relative = !script.starts_with('/') && !script.contains(char::is_whitespace);
                let resolved = script.contains('/') || default_interpreter(script).is_some();
                if !self.dump && relative && resolved {
                    self.warn(format!(
                        "no \"cwd\": PM2 resolved {script:?} against the ecosystem file's directory; set cwd"
                    ));
                }
            }
            Some(other) => self.warn(format!("\"cwd\" {other} is not a path; dropped")),
        }
    }

    /// `user` (or `uid`): a user name; a numeric id is left to be written by hand.
    fn user(&mut self, m: &Map<String, Value>) {
        let user = ["user", "uid"]
            .iter()
            .find_map(|k| m.get(*k).filter(|v| !v.is_null()));
        match user {
            Some(Value::String(u)) if !u.trim().is_empty() => {
                self.app.set("user", TVal::Str(u.clone()))
            }
            Some(v) if !is_off(v) => self.warn(format!(
                "user {v}: Citrus needs a user name; set user = \"NAME\" by hand"
            )),
            _ => {}
        }
    }

    /// Maps option `key` onto the Citrus keys it becomes, with a warning where it is only
    /// approximated; `false` if Citrus has no key for it (see [`dropped`]). `name` is the app's
    /// PM2 name.
    fn option(&mut self, key: &str, v: &Value, name: &str) -> bool {
        match key {
            "env_" => self.warn(format!(
                "{key}: an environment needs a name after `env_`; dropped"
            )),
            k if k == "env" || (k.starts_with("env_") && v.is_object()) => {
                let vars = env_table(k, v, self.dump, name, &mut self.warnings);
                if !vars.is_empty() {
                    self.app.envs.push((k.to_string(), vars));
                }
            }
            "instances" if self.dump => {} // one dump entry is one process; merged later
            "instances" => self.instances(v),
            "exec_mode" => self.exec_mode(v),
            "autorestart" => self.autorestart_off = as_bool(v) == Some(false),
            "stop_exit_codes" => self.stop_exit_codes(v),
            "max_restarts" => match int_of(v) {
                Some(n) if n >= 0 => self.app.set("max_restarts", TVal::Int(n)),
                _ => self.warn(format!("max_restarts {v} is not a count; dropped")),
            },
            k @ ("min_uptime" | "restart_delay" | "exp_backoff_restart_delay" | "kill_timeout") => {
                match duration(v) {
                    Some(d) => self.app.set(static_key(k), TVal::Str(format_duration(d))),
                    None => self.warn(format!("{k} {v} is not a duration; dropped")),
                }
            }
            "max_memory_restart" => match size(v) {
                Some(s) => self.app.set("max_memory_restart", TVal::Str(s)),
                None if is_off(v) => {}
                None => self.warn(format!("max_memory_restart {v} is not a size; dropped")),
            },
            "cron_restart" => self.cron_restart(v),
            "autostart" => {
                if as_bool(v) == Some(false) {
                    self.app.set("autostart", TVal::Bool(false));
                }
            }
            "status" if self.dump => {
                if v.as_str() == Some("stopped") {
                    self.app.set("autostart", TVal::Bool(false));
                }
            }
            "log_date_format" if !is_off(v) => self.log_timestamps(format!(
                "log_date_format {v}: Citrus timestamps lines in RFC 3339; wrote log_timestamps = true"
            )),
            "time" if as_bool(v) == Some(true) => self.log_timestamps(
                "time: Citrus timestamps lines in RFC 3339; wrote log_timestamps = true".to_string(),
            ),
            _ => return false,
        }
        true
    }

    /// `instances`: a count, at most what citrusd allows; `max` and the like (sizing by CPU
    /// count) become 1 with a warning.
    fn instances(&mut self, v: &Value) {
        let n = int_of(v).unwrap_or(0);
        if n > MAX_INSTANCES {
            self.app.set("instances", TVal::Int(MAX_INSTANCES));
            self.warn(format!(
                "instances {v}: more than citrusd allows; wrote instances = {MAX_INSTANCES}"
            ));
        } else if n >= 1 {
            self.app.set("instances", TVal::Int(n));
        } else {
            self.app.set("instances", TVal::Int(1));
            self.warn(format!(
                "instances {v}: Citrus does not size by CPU count; wrote instances = 1, set it by hand"
            ));
        }
    }

    /// `exec_mode`: fork is what Citrus does; cluster is approximated by independent instances.
    fn exec_mode(&mut self, v: &Value) {
        match v.as_str().unwrap_or_default() {
            "cluster" | "cluster_mode" => self.warn(
                "exec_mode \"cluster\": Citrus runs N independent instances with no shared port \
                 (NODE_APP_INSTANCE is still set)",
            ),
            "fork" | "fork_mode" => {}
            _ => self.warn(format!("exec_mode {v} is unknown; dropped")),
        }
    }

    /// `stop_exit_codes`: Citrus has no per-code list; one holding 0 means "restart only after
    /// a failure".
    fn stop_exit_codes(&mut self, v: &Value) {
        let codes: Vec<i64> = match v {
            Value::Array(a) => a.iter().filter_map(int_of).collect(),
            other => int_of(other).into_iter().collect(),
        };
        if codes.contains(&0) {
            self.on_failure = true;
            self.warn(format!(
                "stop_exit_codes {v}: Citrus has no per-code list; wrote restart = \"on-failure\""
            ));
        } else {
            self.warn(format!(
                "stop_exit_codes {v}: Citrus has no per-code list; dropped"
            ));
        }
    }

    /// `cron_restart`: kept if citrusd can parse it.
    fn cron_restart(&mut self, v: &Value) {
        match v {
            Value::String(s) if !s.trim().is_empty() => {
                match crate::config::CronSchedule::parse(s.trim()) {
                    Ok(_) => self
                        .app
                        .set("cron_restart", TVal::Str(s.trim().to_string())),
                    Err(e) => self.warn(format!("cron_restart {v}: {e}; dropped")),
                }
            }
            _ if is_off(v) => {}
            _ => self.warn(format!(
                "cron_restart {v} is not a cron expression; dropped"
            )),
        }
    }

    /// PM2's dated log lines become `log_timestamps` (RFC 3339), with `warning`.
    fn log_timestamps(&mut self, warning: String) {
        self.app.set("log_timestamps", TVal::Bool(true));
        self.warn(warning);
    }

    /// `restart`, once every option is read: `autorestart: false` wins over `stop_exit_codes`.
    fn restart(&mut self) {
        if self.autorestart_off {
            self.app.set("restart", TVal::Str("never".to_string()));
        } else if self.on_failure {
            self.app.set("restart", TVal::Str("on-failure".to_string()));
        }
    }
}

/// The warning for option `key`, which Citrus has no key for, if it deserves one: options that
/// change behaviour and are set say why they are dropped; in a dump, everything else is PM2's
/// internals or the shell's environment and is passed over; in an ecosystem, options off or at
/// a default Citrus has are silent and every other one is reported.
fn dropped(key: &str, v: &Value, dump: bool) -> Option<String> {
    Some(match key {
        k @ ("out_file" | "error_file" | "log_file") if !is_off(v) => format!(
            "{k} {v} dropped: logs go to the daemon's log_dir as <app>-out.log and <app>-err.log"
        ),
        "merge_logs" if !dump && !is_off(v) => {
            "merge_logs dropped: logs go to the daemon's log_dir, one file per instance".to_string()
        }
        "watch" if !is_off(v) => "watch dropped: Citrus does not restart on file changes".to_string(),
        k @ ("ignore_watch" | "watch_options" | "watch_delay") if !dump && !is_off(v) => {
            format!("{k} dropped: Citrus does not watch files")
        }
        "increment_var" if !is_off(v) => format!(
            "increment_var {v} dropped: each instance gets CITRUS_INSTANCE and NODE_APP_INSTANCE instead"
        ),
        "wait_ready" if as_bool(v) == Some(true) => {
            "wait_ready dropped: Citrus does not listen for process.send('ready'); \
             use ready = { http = ... }, { tcp = ... } or { notify = true }"
                .to_string()
        }
        "listen_timeout" if !dump => {
            format!("listen_timeout {v} dropped: see the ready key for readiness checks")
        }
        "shutdown_with_message" if as_bool(v) == Some(true) => {
            "shutdown_with_message dropped: Citrus stops apps with kill_signal (SIGTERM) \
             to the process group"
                .to_string()
        }
        "namespace" if !matches!(v.as_str(), Some("default" | "")) => {
            format!("namespace {v} dropped: Citrus has no namespaces")
        }
        "treekill" if as_bool(v) == Some(false) => {
            "treekill false dropped: Citrus always stops the whole process group".to_string()
        }
        "instance_var" if v.as_str() != Some("NODE_APP_INSTANCE") => {
            format!("instance_var {v} dropped: Citrus sets NODE_APP_INSTANCE and CITRUS_INSTANCE")
        }
        "gid" if !dump => format!("gid {v} dropped: Citrus uses the user's primary group"),
        "filter_env" if !dump && !is_off(v) => {
            "filter_env dropped: Citrus passes apps only the variables the config names \
             (and inherit_env)"
                .to_string()
        }
        _ if dump => return None, // PM2 internals and the shell environment
        // Ecosystem options that are off or at a default that Citrus already has.
        "merge_logs" | "watch" | "ignore_watch" | "watch_options" | "watch_delay"
        | "log_date_format" | "time" | "out_file" | "error_file" | "log_file"
        | "increment_var" | "wait_ready" | "shutdown_with_message" | "namespace" | "treekill"
        | "instance_var" | "filter_env" => return None,
        k @ ("vizion" | "source_map_support" | "disable_source_map_support" | "pmx"
        | "automation" | "trace" | "disable_trace" | "force" | "kill_retry_time" | "pid_file"
        | "post_update" | "append_env_to_name" | "log_type" | "disable_logs" | "windows_hide") => {
            if is_off(v) {
                return None;
            }
            format!("{k} dropped: not supported by Citrus")
        }
        "env_file" => format!(
            "env_file {v} dropped: not a PM2 option; Citrus reads env_file, set it by hand if you meant it"
        ),
        k => format!("unknown PM2 option {k:?} dropped"),
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
        let (program, script_args) = split_script(&script, w)?;
        script = program;
        args.splice(0..0, script_args);
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

/// A `script` written as a command line: the program, and the arguments that came with it
/// (a warning shows the split).
fn split_script(script: &str, w: &mut Vec<String>) -> Result<(String, Vec<String>), String> {
    let mut words = split_words(script).map_err(|e| format!("\"script\": {e}"))?;
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
    Ok((words.remove(0), rest))
}

/// Splits a command line with `shell_words`, as citrusd splits a `command` written as one string:
/// whitespace (space, tab, newline) separates words; single quotes are literal; in double quotes
/// `\` escapes `"`, `\`, `$` and `` ` ``; outside quotes `\` escapes any character; `#` at the start
/// of a word begins a comment. No expansion of any kind. The error names the quote left open.
pub(super) fn split_words(s: &str) -> Result<Vec<String>, String> {
    shell_words::split(s).map_err(|_| {
        // An unclosed quote is shell-words' only error: closing it with `'` tells which it was.
        let open = match shell_words::split(&format!("{s}'")) {
            Ok(_) => "single",
            Err(_) => "double",
        };
        format!("unterminated {open} quote")
    })
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
        Some(Value::String(s)) => split_words(s).map_err(|e| format!("{key:?}: {e}")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words() {
        let split = |s: &str| split_words(s).unwrap();
        assert_eq!(split("  a  b\tc \n"), ["a", "b", "c"]);
        assert_eq!(split(r#"a"b c"'d e'f"#), ["ab cd ef"]);
        assert_eq!(split(r#""\n\$x""#), ["\\n$x"]);
        assert_eq!(split(r"a\"), ["a\\"]);
        assert!(split("").is_empty());
        let open = |s: &str| split_words(s).unwrap_err();
        assert_eq!(open("'open"), "unterminated single quote");
        assert_eq!(open("\"open"), "unterminated double quote");
        assert_eq!(open(r#"a "b 'c"#), "unterminated double quote");
        assert_eq!(open(r#"a 'b "c"#), "unterminated single quote");
        assert_eq!(open(r#""a\"#), "unterminated double quote");
    }

    /// Where shell-words (and so citrusd's own `command = "…"`) splits differently from the
    /// hand-written splitter import-pm2 had: `#` at the start of a word begins a comment, and
    /// only space, tab and newline separate words.
    #[test]
    fn shell_words_comments_and_separators() {
        let split = |s: &str| split_words(s).unwrap();
        assert_eq!(split("--title #1 --port 80"), ["--title"]);
        assert_eq!(
            split("--color=#fff a#b '#c'"),
            ["--color=#fff", "a#b", "#c"]
        );
        assert_eq!(split("a #comment\nb"), ["a", "b"]);
        assert_eq!(split("x\ry z"), ["x\ry", "z"]);
        assert_eq!(split("x\u{a0}y"), ["x\u{a0}y"]);
    }
}
