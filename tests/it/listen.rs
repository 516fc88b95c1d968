//! Socket activation (`listen`): citrusd binds the sockets once and passes them as fds 3, 4, …
//! with LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES; they stay open across restarts, reloads,
//! crashes and config reloads, so a single-instance app restarts without a refused connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use citrus::control::AppState;

use crate::support::{stable_port, wait_for, Daemon, DEADLINE};

/// A server that takes its sockets from citrusd: checks LISTEN_PID, answers each connection
/// with one line naming its pid and what it received, and on SIGTERM finishes the request in
/// hand and exits, leaving queued connections to its successor.
const SERVER: &str = r#"
import os, selectors, signal, socket, sys

if os.environ.get("LISTEN_PID") != str(os.getpid()):
    sys.exit("LISTEN_PID %r is not my pid %d" % (os.environ.get("LISTEN_PID"), os.getpid()))
count = int(os.environ["LISTEN_FDS"])
names = os.environ["LISTEN_FDNAMES"]
wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGTERM, lambda *_: None)
sel = selectors.DefaultSelector()
sel.register(wake_r, selectors.EVENT_READ)
for fd in range(3, 3 + count):
    sel.register(socket.socket(fileno=fd), selectors.EVENT_READ)
print("serving", os.getpid(), names, flush=True)
while True:
    ready = [key.fileobj for key, _ in sel.select()]
    if wake_r in ready:
        print("SIGTERM: stopping", flush=True)
        break
    for listener in ready:
        conn, _ = listener.accept()
        with conn:
            conn.recv(64)
            line = "pid=%d fds=%d names=%s greeting=%s \n" % (
                os.getpid(), count, names, os.environ.get("GREETING", "-"))
            conn.sendall(line.encode())
"#;

/// Writes the server next to the config; returns its path.
fn write_server(dir: &Path) -> String {
    let path = dir.join("server.py");
    std::fs::write(&path, SERVER).unwrap();
    path.display().to_string()
}

/// An app block running the server with `listen`.
fn app(name: &str, server: &str, listen: &[String], extra: &str) -> String {
    let listen: Vec<String> = listen.iter().map(|l| format!("{l:?}")).collect();
    format!(
        "[apps.{name}]\ncommand = [\"python3\", {server:?}]\nlisten = [{}]\nkill_timeout = \"10s\"\n{extra}\n",
        listen.join(", ")
    )
}

/// Starts citrusd with `body` written after the server exists in its dir.
fn start(body: impl FnOnce(&str) -> String) -> Daemon {
    let mut d = Daemon::prepare("", &[]);
    let server = write_server(d.dir.path());
    let config = crate::support::with_daemon_table(&body(&server));
    std::fs::write(&d.config, config).unwrap();
    d.spawn();
    d.wait_ready();
    d
}

/// One request over `stream`: the server's answer line.
fn exchange(mut stream: impl Read + Write) -> Result<String, String> {
    stream
        .write_all(b"hello\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    match answer.ends_with('\n') {
        true => Ok(answer),
        false => Err(format!("incomplete answer {answer:?}")),
    }
}

fn tcp_request(addr: SocketAddr) -> Result<String, String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    exchange(stream)
}

fn unix_request(path: &Path) -> Result<String, String> {
    let stream = UnixStream::connect(path).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    exchange(stream)
}

/// The `pid=` of an answer.
fn pid_of(answer: &str) -> i32 {
    let pid = answer
        .split_whitespace()
        .next()
        .and_then(|w| w.strip_prefix("pid="));
    pid.and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {answer:?}"))
}

/// A client doing sequential requests until stopped (at most `MAX_REQUESTS`, within the
/// deadline). The test takes `turn` to keep it between two requests.
struct Client {
    stop: Arc<AtomicBool>,
    turn: Arc<Mutex<()>>,
    results: Arc<Mutex<Vec<Result<String, String>>>>,
    thread: JoinHandle<()>,
}

const MAX_REQUESTS: usize = 20_000;

