//! Logs people search: `citrusctl logs APP --since --grep --json`, on the tail and with `-f`,
//! filtered in citrusd; bad values refused with exit 2.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use citrus::control::{AppState, LogLine};

use crate::support::{wait_for, Daemon, CITRUSCTL, DEADLINE};

/// Two instances of an app with stamped lines; instance 0's out log already holds a line stamped
/// in 2020 and one without a stamp (written before `log_timestamps` was turned on).
fn daemon() -> Daemon {
    let d = Daemon::prepare(
        "[apps.web]\ninstances = 2\nlog_timestamps = true\ncommand = [\"sh\", \"-c\", \"echo 'GET /a 200'; echo 'GET /b 500'; echo 'POST /c 200'; echo oops >&2; i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.05; done\"]\n",
        &[],
    );
    let logs = d.dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(
        logs.join("web-0-out.log"),
        "unstamped GET /u 200\n2020-01-01T00:00:00.000Z GET /old 200\n",
    )
    .unwrap();
    let d = d.launch();
    d.wait_state("web", AppState::Online);
    wait_for("both instances' output", DEADLINE, || {
        let (zero, one) = (d.log("web-0-err.log"), d.log("web-1-err.log"));
        match zero.contains("oops") && one.contains("oops") {
            true => Ok(()),
            false => Err(format!("{zero:?} {one:?}")),
        }
    });
    d
}

fn json_lines(text: &str) -> Vec<LogLine> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

#[test]
fn grep_since_and_json_on_the_tail() {
    let d = daemon();
    let grep = d.ctl(&[
        "logs",
        "web",
        "--out",
        "--lines",
        "100",
        "--grep",
        "^GET .* 200$",
    ]);
    grep.code(0);
    // The pattern is searched without the stamp (`^GET` matches after it).
    assert_eq!(
        grep.stdout.matches("GET /a 200\n").count(),
        2,
        "{}",
        grep.stdout
    );
    assert!(grep.stdout.contains("Z GET /a 200"), "{}", grep.stdout);
    grep.stdout_has(&["2020-01-01T00:00:00.000Z GET /old 200"]);
    for absent in ["/b 500", "POST", "tick", "[citrus]", "unstamped"] {
        assert!(!grep.stdout.contains(absent), "{absent}: {}", grep.stdout);
    }

    // --since 10m: today's lines only; an unstamped line has no time and is left out.
    let recent = d.ctl(&[
        "logs", "web", "--out", "--lines", "100", "--since", "10m", "--grep", "GET",
    ]);
    recent.code(0).stdout_has(&["GET /a 200", "GET /b 500"]);
    assert!(
        !recent.stdout.contains("/old") && !recent.stdout.contains("/u "),
        "{}",
        recent.stdout
    );
    let old = d.ctl(&[
        "logs",
        "web",
        "--since",
        "2019-12-31T23:00:00Z",
        "--grep",
        "/old|/u ",
    ]);
    old.code(0).stdout_has(&["GET /old 200"]);
    assert!(!old.stdout.contains("/u "), "{}", old.stdout);
    // -n counts the lines kept, the last ones.
    let last = d.ctl(&["logs", "web", "--out", "-n", "1", "--grep", "^tick"]);
    last.code(0);
    assert_eq!(
        last.stdout.matches("tick").count(),
        2,
        "one per file: {}",
        last.stdout
    );

    // --json: one object per line, the stamp as `time`.
    let json = d.ctl(&["--json", "logs", "web", "--out", "--grep", "^GET /(a|old) "]);
    json.code(0);
    let lines = json_lines(&json.stdout);
    let started = SystemTime::now() - Duration::from_secs(600);
    let recent_time = |l: &LogLine| {
        let t = chrono::DateTime::parse_from_rfc3339(l.time.as_deref().unwrap()).unwrap();
        SystemTime::from(t) > started
    };
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0].line, "GET /old 200");
    assert_eq!(lines[0].time.as_deref(), Some("2020-01-01T00:00:00.000Z"));
    for (l, instance) in lines[1..].iter().zip([0, 1]) {
        assert_eq!(
            (l.app.as_str(), l.instance, l.stream.as_str()),
            ("web", instance, "out")
        );
        assert_eq!(l.line, "GET /a 200");
        assert!(recent_time(l), "{l:?}");
    }
    let unstamped = json_lines(
        &d.ctl(&["--json", "logs", "web", "--out", "--grep", "/u "])
            .stdout,
    );
    assert_eq!(unstamped.len(), 1);
    assert_eq!(
        (unstamped[0].time.as_deref(), unstamped[0].line.as_str()),
        (None, "unstamped GET /u 200")
    );
    let err = json_lines(
        &d.ctl(&["--json", "logs", "web", "--err", "--grep", "oops"])
            .stdout,
    );
    assert_eq!(err.len(), 2, "{err:?}");
    assert!(err
        .iter()
        .all(|l| l.stream == "err" && l.line == "oops" && recent_time(l)));
}

