//! Socket activation: the listening sockets of an app with `listen`.
//!
//! The sockets belong to the app, not to an instance: one [`AppSockets`] per app, shared by its
//! instance actors, binds every address at the first spawn that needs them (so a bind failure
//! makes that spawn fail and the instance `errored`, and the next `start` tries again) and keeps
//! them open from then on. Restarts, rolling reloads and crash restarts spawn the next process on
//! the same sockets, so connections wait in the kernel's backlog meanwhile instead of being
//! refused. The supervisor hands the same `AppSockets` to the app rebuilt by a `reload-config`
//! whose `listen` is unchanged, carries over the sockets of addresses still listed when it
//! changed ([`AppSockets::carry`]), and passes them across a re-exec of citrusd (the handoff).
//!
//! citrusd's own copies are close-on-exec: only the spawn of an instance (see
//! `spawn::activated_command`) places them, without the flag, at fds 3, 4, … of the child.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use nix::sys::socket::{self, Backlog};

use crate::config::{AppConfig, ListenAddr};

/// Why an app's sockets could not be opened; shown as the instances' `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Creating, binding or listening on the socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: ListenAddr,
        #[source]
        source: io::Error,
    },
    /// Something other than a socket is in the way of a Unix socket.
    #[error("cannot listen on {addr}: {} exists and is not a socket; remove it or choose another path", .path.display())]
    NotASocket {
        addr: ListenAddr,
        path: std::path::PathBuf,
    },
    /// The app's `user`, who should own a Unix socket, cannot be resolved.
    #[error("cannot listen on {addr}: user {user:?}: {reason}")]
    User {
        addr: ListenAddr,
        user: String,
        reason: String,
    },
}

/// One app's bound sockets, in `listen` order.
#[derive(Debug)]
pub struct Bound {
    sockets: Vec<(ListenAddr, OwnedFd)>,
}

impl Bound {
    /// The descriptors (citrusd's, close-on-exec), in `listen` order.
    pub fn fds(&self) -> Vec<RawFd> {
        self.sockets.iter().map(|(_, fd)| fd.as_raw_fd()).collect()
    }

    /// `LISTEN_FDNAMES`: the names of the sockets joined by `:`.
    pub fn names(&self) -> String {
        let names: Vec<String> = self.sockets.iter().map(|(a, _)| a.fd_name()).collect();
        names.join(":")
    }
}

/// A socket passed across a re-exec of citrusd: its address as written and its descriptor.
pub type Handed = (String, OwnedFd);

#[derive(Default)]
struct State {
    /// The sockets the instances receive, once all are bound.
    bound: Option<Arc<Bound>>,
    /// Sockets already open for some of the addresses (carried over or handed over), used by
    /// the next bind instead of binding again.
    spare: Vec<(ListenAddr, OwnedFd)>,
}

/// The listening sockets of one app (see the module header).
pub struct AppSockets {
    addrs: Vec<ListenAddr>,
    user: Option<String>,
    state: Mutex<State>,
}

impl AppSockets {
    /// The sockets of `app`, not bound yet; `None` when it has no `listen`.
    pub fn new(app: &AppConfig) -> Option<Arc<AppSockets>> {
        Self::with_spare(app, Vec::new())
    }

    fn with_spare(app: &AppConfig, spare: Vec<(ListenAddr, OwnedFd)>) -> Option<Arc<AppSockets>> {
        if app.listen.is_empty() {
            return None;
        }
        Some(Arc::new(AppSockets {
            addrs: app.listen.clone(),
            user: app.user.clone(),
            state: Mutex::new(State { bound: None, spare }),
        }))
    }

