//! The `sd_notify(3)` protocol, both sides.
//!
//! Client side: citrusd tells systemd (or whoever set `$NOTIFY_SOCKET`) that it
//! is ready, what its status is, and that it is alive ([`notify`],
//! [`watchdog_interval`]).
//!
//! Server side: citrusd hands an app a `NOTIFY_SOCKET`, as systemd does for
//! `Type=notify` services, and reads what the app sends ([`NotifyListener`]).
//! The listener enables `SO_PASSCRED`, so each message carries the sender's
//! pid as the kernel saw it ([`NotifyMessage::sender_pid`]). Linux only.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram as StdUnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use tokio::io::Interest;
use tokio::net::UnixDatagram;

/// The largest datagram accepted, as systemd does; longer ones are ignored.
pub const MAX_DATAGRAM: usize = 4096;

/// How long [`notify_to`] may block when the receiver's queue is full.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// The kernel's limit on file descriptors in one `SCM_RIGHTS` message.
const SCM_MAX_FD: usize = 253;

/// Sends `state` (e.g. `"READY=1\nSTATUS=3 apps online"`) to `$NOTIFY_SOCKET`
/// (a path, or an abstract socket when it starts with `@`). `Ok(false)` when
/// `NOTIFY_SOCKET` is unset or empty.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    if socket.is_empty() {
        return Ok(false);
    }
    let socket = socket
        .to_str()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "NOTIFY_SOCKET is not UTF-8"))?;
    notify_to(socket, state).map(|()| true)
}

/// Sends `state` as one datagram to `socket`: a filesystem path, or an
/// abstract socket name when it starts with `@`.
///
/// Blocks for at most about a second if the receiver's queue is full (then
/// fails with `WouldBlock`), so it is fine to call from an async task.
pub fn notify_to(socket: &str, state: &str) -> io::Result<()> {
    if socket.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty notify socket",
        ));
    }
    let sock = StdUnixDatagram::unbound()?;
    sock.set_write_timeout(Some(SEND_TIMEOUT))?;
    let sent = match socket.strip_prefix('@') {
        Some(name) => send_abstract(&sock, name, state.as_bytes())?,
        None => sock.send_to(state.as_bytes(), socket)?,
    };
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!(
                "notify socket {socket}: sent {sent} of {} bytes",
                state.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn send_abstract(sock: &StdUnixDatagram, name: &str, data: &[u8]) -> io::Result<usize> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    sock.send_to_addr(data, &addr)
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &StdUnixDatagram, _: &str, _: &[u8]) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract unix sockets need Linux",
    ))
}

/// The interval at which to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, if set
/// and (`$WATCHDOG_PID` unset or equal to our pid).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != our_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_micros(1)))
}

/// One parsed notification datagram.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NotifyMessage {
    /// `READY=1`: start-up is finished.
    pub ready: bool,
    /// `STOPPING=1`: the app is shutting down.
    pub stopping: bool,
    /// `RELOADING=1`: the app is reloading its configuration.
    pub reloading: bool,
    /// `WATCHDOG=1`: a keep-alive ping.
    pub watchdog: bool,
    /// `STATUS=…`: free-form status text (lossy UTF-8).
    pub status: Option<String>,
    /// `MAINPID=…`: the app's main pid, when it is not the process we started.
    pub main_pid: Option<u32>,
    /// `ERRNO=…`: an errno-style failure code.
    pub errno: Option<i32>,
    /// The sender's pid from `SCM_CREDENTIALS`; `None` from [`parse`], or when
    /// the kernel could not map it into our pid namespace.
    pub sender_pid: Option<u32>,
}

