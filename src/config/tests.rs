use super::*;

const FILE: &str = "/etc/citrus/citrusd.toml";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(FILE), None)
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match parse(text) {
        Err(ConfigError::Invalid(diagnostics)) => diagnostics,
        other => panic!("expected diagnostics, got {other:?}"),
    }
}

/// Asserts that `text` has exactly one problem, at `line:column` under `key`, mentioning `part`.
#[track_caller]
fn assert_error(text: &str, line: usize, column: usize, key: &str, part: &str) {
    let found = errors(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    let d = &found[0];
    assert_eq!(
        (d.line, d.column, d.key.as_str()),
        (line, column, key),
        "{d}"
    );
    assert!(d.message.contains(part), "{d}");
    assert_eq!(d.file, Path::new(FILE));
    let shown = d.to_string();
    assert!(
        shown.starts_with(&format!("{FILE}:{line}:{column}: ")),
        "{shown}"
    );
}

fn app(text: &str, name: &str) -> AppConfig {
    parse(text).unwrap().apps.remove(name).unwrap()
}

const FULL: &str = r#"
[daemon]
state_dir = "/var/lib/citrus"
log_dir = "logs"
socket = "/run/citrus/citrusd.sock"
socket_group = "citrus"
memory_check_interval = "2s"
metrics_listen = "127.0.0.1:9559"

[defaults]
restart = "on-failure"
max_restarts = 3
min_uptime = "30s"
restart_delay = "100ms"
exp_backoff_restart_delay = "1m30s"
kill_signal = "INT"
kill_timeout = "7s"
env = { SHARED = "1", NODE_ENV = "base" }
env_production = { SHARED = "prod" }

[apps.api]
command = ["node", "src/index.js"]
cwd = "/home/ubuntu/app"
instances = 2
user = "ubuntu"
env = { NODE_ENV = "development", PORT = 1338, DEBUG = true, RATIO = 0.5 }
env_production = { NODE_ENV = "production", PORT = "1338" }
env_file = ".env"
inherit_env = ["PATH", "HOME"]
max_memory_restart = "1G"
autostart = false
after = ["db"]
cron_restart = "0 3 * * *"
restart = "always"
max_restarts = 10
min_uptime = "10s"
restart_delay = "0s"
exp_backoff_restart_delay = "0"
kill_signal = 15
kill_timeout = "5s"
log_max_size = "0"
log_keep = 9
log_max_age = "0s"
log_compress = true
log_timestamps = true

[apps.db]
command = "postgres -D '/var/lib/pg data'"
"#;

#[test]
fn full_config_round_trip() {
    let config = parse(FULL).unwrap();
    assert_eq!(config.path, Path::new(FILE));
    assert_eq!(
        config.daemon,
        DaemonConfig {
            state_dir: "/var/lib/citrus".into(),
            log_dir: "/etc/citrus/logs".into(),
            socket: Some("/run/citrus/citrusd.sock".into()),
            socket_group: Some("citrus".into()),
            memory_check_interval: Duration::from_secs(2),
            metrics_listen: Some("127.0.0.1:9559".parse().unwrap()),
        }
    );
    let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        config.apps["api"],
        AppConfig {
            name: "api".into(),
            command: vec!["node".into(), "src/index.js".into()],
            cwd: Some("/home/ubuntu/app".into()),
            instances: 2,
            user: Some("ubuntu".into()),
            env: env(&[
                ("DEBUG", "true"),
                ("NODE_ENV", "development"),
                ("PORT", "1338"),
                ("RATIO", "0.5"),
                ("SHARED", "1"),
            ]),
            env_file: Some("/etc/citrus/.env".into()),
            inherit_env: vec!["PATH".into(), "HOME".into()],
            max_memory_restart: Some(1 << 30),
            autostart: false,
            after: vec!["db".into()],
            cron_restart: Some(CronSchedule::parse("0 3 * * *").unwrap()),
            restart: RestartPolicy::Always,
            max_restarts: 10,
            min_uptime: Duration::from_secs(10),
            restart_delay: Duration::ZERO,
            exp_backoff_restart_delay: Duration::ZERO,
            kill_signal: Signal::SIGTERM,
            kill_timeout: Duration::from_secs(5),
            log: LogConfig {
                max_size: None,
                keep: 9,
                max_age: None,
                compress: true,
                timestamps: true,
            },
        }
    );
    assert_eq!(config.apps["api"].kill_signal_name(), "SIGTERM");
    // db inherits [defaults] and shell-splits its string command.
    let db = &config.apps["db"];
    assert_eq!(db.command, ["postgres", "-D", "/var/lib/pg data"]);
    assert_eq!(db.restart, RestartPolicy::OnFailure);
    assert_eq!(db.max_restarts, 3);
    assert_eq!(db.min_uptime, Duration::from_secs(30));
    assert_eq!(db.restart_delay, Duration::from_millis(100));
    assert_eq!(db.exp_backoff_restart_delay, Duration::from_secs(90));
    assert_eq!(db.kill_signal, Signal::SIGINT);
    assert_eq!(db.kill_timeout, Duration::from_secs(7));
    assert_eq!(db.env, env(&[("NODE_ENV", "base"), ("SHARED", "1")]));
    assert_eq!(config.start_order(), ["db", "api"]);
}

