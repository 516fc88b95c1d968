use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::geteuid;

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
    Arc::unwrap_or_clone(parse(text).unwrap().apps.remove(name).unwrap())
}

const FULL: &str = r#"
[daemon]
state_dir = "/var/lib/citrus"
log_dir = "logs"
socket = "/run/citrus/citrusd.sock"
socket_group = "citrus"
memory_check_interval = "2s"
metrics_listen = "127.0.0.1:9559"
log_format = "json"

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
            log_format: crate::config::LogFormat::Json,
        }
    );
    let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        *config.apps["api"],
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
            ready: None,
            health: None,
            deploy: None,
            listen: Vec::new(),
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
        *config.apps["web"],
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
            ready: None,
            health: None,
            deploy: None,
            listen: Vec::new(),
        }
    );
    assert_eq!(config.daemon.memory_check_interval, Duration::from_secs(1));
    assert_eq!(config.daemon.socket, None);
    assert_eq!(config.daemon.metrics_listen, None);
    assert_eq!(config.daemon.log_format, crate::config::LogFormat::Text);
    if geteuid().is_root() {
        assert_eq!(config.daemon.state_dir, Path::new("/var/lib/citrus"));
        assert_eq!(config.daemon.log_dir, Path::new("/var/log/citrus"));
    } else {
        assert_eq!(config.daemon.log_dir, config.daemon.state_dir.join("logs"));
    }
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
    let runtime = config
        .runtime_app("tmp", vec!["sleep".into(), "1".into()], 1, None)
        .unwrap();
    assert_eq!(runtime.env["C"], "defaults-prod");
    assert_eq!(runtime.env["A"], "defaults");
    assert_eq!(runtime.instances, 1);
}

#[test]
fn runtime_app_applies_defaults() {
    let config = parse("[defaults]\nkill_timeout = \"9s\"\ncwd = \"work\"\n").unwrap();
    assert!(config.apps.is_empty());
    let app = config
        .runtime_app("job", vec!["run".into()], 3, Some("/srv".into()))
        .unwrap();
    assert_eq!(app.name, "job");
    assert_eq!(app.command, ["run"]);
    assert_eq!(app.instances, 3);
    assert_eq!(app.cwd, Some("/srv".into()));
    assert_eq!(app.kill_timeout, Duration::from_secs(9));
    let app = config
        .runtime_app("job", vec!["run".into()], 1, None)
        .unwrap();
    assert_eq!(app.cwd, Some("/etc/citrus/work".into()));
}

