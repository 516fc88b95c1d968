//! cgroup v2 membership of app instances, where citrusd can use a cgroup v2 hierarchy (root with
//! a writable unified mount, or under systemd with `Delegate=yes`).
//!
//! At start citrusd creates `citrus-<supervisor id>` under its own cgroup; each instance gets a
//! leaf `<that>/<app>.<index>`, created once and reused across restarts, into which citrusd moves
//! each child right after spawning it. A process cannot leave its cgroup without write access to the
//! hierarchy, so `setsid` and a cleared environment do not hide it: stop ends with `cgroup.kill`
//! and waits until `cgroup.events` says `populated 0`. No controller is enabled: only membership
//! and `cgroup.kill` are used. Where the hierarchy is not usable, `Cgroups` is disabled and
//! stopping relies on the process group and the environment marker (see `kill`).
//!
//! Cost: the write to `cgroup.procs` takes the kernel's cgroup threadgroup lock for writing,
//! which waits for an RCU grace period (about 10 ms measured on Linux 6.18). Made by the child
//! between fork and exec, it put those 10 ms into every restart (1.2 → 10 ms median), so citrusd
//! makes it from a blocking task beside the spawn instead: the child runs at once and is in its
//! leaf a few milliseconds later; what it forks before that is still stopped through its process
//! group and marker. `clone3` with `CLONE_INTO_CGROUP` would create the child in the leaf
//! directly, but std's `Command` cannot use it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::OnceLock;

use nix::sys::signal::Signal;

use crate::sys::PidFd;

/// Moves waiting for the mover thread at most; one is queued per spawn. Counted beside an
/// unbounded channel rather than set as a `sync_channel`'s capacity, which would allocate (and
/// write) every slot up front: 256 KiB resident for a queue that is empty nearly always.
const MOVES_QUEUED: usize = 4096;

/// The cgroup of one supervisor, or nothing where cgroup v2 is not usable.
#[derive(Clone, Debug, Default)]
pub struct Cgroups {
    parent: Option<PathBuf>,
}

impl Cgroups {
    /// Cgroups not used: process groups and markers only.
    pub fn disabled() -> Cgroups {
        Cgroups::default()
    }

    /// Finds the unified hierarchy and citrusd's own cgroup in it and creates
    /// `citrus-<supervisor_id>` there; disabled, with one log line, when that is not possible.
    pub fn probe(supervisor_id: &str) -> Cgroups {
        let parent = locate().and_then(|own| {
            let parent = own.join(format!("citrus-{supervisor_id}"));
            make_dir(&parent)
                .map(|()| parent.clone())
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))
        });
        match parent {
            Ok(parent) => {
                tracing::info!(cgroup = %parent.display(), "each app instance runs in its own cgroup");
                Cgroups {
                    parent: Some(parent),
                }
            }
            Err(why) => {
                tracing::info!("cgroups not used ({why}); stopping relies on process groups and environment markers");
                Cgroups::disabled()
            }
        }
    }

    /// True when instances get a cgroup.
    pub fn enabled(&self) -> bool {
        self.parent.is_some()
    }

    /// The leaf of instance `index` of `app`, created if missing; `None` when cgroups are not
    /// used or the leaf cannot be created (logged).
    pub fn leaf(&self, app: &str, index: u32) -> Option<Leaf> {
        let leaf = self.existing_leaf(app, index)?;
        match leaf.ensure() {
            Ok(()) => Some(leaf),
            Err(e) => {
                tracing::warn!(
                    app,
                    index,
                    "cannot create the cgroup {}: {e}; this instance runs without one",
                    leaf.dir.display()
                );
                None
            }
        }
    }

    /// The leaf of instance `index` of `app`, not created (it may not exist).
    pub fn existing_leaf(&self, app: &str, index: u32) -> Option<Leaf> {
        let dir = self.parent.as_ref()?.join(format!("{app}.{index}"));
        Some(Leaf::at(dir))
    }

    /// Every leaf under the supervisor's cgroup (those of a previous run included), with its
    /// app name and instance index.
    pub fn leaves(&self) -> Vec<(String, u32, Leaf)> {
        let Some(parent) = &self.parent else {
            return Vec::new();
        };
        let Ok(dir) = std::fs::read_dir(parent) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let (app, index) = name.rsplit_once('.')?;
                let index = index.parse::<u32>().ok()?;
                Some((app.to_string(), index, Leaf::at(e.path())))
            })
            .collect()
    }

    /// Removes the cgroups of instances that are gone (`wanted` says, for an app name and an
    /// index, whether that instance still exists); one in use is kept.
    pub fn prune(&self, wanted: impl Fn(&str, u32) -> bool) {
        for (app, index, leaf) in self.leaves() {
            if !wanted(&app, index) {
                leaf.remove();
            }
        }
    }

    /// Removes every empty instance cgroup and then the supervisor's own, if empty (at a clean
    /// shutdown).
    pub fn remove_all(&self) {
        self.prune(|_, _| false);
        if let Some(parent) = &self.parent {
            if let Err(e) = std::fs::remove_dir(parent) {
                tracing::debug!("cgroup {} kept: {e}", parent.display());
            }
        }
    }
}