#[test]
fn follow_filters_and_writes_json() {
    let d = daemon();
    let mut follow = Command::new(CITRUSCTL)
        .arg("--socket")
        .arg(&d.socket)
        .args([
            "--json",
            "logs",
            "web",
            "-f",
            "--lines",
            "0",
            "--since",
            "1m",
            "--grep",
            "^tick [0-9]*5$",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(follow.stdout.take().unwrap());
    let mut seen = Vec::new();
    // Every instance ticks 20 times a second: 4 kept lines come within a second or two.
    while seen.len() < 4 {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "follow ended early: {seen:?}"
        );
        let parsed: LogLine =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        seen.push(parsed);
    }
    let _ = follow.kill();
    let _ = follow.wait();
    for l in &seen {
        assert!(
            l.line.starts_with("tick ") && l.line.ends_with('5'),
            "{l:?}"
        );
        assert_eq!((l.app.as_str(), l.stream.as_str()), ("web", "out"));
        assert!(l.time.is_some(), "{l:?}");
    }
}

#[test]
fn bad_since_and_grep_exit_2_with_one_message() {
    let d = daemon();
    d.ctl(&["logs", "web", "--since", "yesterday"])
        .code(2)
        .stderr_has(&["--since \"yesterday\": expected a duration back from now (10m, 2h, 1d) or an RFC 3339 time"]);
    d.ctl(&["logs", "web", "--since", "2026-13-01T00:00:00Z"])
        .code(2);
    d.ctl(&["logs", "web", "--grep", "(unclosed"])
        .code(2)
        .stderr_has(&["grep pattern \"(unclosed\" is not a regular expression"]);
    let long = "a".repeat(2000);
    d.ctl(&["logs", "web", "--grep", &long])
        .code(2)
        .stderr_has(&["too long: at most 1024"]);
}

/// `[daemon] log_format = "json"`: every line citrusd writes about itself is one JSON object with
/// its time, level and message; the default stays text; a value not known is a config error at
/// its line.
#[test]
fn daemon_log_format_json_writes_one_object_per_line() {
    let mut d = Daemon::start(
        "[daemon]\nstate_dir = \"state\"\nlog_dir = \"logs\"\nlog_format = \"json\"\n\n\
         [apps.web]\ncommand = [\"sleep\", \"30\"]\n",
    );
    d.wait_state("web", AppState::Online);
    d.ctl(&["restart", "web"]).code(0);
    let lines = wait_for("citrusd's log lines about the restart", DEADLINE, || {
        let text = d.stderr();
        match text.contains("web") {
            true => Ok(text),
            false => Err(text),
        }
    });
    let mut messages = 0;
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let object: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\nall:\n{lines}"));
        assert!(object["timestamp"].is_string(), "{line}");
        assert!(object["level"].is_string(), "{line}");
        assert!(object["fields"]["message"].is_string(), "{line}");
        messages += 1;
    }
    assert!(messages > 0, "{lines}");
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);

    let text = Daemon::start("[apps.web]\ncommand = [\"sleep\", \"30\"]\n");
    text.wait_state("web", AppState::Online);
    let first = wait_for("a text log line", DEADLINE, || {
        text.stderr()
            .lines()
            .next()
            .map(str::to_string)
            .ok_or_else(|| "nothing yet".to_string())
    });
    assert!(!first.starts_with('{'), "text by default: {first}");

    let err = crate::config_errors::refused(
        "[daemon]\nstate_dir = \"state\"\nlog_dir = \"logs\"\nlog_format = \"yaml\"\n",
    );
    assert!(err.contains("citrusd.toml:4:"), "{err}");
    assert!(err.contains("text, json"), "{err}");
}