#[test]
fn built_in_defaults() {
    let config = parse("[apps.web]\ncommand = \"./web\"\n").unwrap();
    assert_eq!(
        config.apps["web"],
        AppConfig {
            name: "web".into(),
            command: vec!["/etc/citrus/web".into()],
            cwd: Some("/etc/citrus".into()),
            instances: 1,
            user: None,
            env: BTreeMap::new(),
            env_file: None,
            inherit_env: vec!["PATH".into()],
            max_memory_restart: None,
            autostart: true,
            after: vec![],
            cron_restart: None,
            restart: RestartPolicy::Always,
            max_restarts: 10,
            min_uptime: Duration::from_secs(10),
            restart_delay: Duration::ZERO,
            exp_backoff_restart_delay: Duration::ZERO,
            kill_signal: Signal::SIGTERM,
            kill_timeout: Duration::from_secs(5),
            log: LogConfig {
                max_size: Some(10 << 20),
                keep: 5,
                max_age: Some(Duration::from_secs(14 * 86_400)),
                compress: false,
                timestamps: false,
            },
        }
    );
    assert_eq!(config.daemon.memory_check_interval, Duration::from_secs(1));
    assert_eq!(config.daemon.socket, None);
    assert_eq!(config.daemon.metrics_listen, None);
    if geteuid().is_root() {
        assert_eq!(config.daemon.state_dir, Path::new("/var/lib/citrus"));
        assert_eq!(config.daemon.log_dir, Path::new("/var/log/citrus"));
    } else {
        assert_eq!(config.daemon.log_dir, config.daemon.state_dir.join("logs"));
    }
}

#[test]
fn default_state_dirs() {
    let os = |s: &str| Some(OsString::from(s));
    assert_eq!(
        default_state_dir(true, os("/x"), os("/h")),
        Path::new("/var/lib/citrus")
    );
    assert_eq!(
        default_state_dir(false, os("/x"), os("/h")),
        Path::new("/x/citrus")
    );
    assert_eq!(
        default_state_dir(false, None, os("/h")),
        Path::new("/h/.local/state/citrus")
    );
    assert_eq!(
        default_state_dir(false, os("relative"), os("/h")),
        Path::new("/h/.local/state/citrus")
    );
}

#[test]
fn env_production_merging() {
    let text = r#"
[defaults]
env = { A = "defaults", B = "defaults", C = "defaults", D = "defaults" }
env_production = { B = "defaults-prod", C = "defaults-prod", D = "defaults-prod" }
[apps.api]
command = ["x"]
env = { A = "app", B = "app", C = "app" }
env_production = { C = "app-prod" }
env_staging = { C = "staging" }
"#;
    let config = Config::parse(text, Path::new(FILE), Some("production")).unwrap();
    let api = &config.apps["api"];
    let get = |k: &str| api.env[k].as_str();
    assert_eq!(
        (get("A"), get("B"), get("C"), get("D")),
        ("app", "defaults-prod", "app-prod", "defaults-prod")
    );
    assert_eq!(app(text, "api").env["C"], "app");
    // Runtime apps get the same environment.
    let runtime = config.runtime_app("tmp", vec!["sleep".into(), "1".into()], 0, None);
    assert_eq!(runtime.env["C"], "defaults-prod");
    assert_eq!(runtime.env["A"], "defaults");
    assert_eq!(runtime.instances, 1);
}