    /// The sockets for `app`, which replaces an app that had `previous`: the very same sockets
    /// when `listen` and `user` are unchanged; otherwise new ones that reuse the open sockets of
    /// the addresses still listed. The previous sockets of addresses no longer listed close now,
    /// so that another app may bind them at once.
    pub fn carry(previous: Option<&Arc<AppSockets>>, app: &AppConfig) -> Option<Arc<AppSockets>> {
        let Some(previous) = previous else {
            return Self::new(app);
        };
        if previous.addrs == app.listen && previous.user == app.user {
            return Some(previous.clone());
        }
        let mut open = previous.take_all();
        let spare = take_matching(&mut open, &app.listen);
        drop(open);
        Self::with_spare(app, spare)
    }

    /// The sockets of `app` given a re-executed citrusd by its predecessor: those whose address
    /// is still listed are reused (close-on-exec set again), the others close.
    pub fn adopt(app: &AppConfig, handed: Vec<Handed>) -> Option<Arc<AppSockets>> {
        let mut open: Vec<(ListenAddr, OwnedFd)> = Vec::new();
        for (written, fd) in handed {
            let Some(addr) = app.listen.iter().find(|a| a.to_string() == written) else {
                tracing::info!(app = %app.name, addr = %written, "handed-over socket no longer listed: closing it");
                continue;
            };
            if let Err(e) = set_cloexec(&fd) {
                tracing::warn!(app = %app.name, addr = %written, "handed-over socket unusable ({e}): binding again");
                continue;
            }
            open.push((addr.clone(), fd));
        }
        let spare = take_matching(&mut open, &app.listen);
        Self::with_spare(app, spare)
    }

    /// The bound sockets, binding the missing ones first. All or nothing: if one address
    /// cannot be bound, the ones just bound close again.
    pub fn bound(&self) -> Result<Arc<Bound>, ListenError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bound) = &state.bound {
            return Ok(bound.clone());
        }
        // (address, socket, whether it was a spare)
        let mut opened: Vec<(ListenAddr, OwnedFd, bool)> = Vec::with_capacity(self.addrs.len());
        for addr in &self.addrs {
            let spare = state.spare.iter().position(|(a, _)| a == addr);
            let result = match spare {
                // Carried from an app whose `user` may have differed: the file changes hands.
                Some(i) => give_to_user(addr, self.user.as_deref())
                    .map(|()| (state.spare.swap_remove(i).1, true)),
                None => bind(addr, self.user.as_deref()).map(|fd| (fd, false)),
            };
            match result {
                Ok((fd, was_spare)) => opened.push((addr.clone(), fd, was_spare)),
                Err(e) => {
                    // The spares stay open for the next attempt; what was just bound closes,
                    // so that clients are refused rather than left waiting.
                    let spares = opened.into_iter().filter(|(_, _, was_spare)| *was_spare);
                    state.spare.extend(spares.map(|(a, fd, _)| (a, fd)));
                    return Err(e);
                }
            }
        }
        let sockets = opened.into_iter().map(|(a, fd, _)| (a, fd)).collect();
        let bound = Arc::new(Bound { sockets });
        state.bound = Some(bound.clone());
        Ok(bound)
    }

    /// Closes the sockets (the app is gone, or its `listen` changed); a later [`bound`] binds
    /// again.
    ///
    /// [`bound`]: AppSockets::bound
    pub fn close(&self) {
        drop(self.take_all());
    }

    /// Every open socket, taken out.
    fn take_all(&self) -> Vec<(ListenAddr, OwnedFd)> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut open = std::mem::take(&mut state.spare);
        if let Some(bound) = state.bound.take() {
            // An instance spawning right now may hold the last other reference; duplicate then.
            match Arc::try_unwrap(bound) {
                Ok(bound) => open.extend(bound.sockets),
                Err(shared) => open.extend(
                    shared
                        .sockets
                        .iter()
                        .filter_map(|(a, fd)| Some((a.clone(), fd.try_clone().ok()?))),
                ),
            }
        }
        open
    }

    /// The open sockets as (address as written, descriptor), for a handoff.
    pub fn handoff(&self) -> Vec<(String, RawFd)> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let bound = state.bound.iter().flat_map(|b| b.sockets.iter());
        bound
            .chain(state.spare.iter())
            .map(|(addr, fd)| (addr.to_string(), fd.as_raw_fd()))
            .collect()
    }
}

