//! Test fixtures: a real citrusd in a temp dir, citrusctl runs, and the one deadline-wait helper.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use citrus::control::{AppState, AppStatus, Status};
use citrus::sys::procfs;

pub const CITRUSD: &str = env!("CARGO_BIN_EXE_citrusd");
pub const CITRUSCTL: &str = env!("CARGO_BIN_EXE_citrusctl");

/// A deadline generous enough for a loaded 2-core CI machine; tests finish as soon as the
/// condition holds.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Ok`, or panics after `timeout` with the last thing it saw.
#[track_caller]
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if start.elapsed() > timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// The outcome of one command.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs `cmd` to completion (stdin empty) and captures its output.
    pub fn from_command(cmd: &mut Command) -> Run {
        Run::from(cmd.stdin(Stdio::null()).output().expect("run command"))
    }

    /// Asserts the exit code, showing the output when it differs.
    #[track_caller]
    pub fn code(&self, want: i32) -> &Run {
        assert_eq!(
            self.code, want,
            "exit code; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts that stderr contains every needle.
    #[track_caller]
    pub fn stderr_has(&self, needles: &[&str]) -> &Run {
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "stderr lacks {n:?}:\n{}",
                self.stderr
            );
        }
        self
    }

    /// Asserts that stdout contains every needle.
    #[track_caller]
    pub fn stdout_has(&self, needles: &[&str]) -> &Run {
        for n in needles {
            assert!(
                self.stdout.contains(n),
                "stdout lacks {n:?}:\n{}",
                self.stdout
            );
        }
        self
    }
}

/// Runs citrusctl with `args` against `socket`.
pub fn ctl_at(socket: &Path, args: &[&str]) -> Run {
    let out = Command::new(CITRUSCTL)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run citrusctl");
    Run::from(out)
}