impl Client {
    fn start(addr: SocketAddr) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let turn = Arc::new(Mutex::new(()));
        let results = Arc::new(Mutex::new(Vec::new()));
        let (stop2, turn2, results2) = (stop.clone(), turn.clone(), results.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            for _ in 0..MAX_REQUESTS {
                if stop2.load(Ordering::SeqCst) || started.elapsed() > DEADLINE * 3 {
                    return;
                }
                let turn = turn2.lock().unwrap();
                let result = tcp_request(addr);
                drop(turn);
                results2.lock().unwrap().push(result);
                // Pacing, not waiting: keeps the connection count (and TIME_WAIT) modest.
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Client {
            stop,
            turn,
            results,
            thread,
        }
    }

    /// Waits until the client has been answered by a process for which `matches` holds.
    #[track_caller]
    fn wait_answer(&self, what: &str, matches: impl Fn(&str) -> bool) {
        wait_for(what, DEADLINE, || {
            let results = self.results.lock().unwrap();
            match results.last() {
                Some(Ok(answer)) if matches(answer) => Ok(()),
                last => Err(format!("{last:?}")),
            }
        });
    }

    /// Stops it; returns (answers, failures).
    fn finish(self) -> (Vec<String>, Vec<String>) {
        let results = self.stop_and_take();
        let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
        let ok = ok.into_iter().map(Result::unwrap).collect();
        let failed = failed.into_iter().map(|r| r.unwrap_err()).collect();
        (ok, failed)
    }

    /// Stops it; returns the longest run of consecutive refused connections, and how many
    /// were refused in all.
    fn finish_refusals(self) -> (usize, usize) {
        let (mut run, mut longest, mut all) = (0, 0, 0);
        for result in self.stop_and_take() {
            match result {
                Err(e) if e.contains("refused") => {
                    run += 1;
                    all += 1;
                    longest = longest.max(run);
                }
                _ => run = 0,
            }
        }
        (longest, all)
    }

    fn stop_and_take(self) -> Vec<Result<String, String>> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        std::mem::take(&mut *self.results.lock().unwrap())
    }
}

/// The pid of the one instance of `app` once online.
fn online_pid(d: &Daemon, app: &str) -> i32 {
    let rows = d.wait_state(app, AppState::Online);
    rows[0].pid.expect("an online instance has a pid") as i32
}

/// Waits until the one instance of `app` is online with a pid other than `old`.
fn new_pid(d: &Daemon, app: &str, old: i32) -> i32 {
    wait_for("a new pid", DEADLINE, || {
        let rows = d.app(app);
        match rows.first().map(|r| (r.state, r.pid)) {
            Some((AppState::Online, Some(pid))) if pid as i32 != old => Ok(pid as i32),
            other => Err(format!("{other:?}")),
        }
    })
}

#[test]
fn tcp_and_unix_sockets_arrive_as_fds_with_the_systemd_variables() {
    let port = stable_port();
    let d = start(|server| {
        let listen = [
            format!("tcp://127.0.0.1:{port}"),
            "unix:web.sock".to_owned(),
        ];
        app("web", server, &listen, "")
    });
    let pid = online_pid(&d, "web");
    let sock = d.dir.path().join("web.sock");
    // The temp dir's path has only letters, digits, `.`, `-` and `/`.
    let unix_name = sock.display().to_string().replace('/', "_");
    let names = format!("names=tcp_127.0.0.1_{port}:unix{unix_name} ");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for answer in [tcp_request(addr).unwrap(), unix_request(&sock).unwrap()] {
        assert_eq!(pid_of(&answer), pid, "{answer}");
        assert!(answer.contains("fds=2 "), "{answer}");
        assert!(answer.contains(&names), "{answer} lacks {names}");
    }
    let describe = d.ctl(&["describe", "web"]);
    describe.code(0).stdout_has(&[&format!(
        "[\"tcp://127.0.0.1:{port}\",\"unix:{}\"]",
        sock.display()
    )]);
}

#[test]
fn restart_reload_and_crash_refuse_no_connection() {
    let port = stable_port();
    let d = start(|server| {
        app(
            "web",
            server,
            &[format!("tcp://127.0.0.1:{port}")],
            "min_uptime = \"0s\"",
        )
    });
    let mut pid = online_pid(&d, "web");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = Client::start(addr);
    let mut pids = vec![pid];
    let served_by = |pid: i32| move |answer: &str| pid_of(answer) == pid;
    client.wait_answer("an answer", served_by(pid));
    for step in ["restart", "restart", "reload"] {
        d.ctl(&[step, "web"]).code(0);
        pid = new_pid(&d, "web", pid);
        pids.push(pid);
        client.wait_answer(&format!("an answer after {step}"), served_by(pid));
    }
    {
        // Between two requests, so that none is cut in the middle by SIGKILL.
        let _turn = client.turn.lock().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    }
    pid = new_pid(&d, "web", pid);
    pids.push(pid);
    client.wait_answer("an answer after SIGKILL", served_by(pid));
    let (answers, failures) = client.finish();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let served: std::collections::BTreeSet<i32> = answers.iter().map(|a| pid_of(a)).collect();
    let ran: std::collections::BTreeSet<i32> = pids.into_iter().collect();
    assert_eq!(served, ran, "every process served the client");
}