/// Parses newline-separated `KEY=VALUE` assignments (unknown keys and lines
/// without `=` are ignored; a datagram is expected to be at most
/// [`MAX_DATAGRAM`] bytes). Flags count only with the value `1`.
pub fn parse(datagram: &[u8]) -> NotifyMessage {
    fn number<T: std::str::FromStr>(value: &[u8]) -> Option<T> {
        std::str::from_utf8(value).ok()?.parse().ok()
    }
    let mut msg = NotifyMessage::default();
    for line in datagram.split(|&b| b == b'\n') {
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, value) = (&line[..eq], &line[eq + 1..]);
        match key {
            b"READY" => msg.ready |= value == b"1",
            b"STOPPING" => msg.stopping |= value == b"1",
            b"RELOADING" => msg.reloading |= value == b"1",
            b"WATCHDOG" => msg.watchdog |= value == b"1",
            b"STATUS" => msg.status = Some(String::from_utf8_lossy(value).into_owned()),
            b"MAINPID" => msg.main_pid = number(value).filter(|&pid: &u32| pid > 0),
            b"ERRNO" => msg.errno = number(value),
            _ => {}
        }
    }
    msg
}

/// A notify socket for one app: a unix datagram socket bound at a path.
/// Dropping it removes the socket file (unless another listener has since been
/// bound at the same path).
#[derive(Debug)]
pub struct NotifyListener {
    socket: UnixDatagram,
    path: PathBuf,
    /// (device, inode) of the socket file we created.
    file_id: (u64, u64),
}