/// Runs citrusd to completion (for configs that must be refused).
pub fn citrusd_once(dir: &Path, config: &Path) -> Run {
    let mut child = Command::new(CITRUSD)
        .arg("--config")
        .arg(config)
        .arg("--socket")
        .arg(dir.join("refused.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn citrusd");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return Run::from(child.wait_with_output().expect("output"));
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!(
                "citrusd did not exit: {:?}",
                Run::from(child.wait_with_output().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A citrusd running in its own temp dir: config, state, logs and socket all inside it.
/// Dropping it stops the daemon (SIGTERM, then SIGKILL) and kills anything of its apps left.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub extra_args: Vec<String>,
    /// Extra environment for citrusd (e.g. NOTIFY_SOCKET).
    pub extra_env: Vec<(String, String)>,
    /// citrusd's open-files limit (soft and hard), when a test wants a small one.
    pub nofile: Option<u64>,
    /// The citrusd binary to run ([`CITRUSD`] unless a test installed a copy elsewhere).
    pub program: PathBuf,
    child: Option<Child>,
}

/// Prepends a `[daemon]` table with paths inside the temp dir unless the body has one.
pub fn with_daemon_table(body: &str) -> String {
    if body.contains("[daemon]") {
        body.to_string()
    } else {
        format!("[daemon]\nstate_dir = \"state\"\nlog_dir = \"logs\"\nmemory_check_interval = \"200ms\"\n\n{body}")
    }
}

impl Daemon {
    /// Writes `config` (see [`with_daemon_table`]) and starts citrusd; returns once `ping` answers.
    pub fn start(config: &str) -> Daemon {
        Self::start_args(config, &[])
    }

    /// As [`Daemon::start`] with extra citrusd flags (e.g. `--env production`).
    pub fn start_args(config: &str, args: &[&str]) -> Daemon {
        let d = Self::prepare(config, args);
        d.launch()
    }

    /// Writes the config without starting anything.
    pub fn prepare(config: &str, args: &[&str]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("citrus-it")
            .tempdir()
            .expect("tempdir");
        let path = dir.path().join("citrusd.toml");
        fs::write(&path, with_daemon_table(config)).expect("write config");
        let socket = dir.path().join("ctl.sock");
        Daemon {
            dir,
            config: path,
            socket,
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            extra_env: Vec::new(),
            nofile: None,
            program: PathBuf::from(CITRUSD),
            child: None,
        }
    }

    /// Starts citrusd and waits for `ping`.
    pub fn launch(mut self) -> Daemon {
        self.spawn();
        self.wait_ready();
        self
    }

    /// Starts the citrusd process (stderr appended to `citrusd.stderr`).
    pub fn spawn(&mut self) {
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("citrusd.stderr"))
            .expect("stderr file");
        let mut command = Command::new(&self.program);
        if let Some(limit) = self.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only setrlimit(2), which is async-signal-safe.
            unsafe {
                command.pre_exec(move || {
                    let rl = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        command
            .arg("--config")
            .arg(&self.config)
            .arg("--socket")
            .arg(&self.socket)
            .args(&self.extra_args)
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .env_remove("CITRUS_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // A test that installed a copy of citrusd (`program`) can meet ETXTBSY: another test
        // thread forked while the copy's write descriptor was open, and that child holds it until
        // its own exec. The busy state ends with that exec, so wait for it.
        let child = wait_for(
            "citrusd's binary to be free to execute",
            DEADLINE,
            || match command.spawn() {
                Ok(child) => Ok(Ok(child)),
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => Err(e.to_string()),
                Err(e) => Ok(Err(e)),
            },
        )
        .expect("spawn citrusd");
        self.child = Some(child);
    }

    /// Waits until `ping` answers (and fails fast if citrusd exited).
    #[track_caller]
    pub fn wait_ready(&mut self) {
        wait_for("citrusd to answer ping", DEADLINE, || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("citrusd exited early ({st}); stderr:\n{}", self.stderr());
                }
            }
            let r = self.ctl(&["ping"]);
            if r.code == 0 {
                Ok(())
            } else {
                Err(r.stderr)
            }
        });
    }

    /// citrusd's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Everything citrusd wrote on stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("citrusd.stderr")).unwrap_or_default()
    }

    /// Runs citrusctl against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Run {
        ctl_at(&self.socket, args)
    }

    /// `status --json`, parsed.
    #[track_caller]
    pub fn status(&self) -> Status {
        let r = self.ctl(&["--json", "status"]);
        r.code(0);
        serde_json::from_str(&r.stdout).expect("status json")
    }

    /// The instances of `app`.
    #[track_caller]
    pub fn app(&self, app: &str) -> Vec<AppStatus> {
        self.status()
            .apps
            .into_iter()
            .filter(|a| a.name == app)
            .collect()
    }

    /// Waits until every instance of `app` is in `state`; returns them.
    #[track_caller]
    pub fn wait_state(&self, app: &str, state: AppState) -> Vec<AppStatus> {
        wait_for(&format!("{app} to be {}", state.as_str()), DEADLINE, || {
            let rows = self.app(app);
            if !rows.is_empty() && rows.iter().all(|r| r.state == state) {
                Ok(rows)
            } else {
                Err(format!("{rows:?}"))
            }
        })
    }

    /// Path of a file in the log dir.
    pub fn log_path(&self, file: &str) -> PathBuf {
        self.dir.path().join("logs").join(file)
    }

    /// Contents of a log file (empty if missing).
    pub fn log(&self, file: &str) -> String {
        fs::read_to_string(self.log_path(file)).unwrap_or_default()
    }

    /// The id citrusd marks its apps' environments with.
    pub fn supervisor_id(&self) -> String {
        citrus::daemon::supervisor_id(&self.dir.path().join("state"))
    }

    /// Live (non-zombie) processes carrying this daemon's marker, optionally of one app.
    pub fn marked(&self, app: Option<&str>) -> Vec<i32> {
        let mut wanted = vec![format!("CITRUS_SUPERVISOR={}", self.supervisor_id())];
        if let Some(a) = app {
            wanted.push(format!("CITRUS_APP={a}"));
        }
        procfs::all_pids()
            .into_iter()
            .filter(|p| procfs::stat(*p).is_some_and(|s| s.state != 'Z'))
            .filter(|p| procfs::environ_contains(*p, &wanted))
            .collect()
    }

    /// SIGKILLs citrusd (its apps keep running, as after a crash).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` to citrusd.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal)
            .expect("signal citrusd");
    }

    /// Waits for citrusd to exit; returns its exit code.
    #[track_caller]
    pub fn wait_exit(&mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        let st = wait_for("citrusd to exit", DEADLINE, || match child.try_wait() {
            Ok(Some(st)) => Ok(st),
            _ => Err("still running".into()),
        });
        st.code().unwrap_or(-1)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A failed test shows what citrusd logged (the harness prints it with the panic).
        if std::thread::panicking() {
            eprintln!("citrusd stderr:\n{}", self.stderr());
        }
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::SIGTERM,
            );
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in self.marked(None) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
    }
}