/// The cgroup of one instance.
#[derive(Debug)]
pub struct Leaf {
    dir: PathBuf,
}

impl Leaf {
    fn at(dir: PathBuf) -> Leaf {
        Leaf { dir }
    }

    /// Moves process `pid` (a child just spawned) into the cgroup, making the directory again if
    /// it went away. Blocking: the kernel may wait for an RCU grace period (~10 ms).
    fn adopt(dir: &Path, pid: i32) -> io::Result<()> {
        make_dir(dir)?;
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
    }

    /// Has process `pid` moved into the cgroup by citrusd's one mover thread, beside the spawn
    /// rather than before the child's exec; `label` names it in a failure's log line.
    pub fn adopt_soon(&self, pid: i32, label: String) {
        static MOVER: OnceLock<Option<Sender<(PathBuf, i32, String)>>> = OnceLock::new();
        static QUEUED: AtomicUsize = AtomicUsize::new(0);
        let mover = MOVER.get_or_init(|| {
            let (tx, rx) = channel::<(PathBuf, i32, String)>();
            let spawned = std::thread::Builder::new()
                .name("cgroup-mover".into())
                .stack_size(64 << 10)
                .spawn(move || {
                    for (dir, pid, label) in rx {
                        QUEUED.fetch_sub(1, Ordering::Relaxed);
                        if let Err(e) = Leaf::adopt(&dir, pid) {
                            tracing::warn!(pid, "cannot move {label} into its cgroup: {e}");
                        }
                    }
                });
            spawned.ok().map(|_| tx)
        });
        let queued = mover.as_ref().is_some_and(|tx| {
            let room = QUEUED.fetch_add(1, Ordering::Relaxed) < MOVES_QUEUED;
            let sent = room && tx.send((self.dir.clone(), pid, label.clone())).is_ok();
            if !sent {
                QUEUED.fetch_sub(1, Ordering::Relaxed);
            }
            sent
        });
        if !queued {
            tracing::warn!(
                pid,
                "cannot move {label} into its cgroup: the mover is not running or is full"
            );
        }
    }

    /// True while the directory exists.
    pub fn exists(&self) -> bool {
        self.dir.exists()
    }

    /// Creates the directory if it is missing.
    pub fn ensure(&self) -> io::Result<()> {
        make_dir(&self.dir)
    }

