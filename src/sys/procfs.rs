//! Reading `/proc`: a process's stat line (parent, group, start time, CPU, RSS), its children, its
//! process tree, its environment, and the listening TCP sockets it holds. All readers treat a vanished process as "no data", never as
//! an error worth reporting: processes exit at any instant.

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
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        rss_pages: field(24)?,
    })
}

/// Reads `/proc/PID/stat`; `None` when the process is gone.
pub fn stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Direct children of `pid` (all of its threads' children).
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path().join("children");
        if let Ok(text) = fs::read_to_string(path) {
            out.extend(
                text.split_ascii_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
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

/// Resident memory and CPU ticks of `pid` and all its descendants.
pub fn tree_usage(pid: i32) -> (u64, u64) {
    let page = page_size();
    tree(pid)
        .into_iter()
        .filter_map(stat)
        .fold((0, 0), |(rss, cpu), s| {
            (rss + s.rss_pages * page, cpu + s.cpu_ticks)
        })
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
        assert_eq!(s.cpu_ticks, 10);
        assert_eq!(s.start_ticks, 123456);
        assert_eq!(s.rss_pages, 250);
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