/// Takes out of `open` the sockets of the addresses in `listen`.
fn take_matching(
    open: &mut Vec<(ListenAddr, OwnedFd)>,
    listen: &[ListenAddr],
) -> Vec<(ListenAddr, OwnedFd)> {
    let (keep, rest): (Vec<_>, Vec<_>) = std::mem::take(open)
        .into_iter()
        .partition(|(addr, _)| listen.contains(addr));
    *open = rest;
    keep
}

fn set_cloexec(fd: &impl AsFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// Opens a listening socket on `addr` (close-on-exec, blocking, backlog `SOMAXCONN`). A Unix
/// socket replaces a stale socket file at its path (never another kind of file) and is given to
/// `user` when set.
fn bind(addr: &ListenAddr, user: Option<&str>) -> Result<OwnedFd, ListenError> {
    let failed = |source: io::Error| ListenError::Bind {
        addr: addr.clone(),
        source,
    };
    // std's listeners are close-on-exec, and its TCP listener has SO_REUSEADDR (a restarted
    // citrusd must not wait for the old connections' TIME_WAIT).
    let fd = match addr {
        ListenAddr::Tcp(sa) => OwnedFd::from(std::net::TcpListener::bind(sa).map_err(failed)?),
        ListenAddr::Unix(path) => {
            remove_stale_socket(addr, path)?;
            let listener = std::os::unix::net::UnixListener::bind(path).map_err(failed)?;
            give_to_user(addr, user)?;
            OwnedFd::from(listener)
        }
    };
    // Listening again only changes the backlog: make it as deep as the system allows, so that
    // connections wait through a restart instead of being dropped.
    socket::listen(&fd, Backlog::MAXCONN).map_err(|e| failed(e.into()))?;
    Ok(fd)
}

/// Removes the file at `path` if it is a socket (left by an earlier run); anything else in the
/// way is an error.
fn remove_stale_socket(addr: &ListenAddr, path: &Path) -> Result<(), ListenError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| ListenError::Bind {
                addr: addr.clone(),
                source,
            })
        }
        Ok(_) => Err(ListenError::NotASocket {
            addr: addr.clone(),
            path: path.to_owned(),
        }),
        Err(_) => Ok(()),
    }
}

/// Gives the file of a Unix socket to `user`, when set.
fn give_to_user(addr: &ListenAddr, user: Option<&str>) -> Result<(), ListenError> {
    let (ListenAddr::Unix(path), Some(user)) = (addr, user) else {
        return Ok(());
    };
    let (uid, gid) = owner_of(addr, user)?;
    nix::unistd::chown(path.as_path(), Some(uid), Some(gid)).map_err(|e| ListenError::Bind {
        addr: addr.clone(),
        source: e.into(),
    })
}

