//! Self-update from an `https://` remote through citrusd's own git transport (rustls, no
//! OpenSSL): a real smart-HTTP git server on 127.0.0.1 (`git http-backend` behind a small TLS
//! server with a self-signed certificate), a redirect, an untrusted certificate, a server that
//! is not a git server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use citrus::fleet::{git_https, update};

/// A smart-HTTP git server over TLS serving the bare repositories under `root`. A path under
/// `/moved/` is redirected (301) to the same path without it.
struct GitServer {
    port: u16,
    pem: String,
    /// "METHOD PATH" of every request, in order.
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl GitServer {
    fn start(root: &Path) -> GitServer {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let pem = cert.cert.pem();
        let key =
            rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.cert.der().clone()], key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (root, seen, stopping) = (root.to_path_buf(), requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (config, root, seen) = (config.clone(), root.clone(), seen.clone());
                std::thread::spawn(move || serve(stream, config, &root, port, &seen));
            }
        });
        GitServer {
            port,
            pem,
            requests,
            stop,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}/{path}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// The client side's TLS: the system roots plus this server's certificate.
    fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_slice(self.pem.as_bytes()).unwrap())
            .unwrap();
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One request on one connection: a redirect, or `git http-backend` as CGI.
fn serve(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    root: &Path,
    port: u16,
    seen: &Mutex<Vec<String>>,
) {
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    let mut line = String::new();
    if tls.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let (mut content_type, mut length) = (String::new(), 0usize);
    loop {
        let mut header = String::new();
        if tls.read_line(&mut header).is_err() || header.trim().is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((&header, ""));
        match name.to_ascii_lowercase().as_str() {
            "content-type" => content_type = value.trim().to_string(),
            "content-length" => length = value.trim().parse().unwrap_or(0),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    if tls.read_exact(&mut body).is_err() {
        return;
    }
    seen.lock().unwrap().push(format!(
        "{method} {}",
        target.split('?').next().unwrap_or("")
    ));
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let response =
        match path.strip_prefix("/moved") {
            Some(rest) => {
                format!(
            "HTTP/1.1 301 Moved Permanently\r\nLocation: https://localhost:{port}{rest}{}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            if query.is_empty() { String::new() } else { format!("?{query}") }
        )
                .into_bytes()
            }
            None => cgi(root, &method, path, query, &content_type, &body),
        };
    let stream = tls.get_mut();
    let _ = stream.write_all(&response);
    let _ = stream.flush();
    stream.conn.send_close_notify();
    let _ = stream.flush();
}

/// `git http-backend`'s answer as an HTTP/1.1 response.
fn cgi(root: &Path, method: &str, path: &str, query: &str, ctype: &str, body: &[u8]) -> Vec<u8> {
    let mut child = Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", ctype)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("git http-backend");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap().stdout;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("CGI headers");
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let payload = &out[split + 4..];
    let mut status = "200 OK".to_string();
    let mut headers = String::new();
    for h in head.lines() {
        match h.strip_prefix("Status: ") {
            Some(s) => status = s.to_string(),
            None => headers.push_str(&format!("{h}\r\n")),
        }
    }
    let mut response = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    )
    .into_bytes();
    response.extend_from_slice(payload);
    response
}

#[track_caller]
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@citrus.invalid"])
        .args(args)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Under `dir`: a bare `srv/app.git` with commit A, a checkout of it for each of `origins`
/// (named `c0`, `c1`, …, with that origin URL), then commit B pushed to the bare repository.
/// Returns the checkouts and B.
fn repos(dir: &Path, origins: &[String]) -> (Vec<PathBuf>, String) {
    let (work, bare) = (dir.join("work"), dir.join("srv/app.git"));
    let path = |p: &Path| p.to_str().unwrap().to_string();
    git(dir, &["init", "-q", "-b", "main", &path(&work)]);
    git(&work, &["commit", "-q", "--allow-empty", "-m", "A"]);
    git(dir, &["clone", "-q", "--bare", &path(&work), &path(&bare)]);
    let checkouts = origins
        .iter()
        .enumerate()
        .map(|(i, origin)| {
            let checkout = dir.join(format!("c{i}"));
            git(dir, &["clone", "-q", &path(&bare), &path(&checkout)]);
            git(&checkout, &["remote", "set-url", "origin", origin]);
            checkout
        })
        .collect();
    git(&work, &["commit", "-q", "--allow-empty", "-m", "B"]);
    git(&work, &["push", "-q", &path(&bare), "main"]);
    (checkouts, git(&work, &["rev-parse", "HEAD"]))
}

#[test]
fn update_fetches_over_https_with_the_configured_ca_and_follows_a_redirect() {
    let dir = tempfile::tempdir().unwrap();
    let server = GitServer::start(&dir.path().join("srv"));
    let (checkouts, b) = repos(
        dir.path(),
        &[server.url("app.git"), server.url("moved/app.git")],
    );
    let before = git(&checkouts[0], &["rev-parse", "HEAD"]);
    assert_ne!(before, b);

    let moved = git_https::with_tls(server.client_tls(), || {
        update::pull(&checkouts[0], "origin", "main")
    })
    .unwrap();
    assert_eq!((moved.previous, moved.current), (before, b.clone()));
    assert_eq!(git(&checkouts[0], &["rev-parse", "HEAD"]), b);
    let requests = server.requests();
    assert_eq!(requests[0], "GET /app.git/info/refs", "{requests:?}");
    assert!(
        requests.contains(&"POST /app.git/git-upload-pack".to_string()),
        "{requests:?}"
    );

    // Through a redirect: the pack is asked for where the refs were found, not at /moved.
    let seen = server.requests().len();
    git_https::with_tls(server.client_tls(), || {
        update::pull(&checkouts[1], "origin", "main")
    })
    .unwrap();
    assert_eq!(git(&checkouts[1], &["rev-parse", "HEAD"]), b);
    let requests = server.requests()[seen..].to_vec();
    assert_eq!(
        requests[..2],
        ["GET /moved/app.git/info/refs", "GET /app.git/info/refs"],
        "{requests:?}"
    );
    assert!(
        requests.iter().all(|r| !r.starts_with("POST /moved")),
        "{requests:?}"
    );
}

#[test]
fn an_untrusted_certificate_or_a_server_that_is_not_git_fails_and_nothing_moves() {
    let dir = tempfile::tempdir().unwrap();
    let server = GitServer::start(&dir.path().join("srv"));
    let (checkouts, _) = repos(
        dir.path(),
        &[server.url("app.git"), server.url("nothing.git")],
    );
    let head = |c: &Path| git(c, &["rev-parse", "HEAD"]);
    let before: Vec<String> = checkouts.iter().map(|c| head(c)).collect();

    // The system roots only: the self-signed certificate is refused.
    let err = update::pull(&checkouts[0], "origin", "main").unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(err.contains("fetch main from origin"), "{err}");
    assert!(server.requests().is_empty(), "{:?}", server.requests());

    // Trusted, but no repository there.
    let err = git_https::with_tls(server.client_tls(), || {
        update::pull(&checkouts[1], "origin", "main")
    })
    .unwrap_err();
    assert!(err.contains("nothing.git") && err.contains("404"), "{err}");

    let after: Vec<String> = checkouts.iter().map(|c| head(c)).collect();
    assert_eq!(before, after);
}
