//! Connection floods against citrusd's control socket and the engine's listener (issue 10,
//! class 1): thousands of half-sent requests, a cap with the excess refused cheaply, the header
//! timeout, supervision that goes on, and a replaced agent connection whose peer never answers
//! the Close frame.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use citrus::control::AppState;
use citrus::sys::procfs;
use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use tokio::io::AsyncReadExt;

use crate::hub_support::{agent_headers, raw_connect, EngineProc};
use crate::support::{wait_for, Daemon, DEADLINE};

/// A request line and nothing more: the server waits for the rest of the head.
const HALF_REQUEST: &[u8] = b"GET /v1/ping HTTP/1.1\r\n";
/// Connections each flood opens.
const FLOOD: usize = 3000;
/// citrusd's open-files limit in the flood test: before the fix, the flood exhausted it.
const CITRUSD_NOFILE: u64 = 1024;

/// Raises this process's soft open-files limit to the hard one (a flood holds thousands of
/// sockets while other tests run); returns how many connections a flood may open.
fn flood_size() -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    // Leave room for the rest of the suite running in parallel.
    let room = usize::try_from(hard)
        .unwrap_or(usize::MAX)
        .saturating_sub(4000);
    assert!(
        room >= 1500,
        "the open-files limit ({hard}) is too small for the flood tests: raise it (ulimit -n)"
    );
    FLOOD.min(room)
}

/// Opens `n` connections to the Unix socket at `path`, sending [`HALF_REQUEST`] on each. Stops
/// early (returning fewer) if the server stops accepting for 15 s.
fn unix_flood(path: &Path, n: usize) -> Vec<OwnedFd> {
    let addr = UnixAddr::new(path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut fds = Vec::with_capacity(n);
    while fds.len() < n && Instant::now() < deadline {
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let fd = socket::socket(AddressFamily::Unix, SockType::Stream, flags, None).unwrap();
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {
                let _ = nix::unistd::write(&fd, HALF_REQUEST);
                fds.push(fd);
            }
            // The backlog is full: the server is not accepting right now.
            Err(Errno::EAGAIN) => std::thread::yield_now(),
            Err(e) => panic!("connect to {}: {e}", path.display()),
        }
    }
    fds
}

/// As [`unix_flood`] over TCP.
fn tcp_flood(addr: SocketAddr, n: usize) -> Vec<OwnedFd> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut fds = Vec::with_capacity(n);
    while fds.len() < n && Instant::now() < deadline {
        if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            stream.set_nonblocking(true).unwrap();
            let fd = OwnedFd::from(stream);
            let _ = nix::unistd::write(&fd, HALF_REQUEST);
            fds.push(fd);
        }
    }
    fds
}

/// How many of `fds` the server still holds open (whatever it sent is read and dropped).
fn still_open(fds: &[OwnedFd]) -> usize {
    let mut buf = [0u8; 4096];
    fds.iter()
        .filter(|fd| loop {
            match socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => break false,
                Ok(_) => continue,
                Err(Errno::EAGAIN) => break true,
                Err(_) => break false,
            }
        })
        .count()
}

/// One `GET` on a fresh connection (a pooled keep-alive one may have been closed as idle).
fn get_once(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss(pid: i32) -> u64 {
    procfs::stat(pid).expect("process alive").rss_pages * procfs::page_size()
}

/// Runs `citrusctl status` and returns how long it took; panics if it failed.
#[track_caller]
fn timed_status(d: &Daemon) -> Duration {
    let at = Instant::now();
    d.ctl(&["status"]).code(0);
    at.elapsed()
}

#[test]
fn half_sent_requests_neither_starve_citrusd_nor_stay() {
    let n = flood_size();
    let mut d = Daemon::prepare("[apps.victim]\ncommand = [\"sleep\", \"600\"]\n", &[]);
    d.nofile = Some(CITRUSD_NOFILE);
    let d = d.launch();
    let victim = d.wait_state("victim", AppState::Online)[0].pid.unwrap();
    let before = timed_status(&d);
    let baseline = fd_count(d.pid());

    let flood = unix_flood(&d.socket, n);
    let flood_end = Instant::now();
    assert_eq!(
        flood.len(),
        n,
        "citrusd stopped accepting during the flood; stderr:\n{}",
        d.stderr()
    );
    let cap = citrus::daemon::api::CONTROL_MAX_CONNECTIONS.min(CITRUSD_NOFILE as usize / 4);
    let held = wait_for(
        "citrusd to close what is over its cap",
        DEADLINE,
        || match still_open(&flood) {
            open if open <= cap => Ok(open),
            open => Err(format!("{open} connections held, cap {cap}")),
        },
    );
    let fds = fd_count(d.pid());
    assert!(
        fds <= baseline + cap + 8,
        "citrusd holds {fds} descriptors (baseline {baseline}, cap {cap})"
    );

    // Supervision and the API go on while the connections are held.
    let during = timed_status(&d);
    assert!(during < Duration::from_secs(2), "status took {during:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("the crashed app to be respawned", DEADLINE, || {
        let s = d.app("victim").remove(0);
        match (s.state, s.pid) {
            (AppState::Online, Some(pid)) if pid != victim => Ok(()),
            (AppState::Errored, _) => panic!("victim errored: {s:?}"),
            other => Err(format!("{other:?}")),
        }
    });

    // After the header timeout (5 s) nothing of the flood is left.
    wait_for(
        "the half-sent requests to time out",
        Duration::from_secs(20),
        || match (still_open(&flood), fd_count(d.pid())) {
            (0, fds) if fds <= baseline + 8 => Ok(()),
            (open, fds) => Err(format!("{open} held, citrusd has {fds} fds")),
        },
    );
    let kept = flood_end.elapsed();
    let after = timed_status(&d);
    eprintln!(
        "citrusd flood: {n} half-sent requests, {held} held (cap {cap}), all closed {kept:?} \
         after the flood; status {before:?} before, {during:?} during, {after:?} after"
    );
}

