use serde_json::Map;

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