#[test]
fn an_address_in_use_errors_the_app_and_start_tries_again() {
    // Below the ephemeral range: once the blocker is gone, no other test's outgoing
    // connection can take the port before citrusd listens on it again.
    let port = stable_port();
    let blocker = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let d = start(|server| {
        let web = app("web", server, &[format!("tcp://127.0.0.1:{port}")], "");
        format!("{web}\n[apps.other]\ncommand = [\"sleep\", \"1000\"]\n")
    });
    d.wait_state("web", AppState::Errored);
    d.wait_state("other", AppState::Online);
    let message =
        format!("cannot listen on tcp://127.0.0.1:{port}: Address already in use (os error 98)");
    d.ctl(&["describe", "web"]).code(0).stdout_has(&[&message]);

    drop(blocker);
    d.ctl(&["start", "web"]).code(0);
    let pid = online_pid(&d, "web");
    let answer = tcp_request(format!("127.0.0.1:{port}").parse().unwrap()).unwrap();
    assert_eq!(pid_of(&answer), pid);
}

#[test]
fn reload_config_with_listen_unchanged_keeps_the_socket() {
    let port = stable_port();
    let listen = [format!("tcp://127.0.0.1:{port}")];
    let mut server = String::new();
    let d = start(|s| {
        server = s.to_owned();
        app("web", s, &listen, "env = { GREETING = \"one\" }")
    });
    let pid = online_pid(&d, "web");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = Client::start(addr);
    client.wait_answer("an answer", |a| a.contains("greeting=one"));
    let config = crate::support::with_daemon_table(&app(
        "web",
        &server,
        &listen,
        "env = { GREETING = \"two\" }",
    ));
    std::fs::write(&d.config, config).unwrap();
    d.ctl(&["reload-config"]).code(0);
    let new = new_pid(&d, "web", pid);
    client.wait_answer("an answer from the new process", |a| {
        a.contains("greeting=two") && pid_of(a) == new
    });
    let (answers, failures) = client.finish();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        answers.iter().any(|a| a.contains("greeting=one")),
        "{answers:?}"
    );
}

#[test]
fn malformed_listen_addresses_are_config_errors() {
    for (listen, column, part) in [
        (
            "\"tcp://nohost\"",
            11,
            "\"tcp://nohost\": the port is missing",
        ),
        (
            "\"tcp://127.0.0.1:1\", \"udp://127.0.0.1:53\"",
            32,
            "\"udp://127.0.0.1:53\": unsupported scheme `udp`",
        ),
        ("\"unix:\"", 11, "\"unix:\": the path is empty"),
    ] {
        let err = crate::config_errors::refused(&format!(
            "[apps.web]\ncommand = [\"true\"]\nlisten = [{listen}]\n"
        ));
        let at = format!("citrusd.toml:8:{column}: apps.web.listen: invalid listen address ");
        assert!(err.contains(&format!("{at}{part}")), "{err}");
    }
    let err = crate::config_errors::refused(
        "[defaults]\nlisten = [\"tcp://127.0.0.1:8089\"]\n[apps.web]\ncommand = [\"true\"]\n",
    );
    assert!(
        err.contains("citrusd.toml:7:1: defaults.listen: `listen` cannot be set in [defaults]"),
        "{err}"
    );
}

