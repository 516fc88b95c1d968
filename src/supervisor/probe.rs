//! Readiness and liveness probes of an app: a TCP connect probe and a minimal
//! HTTP/1.1 `GET` probe.
//!
//! The HTTP probe is hand-written over a tokio [`TcpStream`] so that it stays
//! cheap enough to run every second for a hundred apps: one request, at most
//! [`MAX_RESPONSE_HEAD`] bytes read, and only the status line is looked at.
//! Every probe runs entirely inside its `timeout` (name resolution, connect,
//! request and status line), and works on a current-thread runtime.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most bytes of a response the HTTP probe reads while looking for its
/// status line.
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// Why a probe failed. The messages name the target and the cause so that a
/// person reading `citrus describe` or a log line can act on them.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The host, port or path cannot form a request (e.g. a path with spaces).
    #[error("invalid probe target: {0}")]
    Invalid(String),
    /// The host name did not resolve.
    #[error("resolve {host}: {}", brief(.error))]
    Resolve {
        /// The host as configured.
        host: String,
        /// The resolver's error.
        error: io::Error,
    },
    /// No address of the host accepted the connection; `addr` is the last one
    /// tried, e.g. `connect 127.0.0.1:1338: Connection refused`.
    #[error("connect {addr}: {}", brief(.error))]
    Connect {
        /// The address tried last.
        addr: SocketAddr,
        /// Why it failed.
        error: io::Error,
    },
    /// Sending the request or reading the answer failed after connecting.
    #[error("{url}: {}", brief(.error))]
    Io {
        /// The probed URL.
        url: String,
        /// The I/O error.
        error: io::Error,
    },
    /// The server closed the connection before sending a status line.
    #[error("{url} closed the connection without answering")]
    Closed {
        /// The probed URL.
        url: String,
    },
    /// The server answered with a status outside `200..=399`, e.g.
    /// `http://127.0.0.1:1338/health answered 503`.
    #[error("{url} answered {status}")]
    Status {
        /// The probed URL.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The answer did not start with an HTTP/1.x status line.
    #[error("{url} answered with a malformed status line: {line:?}")]
    Malformed {
        /// The probed URL.
        url: String,
        /// The start of what was received (lossy UTF-8, at most 80 chars).
        line: String,
    },
    /// The probe did not complete within its timeout, e.g. `timed out after 5s`.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// TCP probe: the connection succeeds within `timeout`.
///
/// `host` may be a name, an IPv4 literal or an IPv6 literal without brackets.
/// The connection is closed right after it is established.
pub async fn tcp(host: &str, port: u16, timeout: Duration) -> Result<(), ProbeError> {
    let host = check_host(host)?;
    match tokio::time::timeout(timeout, connect(host, port)).await {
        Ok(result) => result.map(drop),
        Err(_) => Err(ProbeError::Timeout(timeout)),
    }
}

/// HTTP probe: plain HTTP/1.1 `GET path` with a `Host` header,
/// `Connection: close` and `User-Agent: citrusd-probe`; success is a status in
/// `200..=399` read from the status line within `timeout` (resolution,
/// connect, request and status line all inside the timeout).
///
/// At most [`MAX_RESPONSE_HEAD`] bytes are read; interim `1xx` responses are
/// skipped; a malformed status line is an error. A `path` without a leading
/// `/` gets one.
pub async fn http(host: &str, port: u16, path: &str, timeout: Duration) -> Result<(), ProbeError> {
    let host = check_host(host)?;
    if path
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(ProbeError::Invalid(format!(
            "path {path:?} contains whitespace or control characters"
        )));
    }
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let authority = authority(host, port);
    let url = format!("http://{authority}{path}");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: citrusd-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        host_header(host, port)
    );
    let exchange = async {
        let mut stream = connect(host, port).await?;
        let io_err = |error| ProbeError::Io {
            url: url.clone(),
            error,
        };
        stream.write_all(request.as_bytes()).await.map_err(io_err)?;
        let status = read_status(&mut stream, &url).await?;
        if (200..=399).contains(&status) {
            Ok(())
        } else {
            Err(ProbeError::Status {
                url: url.clone(),
                status,
            })
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(timeout)),
    }
}

/// Rejects hosts that would break the request line or `Host` header, and
/// tolerates brackets around an IPv6 literal.
fn check_host(host: &str) -> Result<&str, ProbeError> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty()
        || host
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'/')
    {
        return Err(ProbeError::Invalid(format!("host {host:?}")));
    }
    Ok(host)
}

/// Resolves `host` and connects to its addresses in turn, like
/// [`TcpStream::connect`], but keeps the address in the error.
async fn connect(host: &str, port: u16) -> Result<TcpStream, ProbeError> {
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|error| ProbeError::Resolve {
            host: host.to_owned(),
            error,
        })?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last = Some(ProbeError::Connect { addr, error }),
        }
    }
    Err(last.unwrap_or_else(|| ProbeError::Resolve {
        host: host.to_owned(),
        error: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
    }))
}