#[test]
fn half_sent_requests_cannot_grow_the_engine() {
    let n = flood_size();
    let engine = EngineProc::start("");
    let pid = engine.pid();
    let rss_before = rss(pid);
    let addr: SocketAddr = format!("127.0.0.1:{}", engine.port).parse().unwrap();

    let flood = tcp_flood(addr, n);
    let flood_end = Instant::now();
    assert_eq!(
        flood.len(),
        n,
        "the engine stopped accepting during the flood"
    );
    let cap = citrus::engine::MAX_HTTP_CONNECTIONS;
    let held = wait_for(
        "the engine to close what is over its cap",
        DEADLINE,
        || match still_open(&flood) {
            open if open <= cap => Ok(open),
            open => Err(format!("{open} connections held, cap {cap}")),
        },
    );
    let rss_during = rss(pid);
    assert!(
        rss_during < rss_before + (64 << 20),
        "RSS grew from {} to {} MiB",
        rss_before >> 20,
        rss_during >> 20
    );
    let at = Instant::now();
    let answer = get_once(addr, "/health");
    let health = at.elapsed();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(health < Duration::from_secs(2), "/health took {health:?}");

    // After the header timeout (10 s) nothing of the flood is left.
    wait_for(
        "the half-sent requests to time out",
        Duration::from_secs(30),
        || match still_open(&flood) {
            0 => Ok(()),
            open => Err(format!("{open} held")),
        },
    );
    eprintln!(
        "engine flood: {n} half-sent requests, {held} held (cap {cap}), all closed {:?} after \
         the flood; RSS {} → {} MiB; /health {health:?} during",
        flood_end.elapsed(),
        rss_before >> 20,
        rss_during >> 20
    );
}

#[test]
fn a_replaced_agent_connection_that_ignores_the_close_is_dropped_soon() {
    // Silence would take 3 × 30 s: the close timeout must end the old connection well before.
    let engine = EngineProc::start("status_interval = \"30s\"\n");
    let (id, key) = engine.enrolled_agent("replaced");
    let url = engine.ws_url();
    let headers = agent_headers(&id, &key);
    let mut old = raw_connect(&engine.rt, &url, &headers).expect("first connection");
    engine.wait_agent_status(&id, "online");
    let _new = raw_connect(&engine.rt, &url, &headers).expect("second connection");
    let replaced = Instant::now();

    // Read the old connection's bytes raw, under the WebSocket layer, so that nothing ever
    // answers the Close frame: the engine must drop it on its own.
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = old.ws.get_mut() else {
        panic!("plain TCP expected");
    };
    let eof = engine.rt.block_on(async {
        let mut buf = [0u8; 1024];
        tokio::time::timeout(DEADLINE, async {
            while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        })
        .await
    });
    let dropped = replaced.elapsed();
    assert!(
        eof.is_ok(),
        "the replaced connection was still open after {DEADLINE:?}"
    );
    assert!(
        dropped < citrus::engine::hub::CLOSE_TIMEOUT + Duration::from_secs(5),
        "dropped after {dropped:?}"
    );
    eprintln!("replaced agent connection dropped {dropped:?} after its replacement");
}
