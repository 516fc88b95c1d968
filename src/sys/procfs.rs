//! Reading `/proc`: a process's stat line (parent, group, threads, start time, CPU, RSS), its
//! children, its process tree, its environment, and the listening TCP sockets it holds. All readers
//! treat a vanished process as "no data", never as an error worth reporting: processes exit at any
//! instant.
//!
//! The stat line and the children lists are read on every `status` for every instance, so they are
//! read lean: one `open`, one `read` into a reused buffer (the kernel produces these files whole
//! when the buffer is large enough), one `close`; no `statx`, no directory listing for a
//! single-threaded process.

use std::fs;
use std::io::{self, Read};
use std::sync::OnceLock;

/// The fields of `/proc/PID/stat` that the supervisor uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// Threads in the process (1 for most).
    pub threads: u32,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Start time after boot, in clock ticks: with the pid it identifies a process uniquely.
    pub start_ticks: u64,
    /// Resident set size in pages.
    pub rss_pages: u64,
}

/// Parses one `/proc/PID/stat` line. The command name is in parentheses and may itself contain
/// spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(line: &str) -> Option<ProcStat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let pid = line[..open].trim().parse().ok()?;
    let rest: Vec<&str> = line.get(close + 2..)?.split_ascii_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let field = |n: usize| rest.get(n - 3).and_then(|s| s.parse::<u64>().ok());
    Some(ProcStat {
        pid,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        pgrp: rest.get(2)?.parse().ok()?,
        threads: u32::try_from(field(20)?).ok()?,
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        rss_pages: field(24)?,
    })
}

/// Reads `/proc/PID/stat`; `None` when the process is gone.
pub fn stat(pid: i32) -> Option<ProcStat> {
    stat_with(pid, &mut Vec::new())
}

/// [`stat`] with a caller's buffer, for reading many.
fn stat_with(pid: i32, buf: &mut Vec<u8>) -> Option<ProcStat> {
    let text = read_proc(&format!("/proc/{pid}/stat"), buf)?;
    parse_stat(std::str::from_utf8(text).ok()?)
}

/// Reads a `/proc` file into `buf` and returns its bytes. The kernel produces a stat line or a
/// children list whole in one `read` when it fits, so a read that does not fill the buffer is the
/// end of the file; only a full one is followed by more (a process with thousands of children).
fn read_proc<'a>(path: &str, buf: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    let mut file = fs::File::open(path).ok()?;
    let mut len = 0;
    loop {
        if buf.len() < len + 1024 {
            buf.resize(len + 4096, 0);
        }
        let n = file.read(&mut buf[len..]).ok()?;
        len += n;
        if n == 0 || len < buf.len() {
            return Some(&buf[..len]);
        }
    }
}

/// The pids in a `children` list ("12 34 ").
fn parse_pids(text: &[u8]) -> impl Iterator<Item = i32> + '_ {
    text.split(u8::is_ascii_whitespace)
        .filter_map(|p| std::str::from_utf8(p).ok()?.parse().ok())
}

/// Direct children of `pid` (all of its threads' children).
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    let mut buf = Vec::new();
    for task in tasks.flatten() {
        let path = task.path().join("children");
        if let Some(text) = path.to_str().and_then(|p| read_proc(p, &mut buf)) {
            out.extend(parse_pids(text));
        }
    }
    out
}

/// Direct children of the process `s` describes: a single-threaded one (most) has them all in its
/// main thread's list, read without listing `/proc/PID/task`.
fn children_of(s: &ProcStat, buf: &mut Vec<u8>) -> Vec<i32> {
    if s.threads != 1 {
        return children(s.pid);
    }
    let path = format!("/proc/{0}/task/{0}/children", s.pid);
    read_proc(&path, buf)
        .map(|text| parse_pids(text).collect())
        .unwrap_or_default()
}

/// `pid` and all its descendants, parents before children.
pub fn tree(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        for kid in children(out[i]) {
            if !out.contains(&kid) {
                out.push(kid);
            }
        }
        i += 1;
    }
    out
}

/// Resident memory (bytes) and CPU ticks of `pid` and all its descendants: one stat line and one
/// children list per process.
pub fn tree_usage(pid: i32) -> (u64, u64) {
    let page = page_size();
    let mut buf = Vec::new();
    let (mut rss, mut cpu) = (0, 0);
    let mut pids = vec![pid];
    let mut i = 0;
    while i < pids.len() {
        if let Some(s) = stat_with(pids[i], &mut buf) {
            rss += s.rss_pages * page;
            cpu += s.cpu_ticks;
            for kid in children_of(&s, &mut buf) {
                if !pids.contains(&kid) {
                    pids.push(kid);
                }
            }
        }
        i += 1;
    }
    (rss, cpu)
}

/// Every pid currently in `/proc`.
pub fn all_pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect()
}