/// `host:port` for URLs in messages, with brackets around IPv6 literals.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The `Host` header value: brackets around IPv6 literals, port omitted when 80.
fn host_header(host: &str, port: u16) -> String {
    match (host.contains(':'), port) {
        (true, 80) => format!("[{host}]"),
        (false, 80) => host.to_owned(),
        _ => authority(host, port),
    }
}

/// Reads until a final (non-1xx) status line is complete and returns its code.
async fn read_status(stream: &mut TcpStream, url: &str) -> Result<u16, ProbeError> {
    let mut buf = vec![0u8; MAX_RESPONSE_HEAD];
    let mut filled = 0;
    // Where the response currently being parsed starts (after skipped 1xx heads).
    let mut start = 0;
    loop {
        let head = &buf[start..filled];
        if let Some(eol) = head.iter().position(|&b| b == b'\n') {
            let status = parse_status_line(&head[..eol]).ok_or_else(|| malformed(url, head))?;
            if status >= 200 || status == 101 {
                return Ok(status);
            }
            // An interim response (e.g. 103 Early Hints): skip its header block.
            if let Some(end) = find_head_end(head) {
                start += end;
                continue;
            }
        }
        if filled == buf.len() {
            return Err(malformed(url, &buf[start..filled]));
        }
        let n = stream
            .read(&mut buf[filled..])
            .await
            .map_err(|error| ProbeError::Io {
                url: url.to_owned(),
                error,
            })?;
        if n == 0 {
            return Err(if filled == start {
                ProbeError::Closed {
                    url: url.to_owned(),
                }
            } else {
                malformed(url, &buf[start..filled])
            });
        }
        filled += n;
    }
}

/// The end (exclusive) of a header block terminated by an empty line.
fn find_head_end(head: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, &b) in head.iter().enumerate() {
        if b == b'\n' {
            let line = &head[line_start..i];
            if line_start > 0 && (line.is_empty() || line == b"\r") {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

/// Parses `HTTP/1.x SSS[ reason]` (with or without the trailing `\r`).
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let rest = line.strip_prefix(b"HTTP/")?;
    let sp = rest.iter().position(|&b| b == b' ')?;
    let (version, rest) = (&rest[..sp], &rest[sp + 1..]);
    if version.is_empty() || !version.iter().all(|b| b.is_ascii_digit() || *b == b'.') {
        return None;
    }
    if rest.len() < 3 || (rest.len() > 3 && rest[3] != b' ') {
        return None;
    }
    let code = &rest[..3];
    if !code.iter().all(u8::is_ascii_digit) || code[0] == b'0' {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

fn malformed(url: &str, head: &[u8]) -> ProbeError {
    let first = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line: String = String::from_utf8_lossy(first)
        .trim_end_matches('\r')
        .chars()
        .take(80)
        .collect();
    ProbeError::Malformed {
        url: url.to_owned(),
        line,
    }
}

/// Formats an I/O error without the `(os error N)` suffix:
/// `Connection refused` rather than `Connection refused (os error 111)`.
fn brief(error: &io::Error) -> impl fmt::Display + '_ {
    struct Brief<'a>(&'a io::Error);
    impl fmt::Display for Brief<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let text = self.0.to_string();
            match (self.0.raw_os_error(), text.rfind(" (os error ")) {
                (Some(_), Some(at)) => f.write_str(&text[..at]),
                _ => f.write_str(&text),
            }
        }
    }
    Brief(error)
}