/// Apps added at run time (the control API, `state.json`) go through the file's validator: the
/// same rules, the same messages.
#[test]
fn runtime_apps_are_validated_like_the_file() {
    let config = parse(
        "[defaults]
env = { A = \"x\" }\n",
    )
    .unwrap();
    let refused = |name: &str, command: &[&str], instances: u32, cwd: Option<&str>| {
        config
            .runtime_app(name, strings(command), instances, cwd.map(PathBuf::from))
            .unwrap_err()
            .to_string()
    };
    let e = refused("../../x", &["sleep"], 1, None);
    assert!(e.contains("invalid app name \"../../x\""), "{e}");
    let e = refused("x", &[], 1, None);
    assert!(e.contains("command is empty"), "{e}");
    let e = refused("x", &["sleep", "1\0"], 1, None);
    assert!(e.contains("NUL"), "{e}");
    for n in [0, 257, 4_000_000_000] {
        let e = refused("x", &["sleep"], n, None);
        assert!(e.contains("from 1 to 256"), "{e}");
    }
    let e = refused("x", &["sleep"], 1, Some("/srv/\0"));
    assert!(e.contains("`cwd`"), "{e}");
    // Several problems: all of them.
    let e = refused("a/b", &[], 0, None);
    for needle in ["invalid app name", "command is empty", "`instances` is 0"] {
        assert!(e.contains(needle), "{e}");
    }
    // The same words as the file's.
    let file = parse("[apps.x]\ncommand = [\"sleep\"]\ninstances = 4000000000\n").unwrap_err();
    let api = refused("x", &["sleep"], 4_000_000_000, None);
    let file_message = match &file {
        ConfigError::Invalid(d) => d[0].message.clone(),
        other => panic!("{other}"),
    };
    assert!(api.ends_with(&file_message), "{api} / {file_message}");
}

#[test]
fn env_names_and_values_are_checked() {
    for (env, needle) in [
        ("env = { \"A=B\" = \"1\" }", "`=`"),
        ("env = { \"\" = \"1\" }", "empty"),
        ("env = { \"A\\u0000\" = \"1\" }", "NUL"),
        (
            "env = { A = \"1\\u0000\" }",
            "value of environment variable A",
        ),
        ("env_prod = { \"B=\" = 1 }", "`=`"),
        ("inherit_env = [\"HOME=\"]", "`=`"),
    ] {
        let text = format!("[apps.x]\ncommand = [\"y\"]\n{env}\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains(needle) && e.contains("apps.x"), "{env}: {e}");
    }
    let e = parse("[defaults]\nenv = { \"A=B\" = 1 }\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("defaults.env"), "{e}");
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
        "[job.backup]\nkind = \"save\"\n",
        1,
        2,
        "job",
        "did you mean `jobs`?",
    );
    assert_error(
        "[deploy]\nhost = \"y\"\n",
        1,
        2,
        "deploy",
        "expected one of: daemon, defaults, apps, jobs, notify, fleet",
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
    assert_error(
        "[apps.a]\ncommand = \"y\"\ndeplyo = {}\n",
        3,
        1,
        "apps.a.deplyo",
        "did you mean `deploy`",
    );
    // Keys of nested tables have their own paths.
    assert_error(
        "[apps.a]\ncommand = \"y\"\n[apps.a.health]\nurl = \"x\"\ntcp = \"db:5432\"\n",
        4,
        1,
        "apps.a.health.url",
        "unknown key `url`; expected one of: http, tcp, interval, timeout, failures",
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
        "must be from 1 to 256",
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

const JOBS: &str = r#"
[notify]
webhook = "https://hooks.example.com/T000/B000"
events = ["errored", "job_failed", "errored"]

[defaults]
health = { tcp = "127.0.0.1:9", interval = "1m" }

[apps.api]
command = ["node", "index.js"]
ready = { http = "http://127.0.0.1:1338/health", timeout = "1m", interval = "1s" }
health = { http = "http://[::1]:1338/healthz?deep=1", interval = "10s", timeout = "2s", failures = 5 }

[apps.worker]
command = "./worker"
ready = { notify = true, watchdog = "10s" }

[jobs.health-check]
schedule = "*/5 * * * *"
kind = "health"
timezone = "UTC"
timeout = "1m"
apps = ["api"]

[jobs.disk]
schedule = "*/30 * * * *"
kind = "disk"
timezone = "local"
paths = ["/", "data"]
threshold = 90

[jobs.log-cleanup]
schedule = "0 2 * * *"
kind = "log-cleanup"
dirs = ["logs", "/var/log/citrus"]
pattern = "*.log.[0-9]*"
max_age = "7d"

[jobs.save]
schedule = "0 * * * *"
kind = "save"

[jobs.backup]
schedule = "0 15 4 * * *"
kind = "command"
command = "bin/backup.sh --full"
env = { FOO = "bar", N = 1 }
cwd = "/srv"
user = "backup"
inherit_env = ["PATH", "HOME"]
"#;

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn http_target(host: &str, port: u16, path: &str) -> ProbeTarget {
    let (host, path) = (host.to_owned(), path.to_owned());
    ProbeTarget::Http { host, port, path }
}

#[test]
fn jobs_notify_and_probes() {
    let config = parse(JOBS).unwrap();
    assert_eq!(
        config.notify,
        NotifyConfig {
            webhook: Some("https://hooks.example.com/T000/B000".into()),
            events: vec![EventKind::Errored, EventKind::JobFailed],
        }
    );
    let api = &config.apps["api"];
    assert_eq!(
        api.ready,
        Some(ReadyConfig {
            check: ReadyCheck::Probe(http_target("127.0.0.1", 1338, "/health")),
            timeout: Duration::from_secs(60),
            interval: Duration::from_secs(1),
        })
    );
    assert_eq!(
        api.health,
        Some(HealthConfig {
            target: http_target("::1", 1338, "/healthz?deep=1"),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            failures: 5,
        })
    );
    let worker = &config.apps["worker"];
    assert_eq!(
        worker.ready,
        Some(ReadyConfig {
            check: ReadyCheck::Notify {
                watchdog: Some(Duration::from_secs(10)),
            },
            timeout: Duration::from_secs(30),
            interval: Duration::from_millis(200),
        })
    );
    // `health` from [defaults], its own defaults filled in.
    let tcp = ProbeTarget::Tcp {
        host: "127.0.0.1".into(),
        port: 9,
    };
    assert_eq!(tcp.describe(), "tcp 127.0.0.1:9");
    assert_eq!(
        worker.health,
        Some(HealthConfig {
            target: tcp,
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
            failures: 3,
        })
    );

    let job = |name: &str, schedule: &str, tz: Timezone, timeout: u64, kind: JobKind| JobConfig {
        name: name.into(),
        schedule: CronSchedule::parse_in(schedule, tz).unwrap(),
        timeout: Duration::from_secs(timeout),
        kind,
    };
    let expected = [
        job(
            "backup",
            "0 15 4 * * *",
            Timezone::Local,
            600,
            JobKind::Command {
                command: strings(&["/srv/bin/backup.sh", "--full"]),
                env: [("FOO", "bar"), ("N", "1")]
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .into(),
                cwd: "/srv".into(),
                user: Some("backup".into()),
                inherit_env: strings(&["PATH", "HOME"]),
            },
        ),
        job(
            "disk",
            "*/30 * * * *",
            Timezone::Local,
            600,
            JobKind::Disk {
                paths: vec!["/".into(), "/etc/citrus/data".into()],
                threshold: 90,
            },
        ),
        job(
            "health-check",
            "*/5 * * * *",
            Timezone::Utc,
            60,
            JobKind::Health {
                apps: strings(&["api"]),
            },
        ),
        job(
            "log-cleanup",
            "0 2 * * *",
            Timezone::Local,
            600,
            JobKind::LogCleanup {
                dirs: vec!["/etc/citrus/logs".into(), "/var/log/citrus".into()],
                pattern: "*.log.[0-9]*".into(),
                max_age: Duration::from_secs(7 * 86_400),
            },
        ),
        job("save", "0 * * * *", Timezone::Local, 600, JobKind::Save),
    ];
    let jobs: Vec<&JobConfig> = config.jobs.values().collect();
    assert_eq!(jobs, expected.iter().collect::<Vec<_>>());
    let kinds: Vec<&str> = jobs.iter().map(|job| job.kind.name()).collect();
    assert_eq!(kinds, ["command", "disk", "health", "log-cleanup", "save"]);
    assert_eq!(
        config.jobs["health-check"].schedule.timezone(),
        Timezone::Utc
    );
}

#[test]
fn job_and_probe_defaults() {
    let text = r#"
[defaults]
ready = { tcp = "127.0.0.1:5432" }
health = { http = "http://localhost" }
[apps.db]
command = "postgres"
[jobs.h]
schedule = "0 3 * * *"
kind = "health"
[jobs.d]
schedule = "0 3 * * *"
kind = "disk"
[jobs.l]
schedule = "0 3 * * *"
kind = "log-cleanup"
dirs = ["logs"]
max_age = "1d"
[jobs.s]
schedule = "0 3 * * *"
kind = "save"
[jobs.c]
schedule = "0 3 * * *"
kind = "command"
command = ["backup.sh"]
"#;
    let config = parse(text).unwrap();
    assert_eq!(config.notify, NotifyConfig::default());
    assert_eq!(config.notify.events, EventKind::ALL);
    let kinds: Vec<&JobKind> = config.jobs.values().map(|job| &job.kind).collect();
    assert_eq!(
        kinds,
        [
            &JobKind::Command {
                command: strings(&["backup.sh"]),
                env: BTreeMap::new(),
                cwd: "/etc/citrus".into(),
                user: None,
                inherit_env: strings(&["PATH"]),
            },
            &JobKind::Disk {
                paths: vec!["/".into()],
                threshold: 80,
            },
            &JobKind::Health { apps: vec![] },
            &JobKind::LogCleanup {
                dirs: vec!["/etc/citrus/logs".into()],
                pattern: "*.log".into(),
                max_age: Duration::from_secs(86_400),
            },
            &JobKind::Save,
        ]
    );
    for job in config.jobs.values() {
        assert_eq!(job.timeout, Duration::from_secs(600), "{}", job.name);
        assert_eq!(job.schedule.timezone(), Timezone::Local, "{}", job.name);
    }
    let ready = ReadyConfig {
        check: ReadyCheck::Probe(ProbeTarget::Tcp {
            host: "127.0.0.1".into(),
            port: 5432,
        }),
        timeout: Duration::from_secs(30),
        interval: Duration::from_millis(200),
    };
    let health = HealthConfig {
        target: http_target("localhost", 80, "/"),
        interval: Duration::from_secs(30),
        timeout: Duration::from_secs(5),
        failures: 3,
    };
    let db = &config.apps["db"];
    assert_eq!(
        (db.ready.as_ref(), db.health.as_ref()),
        (Some(&ready), Some(&health))
    );
    // Apps added at run time get them from [defaults] too.
    let runtime = config
        .runtime_app("tmp", vec!["sleep".into()], 1, None)
        .unwrap();
    assert_eq!((runtime.ready, runtime.health), (Some(ready), Some(health)));
}

/// A job `[jobs.j]` (line 1) with `schedule` (line 2) and then `rest` (from line 3).
fn job(rest: &str) -> String {
    format!("[jobs.j]\nschedule = \"0 3 * * *\"\n{rest}")
}

#[test]
fn job_errors() {
    assert_error(
        &job("kind = \"command\"\ncommand = \"x\"\npaths = [\"/\"]\n"),
        5,
        1,
        "jobs.j.paths",
        "`paths` is not a key of kind \"command\" (it belongs to kind \"disk\")",
    );
    assert_error(
        &job("kind = \"disk\"\nthreshhold = 90\n"),
        4,
        1,
        "jobs.j.threshhold",
        "unknown key `threshhold`; did you mean `threshold`?",
    );
    assert_error(
        &job("kind = \"backup\"\n"),
        3,
        8,
        "jobs.j.kind",
        "unknown job kind `backup`; expected one of: health, disk, log-cleanup, save, \
         deploy-reconcile, command",
    );
    assert_error(
        &job("kind = \"helth\"\n"),
        3,
        8,
        "jobs.j.kind",
        "did you mean `health`?",
    );
    assert_error(
        "[jobs.j]\nkind = \"save\"\n",
        1,
        7,
        "jobs.j",
        "job has no `schedule`",
    );
    assert_error(
        &job(""),
        1,
        7,
        "jobs.j",
        "job has no `kind`; add one of: health, disk, log-cleanup, save, deploy-reconcile, command",
    );
    let found = errors(&job("kind = \"log-cleanup\"\n"));
    let messages: Vec<(usize, usize, &str, &str)> = found
        .iter()
        .map(|d| (d.line, d.column, d.key.as_str(), d.message.as_str()))
        .collect();
    assert_eq!(
        messages,
        [
            (
                1,
                7,
                "jobs.j",
                "job has no `dirs`, which kind \"log-cleanup\" needs; add e.g. dirs = [\"logs\"]"
            ),
            (
                1,
                7,
                "jobs.j",
                "job has no `max_age`, which kind \"log-cleanup\" needs; add e.g. max_age = \"7d\""
            ),
        ]
    );
    assert_error(
        &job("kind = \"command\"\n"),
        1,
        7,
        "jobs.j",
        "job has no `command`, which kind \"command\" needs",
    );
    assert_error(
        &job("kind = \"command\"\ncommand = []\n"),
        4,
        11,
        "jobs.j.command",
        "command is empty",
    );
    for value in ["0", "101"] {
        assert_error(
            &job(&format!("kind = \"disk\"\nthreshold = {value}\n")),
            4,
            13,
            "jobs.j.threshold",
            &format!("invalid value {value}: must be from 1 to 100"),
        );
    }
    assert_error(
        &job("kind = \"log-cleanup\"\ndirs = [\"logs\"]\nmax_age = \"7d\"\npattern = \"logs/*.log\"\n"),
        6,
        11,
        "jobs.j.pattern",
        "invalid pattern \"logs/*.log\": the pattern matches file names, so it cannot contain `/`",
    );
    assert_error(
        &job("kind = \"log-cleanup\"\ndirs = []\nmax_age = \"7d\"\n"),
        4,
        8,
        "jobs.j.dirs",
        "the list is empty",
    );
    assert_error(
        &job("kind = \"log-cleanup\"\ndirs = [\"logs\"]\nmax_age = \"0s\"\n"),
        5,
        11,
        "jobs.j.max_age",
        "must be more than zero",
    );
    assert_error(
        &job("kind = \"save\"\ntimezone = \"Europe/Paris\"\n"),
        4,
        12,
        "jobs.j.timezone",
        "unknown time zone `Europe/Paris`; expected one of: local, UTC",
    );
    assert_error(
        "[jobs.j]\nschedule = \"0 61 * * * *\"\nkind = \"save\"\n",
        2,
        12,
        "jobs.j.schedule",
        "invalid cron expression \"0 61 * * * *\": bad minute field \"61\"",
    );
    assert_error(
        "[jobs.all]\nschedule = \"0 3 * * *\"\nkind = \"save\"\n",
        1,
        7,
        "jobs.all",
        "the job name \"all\" is reserved",
    );
    assert_error(
        &format!(
            "[apps.api]\ncommand = \"y\"\n{}",
            job("kind = \"health\"\napps = [\"api\", \"apii\"]\n")
        ),
        6,
        16,
        "jobs.j.apps",
        "`apps` names unknown app `apii`; did you mean `api`?",
    );
}

#[test]
fn notify_errors() {
    assert_error(
        "[notify]\nevents = [\"errored\", \"job_faild\"]\n",
        2,
        22,
        "notify.events",
        "unknown event `job_faild`; did you mean `job_failed`? (expected one of: errored, \
         memory_restart, health_failed, disk, job_failed, deploy, log)",
    );
    assert_error(
        "[notify]\nwebhook = \"hooks.example.com/x\"\n",
        2,
        11,
        "notify.webhook",
        "invalid webhook URL \"hooks.example.com/x\": expected an http:// or https:// URL",
    );
    assert_error(
        "[notify]\nwebhook = \"https:// /x\"\n",
        2,
        11,
        "notify.webhook",
        "unexpected character ' '",
    );
    assert_error(
        "[notify]\nhook = \"https://x\"\n",
        2,
        1,
        "notify.hook",
        "unknown key `hook`; expected one of: webhook, events",
    );
}

/// An app `[apps.a]` (line 1) with `command` (line 2) and then `rest` (from line 3).
fn with_app(rest: &str) -> String {
    format!("[apps.a]\ncommand = \"y\"\n{rest}")
}

#[test]
fn probe_errors() {
    assert_error(
        &with_app("ready = { http = \"https://127.0.0.1/health\" }\n"),
        3,
        18,
        "apps.a.ready.http",
        "https probes are not supported: probe the app's local plain-HTTP port",
    );
    assert_error(
        &with_app("health = { http = \"http://127.0.0.1:99999/\" }\n"),
        3,
        19,
        "apps.a.health.http",
        "invalid probe URL \"http://127.0.0.1:99999/\": invalid port `99999`: expected 1 to 65535",
    );
    assert_error(
        &with_app("health = { http = \"not a url\" }\n"),
        3,
        19,
        "apps.a.health.http",
        "invalid probe URL \"not a url\": expected http://HOST[:PORT][/PATH]",
    );
    assert_error(
        &with_app("health = { http = \"http://\" }\n"),
        3,
        19,
        "apps.a.health.http",
        "the host is missing",
    );
    assert_error(
        &with_app("ready = { tcp = \"localhost\" }\n"),
        3,
        17,
        "apps.a.ready.tcp",
        "invalid TCP target \"localhost\": the port is missing",
    );
    assert_error(
        &with_app("health = { tcp = \"db:5432\", intervall = \"5s\" }\n"),
        3,
        29,
        "apps.a.health.intervall",
        "unknown key `intervall`; did you mean `interval`?",
    );
    assert_error(
        &with_app("health = { tcp = \"db:5432\", failures = 0 }\n"),
        3,
        40,
        "apps.a.health.failures",
        "invalid value 0: must be from 1 to 1000",
    );
    assert_error(
        &with_app("health = { interval = \"5s\" }\n"),
        3,
        1,
        "apps.a.health",
        "`health` needs one of `http`, `tcp`, e.g. health = { http = ",
    );
    assert_error(
        "[defaults]\nready = { http = \"http://x/\", tcp = \"x:1\" }\n",
        2,
        31,
        "defaults.ready",
        "`ready` takes only one of `http`, `tcp`, `notify`; found both `http` and `tcp`",
    );
    assert_error(
        &with_app("ready = { http = \"http://x/\", watchdog = \"10s\" }\n"),
        3,
        31,
        "apps.a.ready.watchdog",
        "`watchdog` needs `notify = true`",
    );
    assert_error(
        &with_app("ready = { notify = false }\n"),
        3,
        20,
        "apps.a.ready.notify",
        "remove `ready` to start without a readiness check",
    );
    assert_error(
        &with_app("ready = { timeout = \"5s\" }\n"),
        3,
        1,
        "apps.a.ready",
        "`ready` needs one of `http`, `tcp`, `notify`",
    );
    assert_error(
        &with_app("ready = \"http://x/\"\n"),
        3,
        9,
        "apps.a.ready",
        "expected a table, found string",
    );
    assert_error(
        &with_app("[apps.a.ready]\nnotify = true\ninterval = \"0s\"\n"),
        5,
        12,
        "apps.a.ready.interval",
        "invalid duration \"0s\": must be more than zero",
    );
}

#[test]
fn every_job_problem_is_reported() {
    let text = r#"[notify]
events = ["disk", "oom"]
[jobs.a]
kind = "disk"
threshold = 0
dirs = ["logs"]
[jobs.b]
schedule = "* * *"
kind = "command"
command = "run"
timeout = "0s"
max_agee = "1d"
"#;
    let summary: Vec<(usize, usize, String)> = errors(text)
        .into_iter()
        .map(|d| (d.line, d.column, d.key))
        .collect();
    let expected = [
        (2, 19, "notify.events"),
        (3, 7, "jobs.a"),
        (5, 13, "jobs.a.threshold"),
        (6, 1, "jobs.a.dirs"),
        (8, 12, "jobs.b.schedule"),
        (11, 11, "jobs.b.timeout"),
        (12, 1, "jobs.b.max_agee"),
    ];
    let expected: Vec<(usize, usize, String)> = expected
        .iter()
        .map(|&(line, column, key)| (line, column, key.to_owned()))
        .collect();
    assert_eq!(summary, expected);
}

const FLEET: &str = r#"
[fleet]
engine_url = "WSS://engine.example.com:443/agent"
agent_id = "3f1c9a7e-5b2d-4c8e-9f00-1a2b3c4d5e6f"
key_file = "/etc/citrus/agent.key"
enroll_token = "tok-SECRET-123"
ca_file = "engine-ca.pem"
status_interval = "30s"
reconnect_delay = "2s"

[fleet.sites]
create = ["ee", "site", "create", "{domain}", "--type=wp", "--cache"]
delete = "ee site delete {domain} --yes"

[fleet.update]
repo = "src/citrus"
remote = "upstream"
branch = "stable"
build = ["cargo", "build", "--profile", "dist"]
binary = "target/dist/citrusd"
"#;

#[test]
fn fleet_round_trip() {
    let config = parse(FLEET).unwrap();
    assert_eq!(
        config.fleet,
        Some(FleetConfig {
            engine_url: "wss://engine.example.com/agent".into(),
            enroll_url: "https://engine.example.com/agent/enroll".into(),
            releases_url: "https://engine.example.com/releases/".into(),
            agent_id: "3f1c9a7e-5b2d-4c8e-9f00-1a2b3c4d5e6f".into(),
            key_file: "/etc/citrus/agent.key".into(),
            enroll_token: Some(Secret::new("tok-SECRET-123")),
            ca_file: Some("/etc/citrus/engine-ca.pem".into()),
            status_interval: Duration::from_secs(30),
            reconnect_delay: Duration::from_secs(2),
            sites: SiteTemplates {
                create: Some(strings(&[
                    "ee",
                    "site",
                    "create",
                    "{domain}",
                    "--type=wp",
                    "--cache"
                ])),
                delete: Some(strings(&["ee", "site", "delete", "{domain}", "--yes"])),
            },
            update: Some(UpdateConfig {
                repo: Some("/etc/citrus/src/citrus".into()),
                remote: "upstream".into(),
                branch: "stable".into(),
                build: Some(strings(&["cargo", "build", "--profile", "dist"])),
                binary: Some("/etc/citrus/src/citrus/target/dist/citrusd".into()),
                confirm_timeout: Duration::from_secs(120),
            }),
        })
    );
}

#[test]
fn fleet_defaults() {
    assert_eq!(parse("").unwrap().fleet, None);
    let text = "[fleet]\nengine_url = \"ws://10.0.0.5:8080\"\nagent_id = \"web-1\"\n\
                key_file = \"agent.key\"\n[fleet.update]\nrepo = \"/opt/citrus\"\n";
    assert_eq!(
        parse(text).unwrap().fleet,
        Some(FleetConfig {
            engine_url: "ws://10.0.0.5:8080/".into(),
            enroll_url: "http://10.0.0.5:8080/agent/enroll".into(),
            releases_url: "http://10.0.0.5:8080/releases/".into(),
            agent_id: "web-1".into(),
            key_file: "/etc/citrus/agent.key".into(),
            enroll_token: None,
            ca_file: None,
            status_interval: Duration::from_secs(60),
            reconnect_delay: Duration::from_secs(5),
            sites: SiteTemplates::default(),
            update: Some(UpdateConfig {
                repo: Some("/opt/citrus".into()),
                remote: "origin".into(),
                branch: "main".into(),
                build: None,
                binary: None,
                confirm_timeout: Duration::from_secs(120),
            }),
        })
    );
}

#[test]
fn fleet_update_for_releases_needs_no_repo_but_the_git_keys_do() {
    let text = "[fleet]\nengine_url = \"ws://10.0.0.5:8080\"\nagent_id = \"web-1\"\n\
                key_file = \"agent.key\"\n[fleet.update]\nconfirm_timeout = \"30s\"\n";
    let update = parse(text).unwrap().fleet.unwrap().update.unwrap();
    assert_eq!(update.repo, None);
    assert_eq!(update.binary, None);
    assert_eq!(update.confirm_timeout, Duration::from_secs(30));
    assert_error(
        &fleet("update = { build = [\"make\"] }\n"),
        2,
        1,
        "fleet.update",
        "[fleet.update] has no `repo`; add e.g. repo = \"/opt/citrus\"",
    );
}

/// `[fleet]` (line 1) with `rest` (from line 2), then whichever of the required keys `rest` does
/// not set. `rest` must stay in `[fleet]`.
fn fleet(rest: &str) -> String {
    let mut text = format!("[fleet]\n{rest}");
    for line in [
        "engine_url = \"wss://e.example.com/agent\"\n",
        "agent_id = \"web-1\"\n",
        "key_file = \"agent.key\"\n",
    ] {
        let (key, _) = line.split_once(" = ").unwrap();
        if !rest.contains(&format!("{key} = ")) {
            text.push_str(line);
        }
    }
    text
}

#[test]
fn fleet_enroll_url() {
    let cases = [
        (
            "wss://e.example.com:8443/agent",
            "https://e.example.com:8443/agent/enroll",
        ),
        (
            "ws://127.0.0.1:8080/x/agent",
            "http://127.0.0.1:8080/agent/enroll",
        ),
        ("wss://e.example.com", "https://e.example.com/agent/enroll"),
        (
            "ws://e.example.com:80/a?b=1",
            "http://e.example.com/agent/enroll",
        ),
        ("wss://[::1]:9000/agent", "https://[::1]:9000/agent/enroll"),
    ];
    for (engine_url, enroll_url) in cases {
        let text = fleet(&format!("engine_url = \"{engine_url}\"\n"));
        let fleet = parse(&text).unwrap().fleet.unwrap();
        assert_eq!(fleet.enroll_url, enroll_url, "{engine_url}");
    }
}

#[test]
fn fleet_debug_hides_the_token() {
    let config = parse(FLEET).unwrap();
    let token = config
        .fleet
        .as_ref()
        .unwrap()
        .enroll_token
        .as_ref()
        .unwrap();
    assert_eq!(token.expose(), "tok-SECRET-123");
    assert_eq!(
        format!("{token:?} {token}"),
        "Secret(<redacted>) <redacted>"
    );
    let shown = format!("{:?}", config.fleet);
    assert!(
        shown.contains("enroll_token: Some(Secret(<redacted>))"),
        "{shown}"
    );
    for shown in [shown, format!("{config:#?}")] {
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}

#[test]
fn site_templates_render() {
    let template = strings(&["wp", "--url=https://{domain}/", "{domain}{domain}", "-x"]);
    assert_eq!(
        SiteTemplates::render(&template, "a b.example.com"),
        [
            "wp",
            "--url=https://a b.example.com/",
            "a b.example.coma b.example.com",
            "-x"
        ]
    );
}

#[test]
fn fleet_errors() {
    let engine = |url: &str| fleet(&format!("engine_url = \"{url}\"\n"));
    assert_error(
        &engine("https://e.example.com/agent"),
        2,
        14,
        "fleet.engine_url",
        "invalid engine URL \"https://e.example.com/agent\": unsupported scheme `https`; \
         use ws:// or wss://",
    );
    assert_error(
        &engine("http://e.example.com/agent"),
        2,
        14,
        "fleet.engine_url",
        "use ws:// or wss://",
    );
    assert_error(
        &engine("not a url"),
        2,
        14,
        "fleet.engine_url",
        "invalid engine URL \"not a url\": use ws:// or wss://, e.g. \"wss://",
    );
    assert_error(
        &engine("wss:///agent"),
        2,
        14,
        "fleet.engine_url",
        "the host is missing",
    );
    assert_error(
        &engine("wss://agent:pw@e.example.com/agent"),
        2,
        14,
        "fleet.engine_url",
        "remove the `user:password@`",
    );
    assert_error(
        &engine("wss://e.example.com/agent#x"),
        2,
        14,
        "fleet.engine_url",
        "remove the #fragment",
    );
    let long = "a".repeat(65);
    for id in ["web 1", "", "web/1", long.as_str()] {
        assert_error(
            &fleet(&format!("agent_id = \"{id}\"\n")),
            2,
            12,
            "fleet.agent_id",
            "use 1 to 64 letters, digits, `_`, `.` or `-`",
        );
    }
    assert!(parse(&fleet(&format!("agent_id = \"{}\"\n", &long[1..]))).is_ok());
    assert_error(
        "[fleet]\nagent_id = \"a\"\nkey_file = \"k\"\n",
        1,
        2,
        "fleet",
        "[fleet] has no `engine_url`; add e.g. engine_url = \"wss://",
    );
    assert_error(
        "[fleet.sites]\n[fleet]\nengine_url = \"wss://e\"\nkey_file = \"k\"\n",
        2,
        2,
        "fleet",
        "[fleet] has no `agent_id`",
    );
    let missing: Vec<String> = errors("[fleet]\n")
        .into_iter()
        .map(|d| format!("{}:{} {} {}", d.line, d.column, d.key, d.message))
        .collect();
    assert_eq!(missing.len(), 3, "{missing:#?}");
    for (found, key) in missing.iter().zip(["engine_url", "agent_id", "key_file"]) {
        assert!(
            found.starts_with(&format!("1:2 fleet [fleet] has no `{key}`")),
            "{found}"
        );
    }
    assert_error(
        &fleet("status_interval = \"0s\"\n"),
        2,
        19,
        "fleet.status_interval",
        "invalid duration \"0s\": must be more than zero",
    );
    assert_error(
        &fleet("reconnect_delay = 5\n"),
        2,
        19,
        "fleet.reconnect_delay",
        "expected a string with a unit, e.g. \"5s\"",
    );
    assert_error(
        &fleet("sites = { create = [\"ee\", \"site\", \"create\"] }\n"),
        2,
        20,
        "fleet.sites.create",
        "the template does not use {domain}; put it where the site's domain goes",
    );
    for empty in ["[]", "\"\"", "[\"\", \"{domain}\"]"] {
        assert_error(
            &fleet(&format!("sites = {{ delete = {empty} }}\n")),
            2,
            20,
            "fleet.sites.delete",
            "command is empty; give the program and its arguments, e.g. [\"ee\", \"site\"",
        );
    }
    assert_error(
        &fleet("engine_uri = \"wss://e\"\n"),
        2,
        1,
        "fleet.engine_uri",
        "unknown key `engine_uri`; did you mean `engine_url`?",
    );
    assert_error(
        &fleet("sites = { creat = [\"x\", \"{domain}\"] }\n"),
        2,
        11,
        "fleet.sites.creat",
        "unknown key `creat`; did you mean `create`?",
    );
    assert_error(
        &fleet("sites = { rename = [\"x\"] }\n"),
        2,
        11,
        "fleet.sites.rename",
        "unknown key `rename`; expected one of: create, delete",
    );
    assert_error(
        &fleet("update = { repo = \"/opt/citrus\", branh = \"main\" }\n"),
        2,
        34,
        "fleet.update.branh",
        "unknown key `branh`; did you mean `branch`?",
    );
    assert_error(
        &fleet("update = { remote = \"origin\" }\n"),
        2,
        1,
        "fleet.update",
        "[fleet.update] has no `repo`; add e.g. repo = \"/opt/citrus\"",
    );
    assert_error(
        &fleet("update = { repo = \"r\", branch = \"--upload-pack=x\" }\n"),
        2,
        33,
        "fleet.update.branch",
        "invalid git name \"--upload-pack=x\": it cannot start with `-`",
    );
    assert_error(
        &fleet("update = { repo = \"r\", remote = \"\" }\n"),
        2,
        33,
        "fleet.update.remote",
        "invalid git name \"\": it is empty",
    );
    for (token, why) in [("sec ret", "' '"), ("sec\\tret", "'\\t'")] {
        let found = errors(&fleet(&format!("enroll_token = \"{token}\"\n")));
        assert_eq!(found.len(), 1, "{found:#?}");
        let shown = found[0].to_string();
        assert!(
            shown.ends_with(&format!(
                ":2:16: fleet.enroll_token: invalid enroll token: unexpected character {why}"
            )),
            "{shown}"
        );
        assert!(!shown.contains("sec"), "{shown}");
    }
    assert_error(
        &fleet("enroll_token = \"\"\n"),
        2,
        16,
        "fleet.enroll_token",
        "the enroll token is empty",
    );
    assert_error(
        &fleet("engine_url = \"ws://e:8080/agent\"\nca_file = \"ca.pem\"\n"),
        3,
        1,
        "fleet.ca_file",
        "`ca_file` is for TLS, but `engine_url` is ws://; use wss://",
    );
    assert_error(
        "fleet = 1\n",
        1,
        9,
        "fleet",
        "expected a table, found integer",
    );
}

#[test]
fn fleet_sub_tables_report_unknown_keys() {
    let text = "[fleet]\nengine_url = \"wss://e\"\nagent_id = \"a\"\nkey_file = \"k\"\n\
                [fleet.sites]\ndeleet = [\"x\", \"{domain}\"]\n\
                [fleet.update]\nrepo = \"/opt/citrus\"\nremot = \"origin\"\n";
    let found: Vec<String> = errors(text).iter().map(Diagnostic::to_string).collect();
    assert_eq!(
        found,
        [
            format!("{FILE}:6:1: fleet.sites.deleet: unknown key `deleet`; did you mean `delete`?"),
            format!("{FILE}:9:1: fleet.update.remot: unknown key `remot`; did you mean `remote`?"),
        ]
    );
}

#[test]
fn deploy_section() {
    let text = r#"
[apps.web]
command = ["node", "server.js"]
ready = { http = "http://127.0.0.1:3000/ready", timeout = "5s" }
[apps.web.deploy]
root = "/var/www/web"
source = { git = "https://example.com/web.git", branch = "prod" }
build = ["npm", "ci"]
build_timeout = "5m"
shared = ["storage", ".env"]
keep = 3
"#;
    let web = app(text, "web");
    assert_eq!(web.cwd.as_deref(), Some(Path::new("/var/www/web/current")));
    let deploy = web.deploy.as_deref().unwrap();
    assert_eq!(deploy.root, Path::new("/var/www/web"));
    assert_eq!(
        deploy.source,
        DeploySource::Git {
            url: "https://example.com/web.git".into(),
            branch: "prod".into()
        }
    );
    assert_eq!(
        deploy.build.as_deref(),
        Some(&["npm".to_owned(), "ci".to_owned()][..])
    );
    assert_eq!(deploy.build_timeout, Duration::from_secs(300));
    assert_eq!(
        deploy.shared,
        [PathBuf::from("storage"), PathBuf::from(".env")]
    );
    assert_eq!(deploy.keep, 3);
    // The health check defaults to the app's ready probe, with at least a minute to pass.
    let health = deploy.health.as_ref().unwrap();
    assert_eq!(health.target.describe(), "http://127.0.0.1:3000/ready");
    assert_eq!(health.timeout, Duration::from_secs(60));

    let minimal = r#"
[apps.site]
command = "./serve"
[apps.site.deploy]
root = "sites/site"
source = { path = "upload" }
"#;
    let site = app(minimal, "site");
    let deploy = site.deploy.as_deref().unwrap();
    assert_eq!(deploy.root, Path::new("/etc/citrus/sites/site"));
    assert_eq!(
        deploy.source,
        DeploySource::Path("/etc/citrus/upload".into())
    );
    assert_eq!(
        (deploy.keep, deploy.build_timeout),
        (5, Duration::from_secs(600))
    );
    assert_eq!(
        (deploy.build.as_ref(), deploy.health.as_ref()),
        (None, None)
    );
    // The program path is relative to the current release.
    assert_eq!(site.command[0], "/etc/citrus/sites/site/current/serve");

    let archive = "[apps.a]\ncommand = \"x\"\ndeploy = { root = \"/r\", source = { archive = \"a.tar.gz\" }, health = { tcp = \"127.0.0.1:9\", timeout = \"2m\" } }\n";
    let deploy = app(archive, "a").deploy.unwrap();
    assert_eq!(
        deploy.source,
        DeploySource::Archive("/etc/citrus/a.tar.gz".into())
    );
    assert_eq!(
        deploy.health.as_ref().unwrap().timeout,
        Duration::from_secs(120)
    );
}

#[test]
fn deploy_errors() {
    let head = "[apps.web]\ncommand = \"x\"\n[apps.web.deploy]\n";
    assert_error(
        &format!("{head}root = \"/r\"\n"),
        3,
        11,
        "apps.web.deploy",
        "[deploy] has no `source`",
    );
    assert_error(
        &format!("{head}source = {{ path = \"/p\" }}\n"),
        3,
        11,
        "apps.web.deploy",
        "[deploy] has no `root`",
    );
    assert_error(
        &format!("{head}root = \"/r\"\nsource = {{ path = \"/p\", git = \"/g\" }}\n"),
        5,
        25,
        "apps.web.deploy.source",
        "takes only one of",
    );
    assert_error(
        &format!("{head}root = \"/r\"\nsource = {{ path = \"/p\", branch = \"x\" }}\n"),
        5,
        25,
        "apps.web.deploy.source.branch",
        "`branch` is for a git source",
    );
    assert_error(
        &format!("{head}root = \"/r\"\nsource = {{ git = \"git@host:x.git\" }}\n"),
        5,
        18,
        "apps.web.deploy.source.git",
        "ssh sources are not supported",
    );
    assert_error(
        &format!("{head}root = \"/r\"\nsource = {{ path = \"/p\" }}\nshared = [\"../etc\"]\n"),
        6,
        11,
        "apps.web.deploy.shared",
        "invalid shared path",
    );
    assert_error(
        &format!("{head}root = \"/r\"\nsource = {{ path = \"/p\" }}\nkeep = 0\n"),
        6,
        8,
        "apps.web.deploy.keep",
        "from 1 to 100",
    );
    assert_error(
        &format!("{head}root = \"/r\"\nsource = {{ path = \"/p\" }}\nbuild_timeout = \"2d\"\n"),
        6,
        17,
        "apps.web.deploy.build_timeout",
        "at most a day",
    );
    assert_error(
        &format!("{head}root = \"/r\"\nsource = {{ path = \"/p\" }}\nbuld = [\"make\"]\n"),
        6,
        1,
        "apps.web.deploy.buld",
        "did you mean `build`",
    );
    assert_error(
        &format!("{head}root = \"/r\"\nsource = {{ path = \"/p\" }}\nbuild = []\n"),
        6,
        9,
        "apps.web.deploy.build",
        "command is empty",
    );
    assert_error(
        "[defaults]\ndeploy = { root = \"/r\", source = { path = \"/p\" } }\n[apps.a]\ncommand = \"x\"\n",
        2,
        1,
        "defaults.deploy",
        "cannot be set in [defaults]",
    );
}

#[test]
fn listen_addresses() {
    let a = app(
        &with_app(
            "listen = [\"tcp://127.0.0.1:8089\", \"tcp://[::1]:8089\", \"unix:/run/web.sock\", \"unix:run/api.sock\"]\n",
        ),
        "a",
    );
    let shown: Vec<String> = a.listen.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "tcp://127.0.0.1:8089",
            "tcp://[::1]:8089",
            "unix:/run/web.sock",
            "unix:/etc/citrus/run/api.sock",
        ]
    );
    assert_eq!(
        a.listen[0],
        ListenAddr::Tcp("127.0.0.1:8089".parse().unwrap())
    );
    assert!(app(&with_app(""), "a").listen.is_empty());
    let config = parse(&with_app("")).unwrap();
    let runtime = config.runtime_app("rt", strings(&["y"]), 1, None).unwrap();
    assert!(runtime.listen.is_empty());
}

#[test]
fn listen_errors() {
    assert_error(
        &with_app("listen = [\"tcp://nohost\"]\n"),
        3,
        11,
        "apps.a.listen",
        "invalid listen address \"tcp://nohost\": the port is missing",
    );
    assert_error(
        &with_app("listen = [\"tcp://127.0.0.1:1\", \"udp://127.0.0.1:53\"]\n"),
        3,
        32,
        "apps.a.listen",
        "unsupported scheme `udp`",
    );
    assert_error(
        &with_app("listen = [\"unix:\"]\n"),
        3,
        11,
        "apps.a.listen",
        "the path is empty",
    );
    assert_error(
        &with_app("listen = \"tcp://127.0.0.1:1\"\n"),
        3,
        10,
        "apps.a.listen",
        "invalid type",
    );
    assert_error(
        &with_app(
            "listen = [\"tcp://127.0.0.1:1\", \"unix:/run/x.sock\", \"tcp://127.0.0.1:1\"]\n",
        ),
        3,
        52,
        "apps.a.listen",
        "tcp://127.0.0.1:1 is listed twice",
    );
    // `./x.sock` and `x.sock` are one path.
    assert_error(
        &with_app("listen = [\"unix:x.sock\", \"unix:./x.sock\"]\n"),
        3,
        26,
        "apps.a.listen",
        "unix:/etc/citrus/x.sock is listed twice",
    );
    assert_error(
        "[apps.a]\ncommand = \"y\"\nlisten = [\"tcp://127.0.0.1:1\"]\n[apps.b]\ncommand = \"y\"\nlisten = [\"tcp://127.0.0.1:1\"]\n",
        6,
        11,
        "apps.b.listen",
        "already in the `listen` of app `a`",
    );
    assert_error(
        "[defaults]\nlisten = [\"tcp://127.0.0.1:1\"]\n[apps.a]\ncommand = \"y\"\n",
        2,
        1,
        "defaults.listen",
        "`listen` cannot be set in [defaults]",
    );
    let many: Vec<String> = (1..=17)
        .map(|port| format!("\"tcp://127.0.0.1:{port}\""))
        .collect();
    assert_error(
        &with_app(&format!("listen = [{}]\n", many.join(", "))),
        3,
        10,
        "apps.a.listen",
        "17 addresses; an app may listen on at most 16",
    );
    let long = format!("unix:/{}", "x".repeat(120));
    assert_error(
        &with_app(&format!("listen = [\"{long}\"]\n")),
        3,
        11,
        "apps.a.listen",
        "a Unix socket path holds at most 107",
    );
}

#[test]
fn counts_have_an_upper_bound() {
    let app = |line: &str| format!("[apps.a]\ncommand = \"x\"\n{line}\n");
    assert_error(
        &app("log_keep = 100000"),
        3,
        12,
        "apps.a.log_keep",
        "must be from 0 to 1000",
    );
    assert_error(
        &app("max_restarts = 4000000000"),
        3,
        16,
        "apps.a.max_restarts",
        "must be from 0 to 1000000",
    );
}
