//! Self-update and deployments' git sources from an `https://` remote through citrusd's own git
//! transport (rustls, no OpenSSL): a real smart-HTTP git server on 127.0.0.1 (`git http-backend`
//! behind a small TLS server with a self-signed certificate), a redirect, an untrusted
//! certificate, a server that is not a git server.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use citrus::fleet::{git_https, update};

use crate::https_server::{HttpsServer, Request};
use crate::support::git;

/// A smart-HTTP git server over TLS serving the bare repositories under `root`. A path under
/// `/moved/` is redirected (301) to the same path without it.
fn git_server(root: &Path) -> HttpsServer {
    let root = root.to_path_buf();
    HttpsServer::start(move |req, port| match req.path.strip_prefix("/moved") {
        Some(rest) => {
            let query = match req.query.is_empty() {
                true => String::new(),
                false => format!("?{}", req.query),
            };
            format!(
                "HTTP/1.1 301 Moved Permanently\r\nLocation: https://localhost:{port}{rest}{query}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .into_bytes()
        }
        None => cgi(&root, req),
    })
}

/// `git http-backend`'s answer as an HTTP/1.1 response.
fn cgi(root: &Path, req: &Request) -> Vec<u8> {
    let mut child = Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &req.method)
        .env("PATH_INFO", &req.path)
        .env("QUERY_STRING", &req.query)
        .env("CONTENT_TYPE", &req.content_type)
        .env("CONTENT_LENGTH", req.body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("git http-backend");
    child.stdin.take().unwrap().write_all(&req.body).unwrap();
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
    let server = git_server(&dir.path().join("srv"));
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
    let server = git_server(&dir.path().join("srv"));
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

#[test]
fn a_deployment_checks_out_an_https_source_through_the_same_transport() {
    use citrus::deploy::source::{git_checkout, Limits, SourceError};

    let dir = tempfile::tempdir().unwrap();
    let server = git_server(&dir.path().join("srv"));
    let (_, b) = repos(dir.path(), &[]);
    let (cache, dest) = (dir.path().join("cache.git"), dir.path().join("release"));
    std::fs::create_dir(&dest).unwrap();
    let url = server.url("app.git");
    let tls = Some(server.client_tls());
    let id = git_checkout(&url, "main", &cache, &dest, tls, &Limits::default()).unwrap();
    assert_eq!(id, b);
    assert!(!dest.join(".git").exists());
    let requests = server.requests();
    assert_eq!(requests[0], "GET /app.git/info/refs", "{requests:?}");

    // Without the CA the self-signed certificate is refused, and the error names the URL.
    let again = dir.path().join("release2");
    std::fs::create_dir(&again).unwrap();
    let err = git_checkout(&url, "main", &cache, &again, None, &Limits::default()).unwrap_err();
    assert!(matches!(err, SourceError::Git { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("cannot fetch {url}")), "{msg}");
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
}