impl NotifyListener {
    /// Binds `path` (removing a stale socket file first; any other kind of file
    /// there is an `AlreadyExists` error), mode 0600, chowned to `owner`
    /// (uid, gid) when given so an app running as another user can write to
    /// it. Must be called within a tokio runtime.
    ///
    /// The file is briefly created with the umask's mode before the chmod:
    /// keep it in a directory other users cannot enter.
    pub fn bind(path: &Path, owner: Option<(u32, u32)>) -> io::Result<NotifyListener> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let std_socket = StdUnixDatagram::bind(path)?;
        let setup = move || -> io::Result<(UnixDatagram, (u64, u64))> {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
            }
            enable_passcred(&std_socket)?;
            let meta = fs::symlink_metadata(path)?;
            std_socket.set_nonblocking(true)?;
            let socket = UnixDatagram::from_std(std_socket)?;
            Ok((socket, (meta.dev(), meta.ino())))
        };
        match setup() {
            Ok((socket, file_id)) => Ok(NotifyListener {
                socket,
                path: path.to_owned(),
                file_id,
            }),
            Err(e) => {
                let _ = fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// The socket's path, to pass to the app as `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next datagram, parsed, with [`NotifyMessage::sender_pid`] set.
    /// Datagrams over [`MAX_DATAGRAM`] bytes are skipped (with a warning), and
    /// file descriptors sent along are closed. Cancel-safe (fit for
    /// `tokio::select!`): a datagram is either returned or left queued.
    pub async fn recv(&self) -> io::Result<NotifyMessage> {
        loop {
            self.socket.readable().await?;
            match self
                .socket
                .try_io(Interest::READABLE, || recv_datagram(&self.socket))
            {
                Ok(Some(msg)) => return Ok(msg),
                Ok(None) => {
                    tracing::warn!(
                        socket = %self.path.display(),
                        "ignored a notify datagram over {MAX_DATAGRAM} bytes"
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for NotifyListener {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.file_id {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

fn enable_passcred(socket: &impl AsFd) -> io::Result<()> {
    setsockopt(socket, sockopt::PassCred, &true).map_err(io::Error::from)
}

/// Receives one datagram without blocking. `Ok(None)` when it was too long.
fn recv_datagram(socket: &impl AsFd) -> io::Result<Option<NotifyMessage>> {
    let mut buf = [0u8; MAX_DATAGRAM + 1];
    let mut cmsg = nix::cmsg_space!(libc::ucred, [RawFd; SCM_MAX_FD]);
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let received = recvmsg::<()>(
        socket.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_TRUNC,
    )
    .map_err(io::Error::from)?;
    let mut sender_pid = None;
    if let Ok(cmsgs) = received.cmsgs() {
        for cmsg in cmsgs {
            match cmsg {
                ControlMessageOwned::ScmCredentials(cred) => {
                    sender_pid = u32::try_from(cred.pid()).ok().filter(|&pid| pid > 0);
                }
                ControlMessageOwned::ScmRights(fds) => {
                    // We never keep descriptors an app sends us.
                    for fd in fds {
                        let _ = nix::unistd::close(fd);
                    }
                }
                _ => {}
            }
        }
    }
    // With MSG_TRUNC, `bytes` is the datagram's real length.
    let len = received.bytes;
    if len > MAX_DATAGRAM || received.flags.contains(MsgFlags::MSG_TRUNC) {
        return Ok(None);
    }
    let mut msg = parse(&buf[..len]);
    msg.sender_pid = sender_pid;
    Ok(Some(msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const DEADLINE: Duration = Duration::from_secs(10);

    async fn recv(listener: &NotifyListener) -> NotifyMessage {
        tokio::time::timeout(DEADLINE, listener.recv())
            .await
            .expect("no datagram before the deadline")
            .unwrap()
    }

    #[test]
    fn parse_table() {
        let cases: &[(&[u8], NotifyMessage)] = &[
            (b"", NotifyMessage::default()),
            (
                b"READY=1\nSTATUS=3 apps online",
                NotifyMessage {
                    ready: true,
                    status: Some("3 apps online".into()),
                    ..Default::default()
                },
            ),
            (
                b"STOPPING=1\nRELOADING=1\nWATCHDOG=1\n",
                NotifyMessage {
                    stopping: true,
                    reloading: true,
                    watchdog: true,
                    ..Default::default()
                },
            ),
            (
                b"MAINPID=4242\nERRNO=-2\nSTATUS=a=b\nX_CUSTOM=1\ngarbage",
                NotifyMessage {
                    main_pid: Some(4242),
                    errno: Some(-2),
                    status: Some("a=b".into()),
                    ..Default::default()
                },
            ),
            (b"READY=0\nWATCHDOG=trigger", NotifyMessage::default()),
            (b"MAINPID=0\nERRNO=x", NotifyMessage::default()),
            (b"MAINPID=abc\nready=1", NotifyMessage::default()),
            (
                b"STATUS=first\nSTATUS=\xffsecond",
                NotifyMessage {
                    status: Some("\u{fffd}second".into()),
                    ..Default::default()
                },
            ),
        ];
        for (datagram, want) in cases {
            assert_eq!(
                &parse(datagram),
                want,
                "{}",
                String::from_utf8_lossy(datagram)
            );
        }
    }

    #[test]
    fn watchdog_intervals() {
        let f = watchdog_interval_from;
        assert_eq!(f(None, None, 7), None);
        assert_eq!(f(Some("0"), None, 7), None);
        assert_eq!(f(Some("junk"), None, 7), None);
        assert_eq!(f(Some("30000000"), None, 7), Some(Duration::from_secs(15)));
        assert_eq!(
            f(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(f(Some("30000000"), Some("8"), 7), None);
        assert_eq!(f(Some("30000000"), Some("x"), 7), None);
        assert_eq!(f(Some("1"), None, 7), Some(Duration::from_micros(1)));
    }

    #[tokio::test]
    async fn round_trip_through_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = NotifyListener::bind(&path, None).unwrap();
        assert_eq!(listener.path(), path);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        notify_to(path.to_str().unwrap(), "READY=1\nSTATUS=3 apps online").unwrap();
        let msg = recv(&listener).await;
        assert!(msg.ready);
        assert_eq!(msg.status.as_deref(), Some("3 apps online"));
        assert_eq!(msg.sender_pid, Some(std::process::id()));

        drop(listener);
        assert!(!path.exists(), "drop removes the socket file");
        assert!(notify_to(path.to_str().unwrap(), "READY=1").is_err());
    }

    #[tokio::test]
    async fn recv_is_cancel_safe_in_select() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let listener = NotifyListener::bind(&path, None).unwrap();
        for _ in 0..3 {
            tokio::select! {
                _ = listener.recv() => panic!("nothing was sent"),
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        notify_to(path.to_str().unwrap(), "WATCHDOG=1").unwrap();
        notify_to(path.to_str().unwrap(), "STOPPING=1").unwrap();
        assert!(recv(&listener).await.watchdog);
        assert!(recv(&listener).await.stopping);
    }

    #[tokio::test]
    async fn oversize_datagrams_and_passed_fds_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let listener = NotifyListener::bind(&path, None).unwrap();
        let big = format!("STATUS={}", "x".repeat(MAX_DATAGRAM));
        notify_to(path.to_str().unwrap(), &big).unwrap();

        // A datagram carrying a descriptor, as FDSTORE=1 would.
        let file = tempfile::tempfile().unwrap();
        let fds = [file.as_raw_fd()];
        let iov = [io::IoSlice::new(b"READY=1\nFDSTORE=1")];
        let client = StdUnixDatagram::unbound().unwrap();
        let addr = nix::sys::socket::UnixAddr::new(&path).unwrap();
        nix::sys::socket::sendmsg(
            client.as_raw_fd(),
            &iov,
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            Some(&addr),
        )
        .unwrap();

        let msg = recv(&listener).await;
        assert!(msg.ready, "the oversize datagram is skipped: {msg:?}");
    }

    #[tokio::test]
    async fn bind_replaces_stale_socket_and_refuses_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let stale = StdUnixDatagram::bind(&path).unwrap();
        drop(stale); // leaves the file behind
        assert!(path.exists());
        let first = NotifyListener::bind(&path, None).unwrap();
        // Rebinding while the first is alive (an app restart) takes the path over,
        // and dropping the old listener must not remove the new one's file.
        let second = NotifyListener::bind(&path, None).unwrap();
        drop(first);
        assert!(path.exists());
        notify_to(path.to_str().unwrap(), "READY=1").unwrap();
        assert!(recv(&second).await.ready);
        drop(second);
        assert!(!path.exists());

        let file = dir.path().join("plain");
        fs::write(&file, "keep me").unwrap();
        let err = NotifyListener::bind(&file, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&file).unwrap(), "keep me");
    }

    #[tokio::test]
    async fn bind_chowns_to_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let owner = if nix::unistd::geteuid().is_root() {
            (65534, 65534)
        } else {
            (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
        };
        let _listener = NotifyListener::bind(&path, Some(owner)).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), owner);
        assert_eq!(meta.mode() & 0o777, 0o600);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn notify_to_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "citrus-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = StdUnixDatagram::bind_addr(&addr).unwrap();
        server.set_read_timeout(Some(DEADLINE)).unwrap();
        notify_to(&format!("@{name}"), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert_eq!(
            notify_to("", "READY=1").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[tokio::test]
    async fn child_process_notifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let listener = NotifyListener::bind(&path, None).unwrap();
        let script = "import socket,os; \
            s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); \
            s.sendto(b'READY=1\\nSTATUS=warming up', os.environ['NOTIFY_SOCKET']); \
            print(os.getpid())";
        let mut child = match std::process::Command::new("python3")
            .args(["-c", script])
            .env("NOTIFY_SOCKET", &path)
            .stdout(std::process::Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                eprintln!("python3 not found; skipping");
                return;
            }
            Err(e) => panic!("spawn python3: {e}"),
        };
        let msg = recv(&listener).await;
        let out = {
            let mut out = String::new();
            io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
            out
        };
        assert!(child.wait().unwrap().success());
        assert!(msg.ready);
        assert_eq!(msg.status.as_deref(), Some("warming up"));
        let python_pid: u32 = out.trim().parse().unwrap();
        assert_eq!(msg.sender_pid, Some(python_pid));
        assert_eq!(msg.sender_pid, Some(child.id()));
    }
}
