//! Readiness (`ready`: http, tcp, sd_notify) gating `online`, `after` and `reload`; liveness
//! (`health`) probes restarting the app; citrusd's own sd_notify towards systemd.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use citrus::control::AppState;

use crate::support::{count, free_port, wait_for, Daemon, Receiver, DEADLINE};

/// A python3 one-liner app: an HTTP server on `port` that starts listening after `delay_s`.
fn late_server(port: u16, delay_s: f64) -> String {
    format!(
        "command = [\"python3\", \"-c\", \"import time, http.server; time.sleep({delay_s}); http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler).serve_forever()\"]\n"
    )
}

#[test]
fn http_readiness_gates_online_and_start_waits_for_it() {
    let port = free_port();
    let d = Daemon::start(&format!(
        "[apps.web]\n{}ready = {{ http = \"http://127.0.0.1:{port}/\", timeout = \"20s\", interval = \"50ms\" }}\nautostart = false\n",
        late_server(port, 1.0)
    ));
    let t0 = Instant::now();
    d.ctl(&["start", "web"]).code(0).stdout_has(&["online"]);
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "start returned before the app was ready"
    );
    assert!(d.log("web-out.log").contains("[citrus] ready"));
}

#[test]
fn after_waits_for_the_dependency_to_be_ready() {
    let port = free_port();
    let d = Daemon::start(&format!(
        "[apps.db]\n{}ready = {{ tcp = \"127.0.0.1:{port}\", interval = \"50ms\" }}\n\
         [apps.api]\ncommand = [\"sleep\", \"1000\"]\nafter = [\"db\"]\n",
        late_server(port, 0.8)
    ));
    d.wait_state("api", AppState::Online);
    let db = d.log("db-out.log");
    let api = d.log("api-out.log");
    let ready_at = db
        .lines()
        .find(|l| l.contains("[citrus] ready"))
        .expect("db ready line")[..24]
        .to_string();
    let spawned_at = api
        .lines()
        .find(|l| l.contains("[citrus] spawned"))
        .expect("api spawn line")[..24]
        .to_string();
    assert!(
        spawned_at >= ready_at,
        "api spawned at {spawned_at}, before db was ready at {ready_at}"
    );
    assert_eq!(count(&db, "[citrus] ready"), 1);
}

#[test]
fn reload_restarts_instances_one_at_a_time_each_ready_before_the_next() {
    // Each instance takes 0.5 s to send READY=1 on its own NOTIFY_SOCKET.
    let d = Daemon::start(&format!(
        "[apps.pool]\n{}instances = 2\nready = {{ notify = true, timeout = \"10s\" }}\n",
        notify_app(0)
    ));
    d.wait_state("pool", AppState::Online);
    d.ctl(&["reload", "pool"]).code(0);
    let first = d.log("pool-0-out.log");
    let second = d.log("pool-1-out.log");
    let ready_again = first
        .lines()
        .filter(|l| l.contains("[citrus] ready"))
        .nth(1)
        .expect("instance 0 ready again")[..24]
        .to_string();
    let stopping = second
        .lines()
        .find(|l| l.contains("[citrus] stopping"))
        .expect("instance 1 stopped")[..24]
        .to_string();
    assert!(
        stopping >= ready_again,
        "instance 1 stopped at {stopping} before instance 0 was ready again at {ready_again}"
    );
    assert_eq!(
        d.app("pool")
            .iter()
            .filter(|r| r.state == AppState::Online)
            .count(),
        2
    );
}

#[test]
fn a_failing_liveness_probe_restarts_the_app_and_raises_health_failed() {
    let hook = Receiver::start();
    let dead = free_port();
    let d = Daemon::start(&format!(
        "[apps.sick]\ncommand = [\"sleep\", \"1000\"]\nhealth = {{ tcp = \"127.0.0.1:{dead}\", interval = \"100ms\", timeout = \"100ms\", failures = 2 }}\n\
         [notify]\nwebhook = \"{}\"\n",
        hook.url
    ));
    wait_for("a health restart", DEADLINE, || {
        let r = d.app("sick").remove(0);
        if r.restarts >= 1 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    let event = hook.wait_event("health_failed");
    assert_eq!(event["app"], "sick");
    assert!(
        event["message"]
            .as_str()
            .unwrap()
            .contains("failed 2 times in a row"),
        "{event}"
    );
}

/// An app that speaks sd_notify: STATUS, then READY=1 after a moment, then WATCHDOG=1 pings
/// for `pings` rounds, then silence.
fn notify_app(pings: u32) -> String {
    format!(
        r#"command = ["python3", "-c", '''
import os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
def say(m): s.sendto(m.encode(), os.environ["NOTIFY_SOCKET"])
say("STATUS=warming up")
time.sleep(0.5)
say("READY=1\nSTATUS=serving")
for _ in range({pings}):
    time.sleep(0.1)
    say("WATCHDOG=1")
time.sleep(1000)
''']
"#
    )
}

#[test]
fn notify_readiness_status_and_watchdog_work_like_systemd() {
    let d = Daemon::start(&format!(
        "[apps.svc]\n{}ready = {{ notify = true, watchdog = \"700ms\", timeout = \"10s\" }}\nautostart = false\n",
        notify_app(5)
    ));
    let t0 = Instant::now();
    d.ctl(&["start", "svc"]).code(0);
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "online before READY=1"
    );
    d.ctl(&["describe", "svc"])
        .code(0)
        .stdout_has(&["status: serving"]);
    // After its pings stop, the watchdog restarts it.
    wait_for("a watchdog restart", DEADLINE, || {
        let r = d.app("svc").remove(0);
        if r.restarts >= 1 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    assert!(d.log("svc-out.log").contains("no WATCHDOG=1 within"));
}

#[test]
fn an_app_never_ready_fails_its_start_and_counts_as_unstable() {
    let d = Daemon::start(
        "[apps.mute]\ncommand = [\"sleep\", \"1000\"]\nready = { notify = true, timeout = \"300ms\" }\nmax_restarts = 1\nmin_uptime = \"10s\"\nautostart = false\n",
    );
    d.ctl(&["start", "mute"])
        .code(1)
        .stderr_has(&["not ready within 300ms"]);
    d.wait_state("mute", AppState::Errored);
    assert!(d.marked(Some("mute")).is_empty());
}

#[test]
fn citrusd_tells_systemd_ready_watchdog_and_stopping() {
    let mut d = Daemon::prepare("[apps.one]\ncommand = [\"sleep\", \"1000\"]\n", &[]);
    let sock_path = d.dir.path().join("systemd-notify.sock");
    let systemd = UnixDatagram::bind(&sock_path).unwrap();
    systemd.set_read_timeout(Some(DEADLINE)).unwrap();
    d.extra_env = vec![
        ("NOTIFY_SOCKET".into(), sock_path.display().to_string()),
        ("WATCHDOG_USEC".into(), "200000".into()),
    ];
    d.spawn();
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.contains("READY=1")) {
        let n = systemd.recv(&mut buf).expect("a notification");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // READY=1 comes once the apps are started.
    d.wait_ready();
    assert_eq!(d.app("one")[0].state, AppState::Online);
    let mut pings = 0;
    while pings < 3 {
        let n = systemd.recv(&mut buf).expect("watchdog pings");
        pings += usize::from(String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1"));
    }
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let mut stopping = false;
    while !stopping {
        let n = systemd.recv(&mut buf).expect("STOPPING=1");
        stopping = String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
    }
    assert_eq!(d.wait_exit(), 0);
}