#[test]
fn runtime_app_applies_defaults() {
    let config = parse("[defaults]\nkill_timeout = \"9s\"\ncwd = \"work\"\n").unwrap();
    assert!(config.apps.is_empty());
    let app = config.runtime_app("job", vec!["run".into()], 3, Some("/srv".into()));
    assert_eq!(app.name, "job");
    assert_eq!(app.command, ["run"]);
    assert_eq!(app.instances, 3);
    assert_eq!(app.cwd, Some("/srv".into()));
    assert_eq!(app.kill_timeout, Duration::from_secs(9));
    let app = config.runtime_app("job", vec!["run".into()], 1, None);
    assert_eq!(app.cwd, Some("/etc/citrus/work".into()));
}

#[test]
fn relative_paths_resolve_against_config_dir() {
    let text = r#"
[daemon]
state_dir = "state"
socket = "../run/citrus.sock"
[apps.api]
command = ["x"]
cwd = "app"
env_file = "app/.env"
"#;
    let config = Config::parse(text, Path::new("/srv/conf/citrusd.toml"), None).unwrap();
    assert_eq!(config.daemon.state_dir, Path::new("/srv/conf/state"));
    if !geteuid().is_root() {
        assert_eq!(config.daemon.log_dir, Path::new("/srv/conf/state/logs"));
    }
    assert_eq!(
        config.daemon.socket.as_deref(),
        Some(Path::new("/srv/conf/../run/citrus.sock"))
    );
    let api = &config.apps["api"];
    assert_eq!(api.cwd.as_deref(), Some(Path::new("/srv/conf/app")));
    assert_eq!(
        api.env_file.as_deref(),
        Some(Path::new("/srv/conf/app/.env"))
    );
    // A relative config path is absolutised against the current directory.
    let config = Config::parse(text, Path::new("conf/citrusd.toml"), None).unwrap();
    let expected = std::env::current_dir().unwrap().join("conf");
    assert_eq!(config.path, expected.join("citrusd.toml"));
    assert_eq!(config.apps["api"].cwd, Some(expected.join("app")));
}

#[test]
fn shell_words_command() {
    let api = app(
        "[apps.api]\ncommand = \"node --title 'my app' \\\"a b\\\" x\\\\ y\"\n",
        "api",
    );
    assert_eq!(api.command, ["node", "--title", "my app", "a b", "x y"]);
}

#[test]
fn load_reads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("citrusd.toml");
    std::fs::write(&path, "[apps.a]\ncommand = [\"true\"]\n").unwrap();
    let config = Config::load(&path, None).unwrap();
    assert_eq!(config.path, path);
    assert_eq!(config.apps["a"].command, ["true"]);
    let missing = dir.path().join("missing.toml");
    let err = Config::load(&missing, None).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().starts_with("cannot read config file "));
}

#[test]
fn syntax_error() {
    assert_error("[apps.a]\ncommand = [\"x\"\n", 2, 15, "", "unclosed array");
    assert_error("[daemon]\nsocket = /run/x\n", 2, 10, "", "");
    // Only the first syntax error is reported: the rest are usually its echoes.
    assert_error("[apps.a]\ncommand = [\"x\"\nfoo = \n[[x]\n", 3, 1, "", "");
    assert_error(
        "[apps.a]\ncommand = [\"x\"]\ncommand = [\"y\"]\n",
        3,
        1,
        "",
        "duplicate key",
    );
}

#[test]
fn unknown_keys_suggest() {
    assert_error(
        "[apps.api]\ncomand = [\"x\"]\ncommand = [\"x\"]\n",
        2,
        1,
        "apps.api.comand",
        "did you mean `command`?",
    );
    assert_error(
        "[defaults]\nmax_restart = 3\n",
        2,
        1,
        "defaults.max_restart",
        "did you mean `max_restarts`?",
    );
    assert_error(
        "[app.x]\ncommand = \"y\"\n",
        1,
        2,
        "app",
        "did you mean `apps`?",
    );
    assert_error(
        "[daemon]\nsocket_grp = \"x\"\n",
        2,
        1,
        "daemon.socket_grp",
        "did you mean `socket_group`?",
    );
    assert_error(
        "[jobs.backup]\ncommand = \"y\"\n",
        1,
        2,
        "jobs",
        "expected one of: daemon, defaults, apps",
    );
    assert_error(
        "[apps.a]\ncommand = \"y\"\nenv_fil = \".env\"\n",
        3,
        1,
        "apps.a.env_fil",
        "did you mean `env_file`?",
    );
    assert_error(
        "[apps.a]\ncommand = \"y\"\nenv_prod = 3\n",
        3,
        12,
        "apps.a.env_prod",
        "expected a map",
    );
    for key in ["ready", "health", "deploy"] {
        assert_error(
            &format!("[apps.a]\ncommand = \"y\"\n{key} = {{}}\n"),
            3,
            1,
            &format!("apps.a.{key}"),
            &format!("unknown key `{key}`"),
        );
    }
    assert_error(
        "[apps.a]\ncommand = \"y\"\n[apps.a.health]\nurl = \"x\"\n",
        3,
        9,
        "apps.a.health",
        "unknown key",
    );
}