    /// The processes in the cgroup now.
    pub fn members(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// True while a live process is in the cgroup (`populated 1` in `cgroup.events`).
    pub fn populated(&self) -> bool {
        match std::fs::read_to_string(self.dir.join("cgroup.events")) {
            Ok(text) => text.lines().any(|l| l.trim() == "populated 1"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(_) => !self.members().is_empty(),
        }
    }

    /// True while `pid` is a member.
    fn contains(&self, pid: i32) -> bool {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return false;
        };
        let Some(own) = parse_own(&text) else {
            return false;
        };
        let own = own.trim_start_matches('/');
        !own.is_empty() && self.dir.ends_with(own)
    }

    /// Sends `signal` to every member, each through a pidfd after its membership is re-checked
    /// (a pid reused by another process is never hit).
    pub fn signal(&self, signal: Signal) {
        self.signal_outside(signal, None);
    }

    /// Sends `signal` to every member not in process group `pgid` (those got it from the group
    /// signal already: a second one would run a shell's trap twice); returns the pids signalled.
    pub fn signal_outside(&self, signal: Signal, pgid: Option<i32>) -> Vec<i32> {
        let mut signalled = Vec::new();
        for pid in self.members() {
            let in_group = pgid.is_some() && crate::sys::procfs::stat(pid).map(|s| s.pgrp) == pgid;
            if in_group {
                continue;
            }
            if let Ok(fd) = PidFd::open(pid) {
                if self.contains(pid) && fd.send_signal(signal).is_ok() {
                    signalled.push(pid);
                }
            }
        }
        signalled
    }

    /// Kills every member at once (`cgroup.kill`, Linux ≥ 5.14; SIGKILL to each member before).
    pub fn kill(&self) {
        if std::fs::write(self.dir.join("cgroup.kill"), b"1").is_err() {
            self.signal(Signal::SIGKILL);
        }
    }

    /// Removes the cgroup (it must be empty); a failure is only logged.
    pub fn remove(&self) {
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::debug!("cgroup {} kept: {e}", self.dir.display()),
        }
    }
}

fn make_dir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// citrusd's own cgroup directory in the unified hierarchy.
fn locate() -> Result<PathBuf, String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let (root, mountpoint) = parse_mountinfo(&mounts).ok_or("no cgroup2 filesystem is mounted")?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let own = parse_own(&cgroup).ok_or("citrusd is in no cgroup v2 (no 0:: line)")?;
    // The mount shows the hierarchy from `root` on (a cgroup namespace or a bind mount).
    let relative = Path::new(own)
        .strip_prefix(&root)
        .map_err(|_| format!("citrusd's cgroup {own} is not under the mount of {root}"))?;
    Ok(mountpoint.join(relative))
}

/// Where the unified (cgroup v2) hierarchy is mounted, if it is.
pub fn mount_point() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&mounts).map(|(_, mountpoint)| mountpoint)
}

/// The root and mount point of the first cgroup2 mount in `/proc/self/mountinfo`.
fn parse_mountinfo(text: &str) -> Option<(String, PathBuf)> {
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mut fields = left.split(' ');
        let root = unescape(fields.nth(3)?);
        let mountpoint = unescape(fields.next()?);
        Some((root, PathBuf::from(mountpoint)))
    })
}

/// The `0::PATH` entry of a `/proc/PID/cgroup` file.
fn parse_own(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unified_mount_is_found_in_a_hybrid_and_a_pure_layout() {
        let hybrid = "25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev shared:5 - cgroup2 cgroup2 rw\n\
                      27 25 0:24 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        assert_eq!(
            parse_mountinfo(hybrid),
            Some(("/".into(), PathBuf::from("/sys/fs/cgroup/unified")))
        );
        let pure = "30 1 0:26 /lxc/c1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_mountinfo(pure),
            Some(("/lxc/c1".into(), PathBuf::from("/sys/fs/cgroup")))
        );
        assert_eq!(parse_mountinfo("1 0 0:1 / / rw - ext4 /dev/sda rw\n"), None);
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
    }

    #[test]
    fn the_own_cgroup_is_the_0_entry() {
        let text = "12:pids:/user.slice\n1:name=systemd:/user.slice/s.scope\n0::/system.slice/citrusd.service\n";
        assert_eq!(parse_own(text), Some("/system.slice/citrusd.service"));
        assert_eq!(parse_own("1:name=systemd:/\n"), None);
    }
}