/// Runs the probe a config `target` describes.
pub async fn check(
    target: &crate::config::ProbeTarget,
    timeout: Duration,
) -> Result<(), ProbeError> {
    match target {
        crate::config::ProbeTarget::Http { host, port, path } => {
            http(host, *port, path, timeout).await
        }
        crate::config::ProbeTarget::Tcp { host, port } => tcp(host, *port, timeout).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::net::TcpListener;

    const T: Duration = Duration::from_secs(5);

    /// A one-shot server on 127.0.0.1:0 that reads the request head, records
    /// it, then writes `answer` (or holds the connection open when `None`).
    async fn server(answer: Option<&'static [u8]>) -> (u16, Arc<Mutex<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(String::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            *record.lock().unwrap() = String::from_utf8_lossy(&head).into_owned();
            match answer {
                Some(bytes) => {
                    let _ = stream.write_all(bytes).await;
                }
                None => {
                    // Hold the connection until the client gives up.
                    let _ = stream.read(&mut buf).await;
                }
            }
        });
        (port, seen)
    }

    async fn dead_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn http_200_is_ok_and_request_is_well_formed() {
        let (port, seen) = server(Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
        http("127.0.0.1", port, "/health", T).await.unwrap();
        let head = seen.lock().unwrap().clone();
        assert!(head.starts_with("GET /health HTTP/1.1\r\n"), "{head}");
        assert!(
            head.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")),
            "{head}"
        );
        assert!(head.contains("\r\nUser-Agent: citrusd-probe\r\n"), "{head}");
        assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
    }

    #[tokio::test]
    async fn http_301_is_ok_and_path_gets_a_slash() {
        let (port, seen) = server(Some(b"HTTP/1.0 301 Moved\r\nLocation: /x\r\n\r\n")).await;
        http("127.0.0.1", port, "ready?x=1", T).await.unwrap();
        assert!(seen
            .lock()
            .unwrap()
            .starts_with("GET /ready?x=1 HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn http_503_is_an_error_naming_url_and_status() {
        let (port, _) = server(Some(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")).await;
        let err = http("127.0.0.1", port, "/health", T).await.unwrap_err();
        assert!(matches!(err, ProbeError::Status { status: 503, .. }));
        assert_eq!(
            err.to_string(),
            format!("http://127.0.0.1:{port}/health answered 503")
        );
    }

    #[tokio::test]
    async fn http_skips_interim_responses() {
        let (port, _) = server(Some(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        ))
        .await;
        http("127.0.0.1", port, "/", T).await.unwrap();
    }

    #[tokio::test]
    async fn refused_port_is_a_connect_error() {
        let port = dead_port().await;
        for err in [
            tcp("127.0.0.1", port, T).await.unwrap_err(),
            http("127.0.0.1", port, "/", T).await.unwrap_err(),
        ] {
            assert!(matches!(err, ProbeError::Connect { .. }), "{err:?}");
            assert_eq!(
                err.to_string(),
                format!("connect 127.0.0.1:{port}: Connection refused")
            );
        }
    }

    #[tokio::test]
    async fn tcp_succeeds_against_a_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tcp("127.0.0.1", port, T).await.unwrap();
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let (port, _) = server(None).await;
        let started = std::time::Instant::now();
        let err = http("127.0.0.1", port, "/health", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Timeout(_)), "{err:?}");
        assert_eq!(err.to_string(), "timed out after 200ms");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(
            ProbeError::Timeout(Duration::from_secs(5)).to_string(),
            "timed out after 5s"
        );
    }

    #[tokio::test]
    async fn garbage_status_line_is_malformed() {
        let (port, _) = server(Some(b"SSH-2.0-OpenSSH_9.6\r\n")).await;
        let err = http("127.0.0.1", port, "/", T).await.unwrap_err();
        assert!(matches!(err, ProbeError::Malformed { .. }), "{err:?}");
        assert!(err.to_string().contains("SSH-2.0-OpenSSH_9.6"), "{err}");
    }

    #[tokio::test]
    async fn endless_head_is_malformed_after_8k() {
        let (port, _) = server(Some(&[b'x'; 3 * MAX_RESPONSE_HEAD])).await;
        let err = http("127.0.0.1", port, "/", T).await.unwrap_err();
        assert!(matches!(err, ProbeError::Malformed { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn close_without_answer_is_an_error() {
        let (port, _) = server(Some(b"")).await;
        let err = http("127.0.0.1", port, "/", T).await.unwrap_err();
        assert!(matches!(err, ProbeError::Closed { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn bad_targets_are_rejected_before_connecting() {
        for (host, path) in [
            ("", "/"),
            ("a b", "/"),
            ("127.0.0.1", "/a b"),
            ("h", "/\r\nX: y"),
        ] {
            let err = http(host, 1, path, T).await.unwrap_err();
            assert!(
                matches!(err, ProbeError::Invalid(_)),
                "{host:?} {path:?}: {err:?}"
            );
        }
    }

    #[test]
    fn status_lines() {
        for (line, want) in [
            (&b"HTTP/1.1 200 OK\r"[..], Some(200)),
            (b"HTTP/1.0 404 Not Found", Some(404)),
            (b"HTTP/1.1 302", Some(302)),
            (b"HTTP/2 200 ", Some(200)),
            (b"HTTP/1.1 20 OK", None),
            (b"HTTP/1.1 2000 OK", None),
            (b"HTTP/1.1 abc OK", None),
            (b"HTTP/1.1  200 OK", None),
            (b"http/1.1 200 OK", None),
            (b"HTTP/x 200 OK", None),
            (b"", None),
        ] {
            assert_eq!(
                parse_status_line(line),
                want,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn host_headers_and_urls() {
        assert_eq!(host_header("127.0.0.1", 1338), "127.0.0.1:1338");
        assert_eq!(host_header("example.test", 80), "example.test");
        assert_eq!(host_header("::1", 8080), "[::1]:8080");
        assert_eq!(host_header("fe80::1", 80), "[fe80::1]");
        assert_eq!(authority("::1", 80), "[::1]:80");
    }
}