#[test]
fn wrong_types() {
    assert_error(
        "[apps.a]\ncommand = \"y\"\ninstances = \"two\"\n",
        3,
        13,
        "apps.a.instances",
        "invalid type: string \"two\"",
    );
    assert_error(
        "[apps.a]\ncommand = 5\n",
        2,
        11,
        "apps.a.command",
        "expected an array of strings or a command string",
    );
    assert_error(
        "[apps.a]\ncommand = [\"x\", 5]\n",
        2,
        17,
        "apps.a.command",
        "invalid type: integer `5`",
    );
    assert_error(
        "[apps.a]\ncommand = \"y\"\nenv = 3\n",
        3,
        7,
        "apps.a.env",
        "expected a map",
    );
    assert_error(
        "[apps.a]\ncommand = \"y\"\nenv = { A = [1] }\n",
        3,
        13,
        "apps.a.env",
        "expected a string, number or boolean",
    );
    assert_error(
        "apps = 3\n",
        1,
        8,
        "apps",
        "expected a table, found integer",
    );
    assert_error("[apps]\na = \"x\"\n", 2, 5, "apps.a", "expected a table");
    assert_error(
        "[daemon]\nmetrics_listen = \"localhost\"\n",
        2,
        18,
        "daemon.metrics_listen",
        "socket address",
    );
}

#[test]
fn bad_durations_and_sizes() {
    assert_error(
        "[apps.a]\ncommand = \"y\"\nmin_uptime = \"ten\"\n",
        3,
        14,
        "apps.a.min_uptime",
        r#"invalid duration "ten": expected a number with a unit, e.g. "500ms""#,
    );
    assert_error(
        "[defaults]\nkill_timeout = 10\n",
        2,
        16,
        "defaults.kill_timeout",
        r#"expected a string with a unit, e.g. "10s""#,
    );
    assert_error(
        "[daemon]\nmemory_check_interval = \"10\"\n",
        2,
        25,
        "daemon.memory_check_interval",
        "the unit is missing",
    );
    assert_error(
        "[apps.a]\ncommand = \"y\"\nmax_memory_restart = \"1Q\"\n",
        3,
        22,
        "apps.a.max_memory_restart",
        r#"invalid size "1Q": expected"#,
    );
    assert_error(
        "[apps.a]\ncommand = \"y\"\nlog_max_size = -5\n",
        3,
        16,
        "apps.a.log_max_size",
        "invalid size -5",
    );
    assert_eq!(
        app(
            "[apps.a]\ncommand = \"y\"\nlog_max_size = 4096\nmax_memory_restart = \"512m\"\n",
            "a"
        )
        .log
        .max_size,
        Some(4096)
    );
}

#[test]
fn bad_signal_restart_and_cron() {
    assert_error(
        "[apps.a]\ncommand = \"y\"\nkill_signal = \"SIGFOO\"\n",
        3,
        15,
        "apps.a.kill_signal",
        "unknown signal \"SIGFOO\"",
    );
    assert_error(
        "[apps.a]\ncommand = \"y\"\nrestart = \"sometimes\"\n",
        3,
        11,
        "apps.a.restart",
        "expected one of `always`, `on-failure`, `never`",
    );
    assert_error(
        "[apps.a]\ncommand = \"y\"\ncron_restart = \"61 * * * *\"\n",
        3,
        16,
        "apps.a.cron_restart",
        "bad minute field \"61\"",
    );
    let a = app(
        "[apps.a]\ncommand = \"y\"\nkill_signal = \"sighup\"\nrestart = \"never\"\n",
        "a",
    );
    assert_eq!(
        (a.kill_signal, a.restart),
        (Signal::SIGHUP, RestartPolicy::Never)
    );
}

#[test]
fn empty_commands() {
    for (value, column) in [("[]", 11), ("\"\"", 11), ("\"   \"", 11), ("[\"\"]", 11)] {
        assert_error(
            &format!("[apps.a]\ncommand = {value}\n"),
            2,
            column,
            "apps.a.command",
            "command is empty",
        );
    }
    assert_error(
        "[apps.a]\ncommand = \"echo 'unclosed\"\n",
        2,
        11,
        "apps.a.command",
        "cannot split command",
    );
    assert_error(
        "[defaults]\ncommand = \"x\"\n",
        2,
        1,
        "defaults.command",
        "cannot be set in [defaults]",
    );
}