#[test]
fn a_reexec_of_citrusd_hands_the_sockets_over() {
    use crate::fleet::{agent, repos, with_update, KEY};
    let engine = crate::engine::Engine::start(KEY);
    let d = agent(&engine, Some(KEY), "");
    repos(d.dir.path());
    with_update(&d, "");
    let server = write_server(d.dir.path());
    let port = stable_port();
    let web = app("web", &server, &[format!("tcp://127.0.0.1:{port}")], "");
    let config = std::fs::read_to_string(&d.config).unwrap() + &web;
    std::fs::write(&d.config, config).unwrap();
    let d = d.launch();
    let pid = online_pid(&d, "web");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = Client::start(addr);
    client.wait_answer("an answer", |a| pid_of(a) == pid);

    engine.send(r#"{"type":"update_agent","id":"up-1"}"#);
    let done = engine.wait_frame("update confirmed by the new process", |v| {
        v["type"] == "update_operation" && v["id"] == "up-1" && v["status"] != "starting"
    });
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(online_pid(&d, "web"), pid, "the app kept running");
    // The new citrusd restarts the app on the sockets it was handed: nothing is refused.
    d.ctl(&["restart", "web"]).code(0);
    let new = new_pid(&d, "web", pid);
    client.wait_answer("an answer from the restarted app", |a| pid_of(a) == new);
    let (_, failures) = client.finish();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
}

#[test]
fn a_deploy_of_a_single_instance_app_refuses_no_connection() {
    let port = stable_port();
    let d = start(|server| {
        let src = std::path::Path::new(server).parent().unwrap().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::copy(server, src.join("server.py")).unwrap();
        format!(
            "{}[apps.web.deploy]\nroot = \"www\"\nsource = {{ path = \"src\" }}\n",
            app("web", "server.py", &[format!("tcp://127.0.0.1:{port}")], "")
        )
    });
    // Nothing to run before the first release.
    d.wait_state("web", AppState::Errored);
    d.ctl(&["deploy", "web"]).code(0);
    let mut pid = online_pid(&d, "web");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = Client::start(addr);
    client.wait_answer("an answer", |a| pid_of(a) == pid);
    for _ in 0..2 {
        d.ctl(&["deploy", "web"]).code(0);
        pid = new_pid(&d, "web", pid);
        client.wait_answer("an answer from the new release", |a| pid_of(a) == pid);
    }
    let (answers, failures) = client.finish();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(answers.len() > 2);
}

/// Binds its port itself with SO_REUSEPORT, but only `BIND_DELAY` seconds after it starts (a slow
/// boot), then answers each connection with its pid; on SIGTERM it closes its listener first.
const REUSEPORT_SERVER: &str = r#"
import os, signal, socket, sys, time
time.sleep(float(os.environ["BIND_DELAY"]))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(128)
signal.signal(signal.SIGTERM, lambda *_: (s.close(), sys.exit(0)))
while True:
    conn, _ = s.accept()
    with conn:
        conn.recv(64)
        conn.sendall(("pid=%d \n" % os.getpid()).encode())
"#;

#[test]
fn a_rolling_reload_waits_until_the_new_instance_listens_on_a_shared_port() {
    let port = stable_port();
    let d = start(|_| {
        format!(
            "[apps.web]\ncommand = [\"python3\", \"-c\", {REUSEPORT_SERVER:?}]\ninstances = 2\n\
             env = {{ PORT = \"{port}\", BIND_DELAY = \"0.8\" }}\n\
             ready = {{ tcp = \"127.0.0.1:{port}\", timeout = \"20s\" }}\n"
        )
    });
    let before: Vec<i32> = d
        .wait_state("web", AppState::Online)
        .iter()
        .map(|r| r.pid.unwrap() as i32)
        .collect();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = Client::start(addr);
    client.wait_answer("an answer", |_| true);
    // Each new instance's probe is answered at once by its old sibling; the sibling must not be
    // stopped before the new instance listens itself (0.8 s later).
    d.ctl(&["reload", "web"]).code(0);
    let after: Vec<i32> = d.app("web").iter().map(|r| r.pid.unwrap() as i32).collect();
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} -> {after:?}"
    );
    client.wait_answer("an answer from a new instance", |a| {
        after.contains(&pid_of(a))
    });
    // A connection queued on a closing SO_REUSEPORT listener may be reset, and a SYN that the
    // kernel hashed to a listener in the instant it closes is refused (without the
    // net.ipv4.tcp_migrate_req sysctl, nothing moves it to the sibling): at most one such per
    // stopped instance, never a run. A gap with nobody listening (the new instance's 0.8 s
    // before it binds) would refuse every request in it: a long run.
    let (longest, all) = client.finish_refusals();
    assert!(
        longest <= 2 && all <= 2,
        "nobody listened for a while: {all} refused, {longest} in a row"
    );
}