/// Counts lines of `text` containing `needle`.
pub fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// A TCP port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port below the kernel's ephemeral range: a server may stop and listen again on it,
/// and an ephemeral port could meanwhile become another test's source port. Spread over the
/// range per process and per call, so parallel tests rarely try the same one.
pub fn stable_port() -> u16 {
    let low: u16 = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32768);
    let (first, span) = (
        low.saturating_sub(12_000).max(1024),
        12_000u32.min(u32::from(low) - 1024),
    );
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ NEXT
            .fetch_add(7_919, std::sync::atomic::Ordering::Relaxed)
            .wrapping_mul(40_503);
    for i in 0..span {
        let port = first + ((seed.wrapping_add(i)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range");
}

/// A local HTTP receiver for webhooks: records every request body, answers 200.
pub struct Receiver {
    pub url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    /// Starts the receiver on 127.0.0.1 in a thread (it lives until the test process ends).
    pub fn start() -> Receiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/hooks/T000/SECRET",
            listener.local_addr().unwrap()
        );
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut len = 0usize;
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_ok() {
                    if let Ok(v) = serde_json::from_slice(&body) {
                        sink.lock().unwrap().push(v);
                    }
                }
                let mut stream = stream;
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            }
        });
        Receiver { url, bodies }
    }

    /// Waits for an event of `kind` and returns it.
    #[track_caller]
    pub fn wait_event(&self, kind: &str) -> serde_json::Value {
        wait_for(&format!("a {kind} webhook"), DEADLINE, || {
            let bodies = self.bodies.lock().unwrap();
            bodies
                .iter()
                .find(|b| b["event"] == kind)
                .cloned()
                .ok_or_else(|| format!("{bodies:?}"))
        })
    }
}

/// The stdout of a finished command that had to succeed; otherwise fails with `what` and its
/// stderr.
#[track_caller]
pub fn succeeded(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs git in `dir`; returns trimmed stdout.
#[track_caller]
pub fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=citrus-test",
            "-c",
            "user.email=test@citrus.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .expect("git");
    succeeded(out, &format!("git {args:?}")).trim().to_string()
}

/// A small tmpfs mounted for a fault test (a full disk, a read-only directory), unmounted
/// (lazily) when dropped. Declare it after the [`Daemon`] whose dirs it holds, so that it is
/// unmounted before the daemon's temp dir is removed.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=`, e.g. `"1m"`) at `at`, created if missing.
    /// `None`, after printing `SKIPPED: <why>`, where mounting is not allowed (it needs root).
    pub fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED: mounting a small tmpfs needs root");
            return None;
        }
        fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Tmpfs(at.to_owned())),
            Ok(out) => {
                let why = String::from_utf8_lossy(&out.stderr);
                eprintln!("SKIPPED: cannot mount a tmpfs here ({})", why.trim());
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount ({e})");
                None
            }
        }
    }

    /// Fills the file system until a write fails with ENOSPC (see [`Tmpfs::free`]).
    pub fn fill(&self) {
        use std::io::Write;
        let mut f = fs::File::create(self.0.join("filler")).unwrap();
        let block = vec![0u8; 64 << 10];
        loop {
            if let Err(e) = f.write_all(&block).and_then(|_| f.sync_all()) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
    }

    /// Removes what [`Tmpfs::fill`] wrote.
    pub fn free(&self) {
        fs::remove_file(self.0.join("filler")).unwrap();
    }

    /// Makes the path read-only until the guard is dropped: a read-only bind mount of the tmpfs
    /// on top of itself. Files opened before stay writable (they belong to the mount below), as
    /// when a disk turns read-only under a running daemon that holds its lock and log files;
    /// every new open for writing, create, rename or unlink through the path fails with EROFS.
    /// (A plain `remount,ro` fails with EBUSY while such files are open.)
    #[track_caller]
    pub fn read_only(&self) -> ReadOnly {
        let run = |args: &[&str]| {
            let st = Command::new("mount").args(args).arg(&self.0).status();
            assert!(st.is_ok_and(|s| s.success()), "mount {args:?} {:?}", self.0);
        };
        run(&["--bind", &self.0.to_string_lossy()]);
        let guard = ReadOnly(self.0.clone());
        run(&["-o", "remount,bind,ro"]);
        guard
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The read-only bind mount of [`Tmpfs::read_only`]: unmounted (lazily) when dropped, which
/// makes the path writable again.
pub struct ReadOnly(PathBuf);

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