fn owner_of(
    addr: &ListenAddr,
    user: &str,
) -> Result<(nix::unistd::Uid, nix::unistd::Gid), ListenError> {
    let err = |reason: String| ListenError::User {
        addr: addr.clone(),
        user: user.to_owned(),
        reason,
    };
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok((u.uid, u.gid)),
        Ok(None) => Err(err("no such user".to_owned())),
        Err(e) => Err(err(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::config::Config;

    fn app(listen: Vec<ListenAddr>) -> AppConfig {
        let text = "[apps.web]\ncommand = \"true\"\n";
        let config = Config::parse(text, Path::new("/tmp/citrusd.toml"), None).unwrap();
        let mut app = (*config.apps["web"]).clone();
        app.listen = listen;
        app
    }

    fn any_port() -> ListenAddr {
        ListenAddr::Tcp("127.0.0.1:0".parse().unwrap())
    }

    /// The local address of each bound socket, in order.
    fn local(bound: &Bound) -> Vec<String> {
        let addr = |(_, fd): &(ListenAddr, OwnedFd)| {
            let dup = fd.try_clone().unwrap();
            match std::net::TcpListener::from(dup).local_addr() {
                Ok(addr) => addr.to_string(),
                Err(_) => "unix".to_owned(),
            }
        };
        bound.sockets.iter().map(addr).collect()
    }

    #[test]
    fn binds_once_and_shares_the_sockets() {
        assert!(AppSockets::new(&app(Vec::new())).is_none());
        let sockets = AppSockets::new(&app(vec![any_port()])).unwrap();
        let first = sockets.bound().unwrap();
        let again = sockets.bound().unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(first.names(), "tcp_127.0.0.1_0");
        let port = local(&first)[0].clone();
        std::net::TcpStream::connect(&port).expect("the socket listens");
    }

    /// Whether connecting to `path` is refused within 10 s. A closed listener keeps accepting while
    /// a child another test is forking holds a copy of it, until that child's exec closes it.
    fn refused(path: &Path) -> bool {
        crate::sys::testing::eventually(|| UnixStream::connect(path).is_err())
    }

    #[test]
    fn a_busy_address_fails_with_the_os_error_and_binds_nothing() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = ListenAddr::Tcp(busy.local_addr().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.sock");
        let unix = ListenAddr::Unix(path.clone());
        let sockets = AppSockets::new(&app(vec![unix, busy.clone()])).unwrap();
        let err = sockets.bound().unwrap_err().to_string();
        assert_eq!(
            err,
            format!("cannot listen on {busy}: Address already in use (os error 98)")
        );
        // The Unix socket bound just before closed again: a client is refused.
        assert!(refused(&path), "{} still listens", path.display());
        assert!(sockets.handoff().is_empty());
    }

    #[test]
    fn unix_sockets_replace_a_stale_socket_but_not_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let sockets = AppSockets::new(&app(vec![ListenAddr::Unix(path.clone())])).unwrap();
        sockets.bound().expect("a stale socket file is replaced");
        UnixStream::connect(&path).expect("the socket listens");

        let file = dir.path().join("data");
        std::fs::write(&file, "keep me").unwrap();
        let sockets = AppSockets::new(&app(vec![ListenAddr::Unix(file.clone())])).unwrap();
        let err = sockets.bound().unwrap_err().to_string();
        assert!(err.contains("exists and is not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }

    #[test]
    fn carry_keeps_the_sockets_of_addresses_still_listed() {
        let dir = tempfile::tempdir().unwrap();
        let unix = ListenAddr::Unix(dir.path().join("web.sock"));
        let old = AppSockets::new(&app(vec![any_port(), unix.clone()])).unwrap();
        let before = local(&old.bound().unwrap());

        // Unchanged: the very same set.
        let same = AppSockets::carry(Some(&old), &app(vec![any_port(), unix.clone()])).unwrap();
        assert!(Arc::ptr_eq(&same, &old));

        // Changed: the TCP socket (port 0 bound once, so its port identifies it) is carried, the
        // Unix one closes.
        let changed = AppSockets::carry(Some(&old), &app(vec![any_port()])).unwrap();
        assert!(
            old.handoff().is_empty(),
            "the previous set gave up its sockets"
        );
        assert_eq!(local(&changed.bound().unwrap()), before[..1]);
        let ListenAddr::Unix(path) = &unix else {
            unreachable!()
        };
        assert!(refused(path), "{} still listens", path.display());

        // Closed: the next bind opens a new socket.
        changed.close();
        assert_ne!(local(&changed.bound().unwrap()), before[..1]);
    }

    #[test]
    fn adopt_takes_the_handed_sockets_still_listed() {
        let old = AppSockets::new(&app(vec![any_port()])).unwrap();
        let before = local(&old.bound().unwrap());
        let handed: Vec<Handed> = old
            .take_all()
            .into_iter()
            .map(|(addr, fd)| (addr.to_string(), fd))
            .collect();
        let adopted = AppSockets::adopt(&app(vec![any_port()]), handed).unwrap();
        assert_eq!(local(&adopted.bound().unwrap()), before);
    }
}