#[test]
fn zero_instances() {
    assert_error(
        "[apps.a]\ncommand = \"y\"\ninstances = 0\n",
        3,
        13,
        "apps.a.instances",
        "at least 1",
    );
}

#[test]
fn after_unknown_app() {
    assert_error(
        "[apps.api]\ncommand = \"y\"\nafter = [\"db\", \"dbb\"]\n[apps.db]\ncommand = \"y\"\n",
        3,
        16,
        "apps.api.after",
        "unknown app `dbb`; did you mean `db`?",
    );
}

#[test]
fn after_cycle() {
    let text = r#"[apps.a]
command = "y"
after = ["c"]
[apps.b]
command = "y"
after = ["a"]
[apps.c]
command = "y"
after = ["b"]
[apps.self]
command = "y"
after = ["self"]
"#;
    let found = errors(text);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_eq!((found[0].line, found[0].column), (3, 1));
    assert_eq!(found[0].key, "apps.a.after");
    assert!(
        found[0].message.contains("a -> c -> b -> a"),
        "{}",
        found[0]
    );
    assert_eq!((found[1].line, found[1].column), (12, 1));
    assert!(found[1].message.contains("self -> self"), "{}", found[1]);
}

#[test]
fn after_in_defaults_skips_self() {
    let text =
        "[defaults]\nafter = [\"db\"]\n[apps.db]\ncommand = \"y\"\n[apps.web]\ncommand = \"y\"\n";
    let config = parse(text).unwrap();
    assert!(config.apps["db"].after.is_empty());
    assert_eq!(config.apps["web"].after, ["db"]);
}

#[test]
fn invalid_app_names() {
    assert_error(
        "[apps.all]\ncommand = \"y\"\n",
        1,
        7,
        "apps.all",
        "reserved",
    );
    assert_error(
        "[apps.\"-x\"]\ncommand = \"y\"\n",
        1,
        7,
        "apps.-x",
        "invalid app name \"-x\"",
    );
    assert_error(
        "[apps.\"a/b\"]\ncommand = \"y\"\n",
        1,
        7,
        "apps.a/b",
        "invalid app name",
    );
    let long = "a".repeat(65);
    assert_error(
        &format!("[apps.{long}]\ncommand = \"y\"\n"),
        1,
        7,
        &format!("apps.{long}"),
        "invalid app name",
    );
    assert!(validate_app_name(&"a".repeat(64)).is_ok());
    assert!(validate_app_name("api-v2.worker_1").is_ok());
    assert!(validate_app_name("").is_err());
    assert!(validate_app_name("é").is_err());
}

#[test]
fn app_without_command() {
    assert_error(
        "[apps.api]\ninstances = 2\n",
        1,
        7,
        "apps.api",
        "app has no `command`",
    );
}

#[test]
fn every_problem_is_reported() {
    let text = r#"[daemon]
memory_check_interval = "soon"
[defaults]
restart = "sometimes"
[apps.api]
comand = ["node"]
instances = 0
after = ["nope"]
[apps.all]
command = []
kill_signal = "SIGNOPE"
"#;
    let found = errors(text);
    let summary: Vec<(usize, usize, &str)> = found
        .iter()
        .map(|d| (d.line, d.column, d.key.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (2, 25, "daemon.memory_check_interval"),
            (4, 11, "defaults.restart"),
            (5, 7, "apps.api"),
            (6, 1, "apps.api.comand"),
            (7, 13, "apps.api.instances"),
            (8, 10, "apps.api.after"),
            (9, 7, "apps.all"),
            (10, 11, "apps.all.command"),
            (11, 15, "apps.all.kill_signal"),
        ]
    );
    let shown = ConfigError::Invalid(found).to_string();
    assert_eq!(shown.lines().count(), 9, "{shown}");
}

#[test]
fn start_order_diamond() {
    let text = r#"
[apps.d]
command = "y"
after = ["b", "c"]
[apps.c]
command = "y"
after = ["a"]
[apps.b]
command = "y"
after = ["a"]
[apps.a]
command = "y"
[apps.z]
command = "y"
[apps.e]
command = "y"
after = ["d"]
"#;
    assert_eq!(
        parse(text).unwrap().start_order(),
        ["a", "b", "c", "d", "e", "z"]
    );
}