/// The environment `pid` was executed with, as raw `KEY=VALUE` entries (empty if unreadable).
pub fn environ(pid: i32) -> Vec<Vec<u8>> {
    let mut buf = Vec::new();
    match fs::File::open(format!("/proc/{pid}/environ")).and_then(|mut f| f.read_to_end(&mut buf)) {
        Ok(_) => buf
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(<[u8]>::to_vec)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// True when every `KEY=VALUE` in `wanted` is in `pid`'s environment.
pub fn environ_contains(pid: i32, wanted: &[String]) -> bool {
    let env = environ(pid);
    !env.is_empty() && wanted.iter().all(|w| env.iter().any(|e| e == w.as_bytes()))
}

/// The inodes of the TCP sockets (IPv4 and IPv6) listening on `port`, on any address.
pub fn listening_sockets(port: u16) -> std::collections::HashSet<u64> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| fs::read_to_string(path).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| listening_inode(line, port))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The inode of a `/proc/net/tcp{,6}` row if it is a socket listening (state `0A`) on `port`.
fn listening_inode(line: &str, port: u16) -> Option<u64> {
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    let local_port = fields.get(1)?.rsplit(':').next()?;
    let listening = fields.get(3) == Some(&"0A");
    (listening && u16::from_str_radix(local_port, 16).ok()? == port)
        .then(|| fields.get(9)?.parse().ok())
        .flatten()
}

/// The inodes of the sockets that `pids` hold open.
pub fn socket_inodes(pids: &[i32]) -> std::collections::HashSet<u64> {
    let mut out = std::collections::HashSet::new();
    for pid in pids {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok());
            out.extend(inode);
        }
    }
    out
}

/// The system page size in bytes.
pub fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    // SAFETY: sysconf only reads a system constant.
    *PAGE.get_or_init(|| unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64)
}

/// Clock ticks per second (for CPU times from `/proc`).
pub fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    // SAFETY: sysconf only reads a system constant.
    *TICKS.get_or_init(|| unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64)
}

/// Our own resident memory in bytes and CPU time in ticks.
pub fn self_usage() -> io::Result<(u64, u64)> {
    let s = stat(std::process::id() as i32)
        .ok_or_else(|| io::Error::other("cannot read /proc/self/stat"))?;
    Ok((s.rss_pages * page_size(), s.cpu_ticks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::testing::eventually;

    #[test]
    fn listening_rows() {
        let row = "   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0";
        assert_eq!(listening_inode(row, 8080), Some(4242));
        assert_eq!(listening_inode(row, 8081), None);
        let established = row.replace(" 0A ", " 01 ");
        assert_eq!(listening_inode(&established, 8080), None);
        let v6 = "   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1";
        assert_eq!(listening_inode(v6, 8080), Some(77));
    }

    #[test]
    fn a_listener_of_ours_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let listening = listening_sockets(port);
        let ours = socket_inodes(&[std::process::id() as i32]);
        assert_eq!(listening.len(), 1);
        assert!(listening.is_subset(&ours));
    }

    #[test]
    fn parses_stat_with_tricky_command_name() {
        let line = "4242 (we ird) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 123456 1000000 250 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.pgrp, 4242);
        assert_eq!(s.threads, 1);
        assert_eq!(s.cpu_ticks, 10);
        assert_eq!(s.start_ticks, 123456);
        assert_eq!(s.rss_pages, 250);
    }

    #[test]
    fn children_are_found_for_single_and_multi_threaded_parents() {
        // A single-threaded parent: its list is read without listing its tasks.
        let mut sh = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let sh_pid = sh.id() as i32;
        let mut buf = Vec::new();
        assert!(eventually(|| {
            let s = stat(sh_pid).unwrap();
            s.threads == 1 && children_of(&s, &mut buf).len() == 1
        }));
        let grandchild = children(sh_pid)[0];
        assert_eq!(tree(sh_pid), vec![sh_pid, grandchild]);
        let (rss, _) = tree_usage(sh_pid);
        assert!(rss > 0);

        // A child of a thread other than the main one is in that thread's list only: found
        // through the task listing of the (now multi-threaded) parent.
        let found = std::thread::spawn(|| {
            let mut kid = std::process::Command::new("/bin/sleep")
                .arg("30")
                .spawn()
                .unwrap();
            let me = stat(std::process::id() as i32).unwrap();
            let found =
                me.threads > 1 && children_of(&me, &mut Vec::new()).contains(&(kid.id() as i32));
            kid.kill().unwrap();
            kid.wait().unwrap();
            found
        });
        assert!(found.join().unwrap());

        sh.kill().unwrap();
        sh.wait().unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(grandchild),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id() as i32;
        let s = stat(me).unwrap();
        assert_eq!(s.pid, me);
        assert!(s.rss_pages > 0);
        assert!(tree(me).contains(&me));
    }
}
