//! Binding the control socket: probe before bind, never remove a live daemon's socket, mode 0600
//! (0660 with `socket_group`).

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::DaemonError;

/// The control socket: `--socket`, else `$CITRUS_SOCKET`, else the config's `socket`, else the
/// per-user default.
pub fn choose(flag: Option<PathBuf>, configured: Option<&Path>) -> PathBuf {
    flag.or_else(|| {
        std::env::var_os("CITRUS_SOCKET")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    })
    .or_else(|| configured.map(Path::to_path_buf))
    .unwrap_or_else(crate::control::default_socket_path)
}

/// Binds `path`. A live daemon on it is an error; a dead socket file left by a crash is
/// replaced; any other file at the path is left alone and reported.
pub fn bind(path: &Path, group: Option<&str>) -> Result<tokio::net::UnixListener, DaemonError> {
    let io_err = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source: io::Error| DaemonError::Io {
            action,
            path: p,
            source,
        }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err("create the socket directory", dir))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(DaemonError::AlreadyRunning {
                    socket: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(socket = %path.display(), "replacing a stale socket left by a previous citrusd");
                std::fs::remove_file(path).map_err(io_err("remove the stale socket", path))?;
            }
            Err(e) => return Err(io_err("probe the socket", path)(e)),
        },
        Ok(_) => {
            return Err(DaemonError::Io {
                action: "bind the control socket (the path exists and is not a socket)",
                path: path.to_path_buf(),
                source: io::Error::from(io::ErrorKind::AlreadyExists),
            })
        }
        Err(_) => {}
    }
    // The umask makes the socket 0600 from the moment it exists; no chmod race.
    // SAFETY: umask only swaps the process's file-creation mask; it is restored right after.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(io_err("bind the control socket", path))?;
    if let Some(group) = group {
        let gid = nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .ok_or_else(|| DaemonError::Io {
                action: "find socket_group",
                path: PathBuf::from(group),
                source: io::Error::from(io::ErrorKind::NotFound),
            })?
            .gid;
        nix::unistd::chown(path, None, Some(gid))
            .map_err(|e| io_err("chown the socket", path)(e.into()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(io_err("chmod the socket", path))?;
    }
    listener
        .set_nonblocking(true)
        .map_err(io_err("configure the socket", path))?;
    tokio::net::UnixListener::from_std(listener).map_err(io_err("register the socket", path))
}
