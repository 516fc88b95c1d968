//! The web panel over HTTP (no browser): sessions, the CSRF and Origin checks on the admin API,
//! the rate limit of wrong tokens, and the headers of every panel response. The browser tests
//! are in `browser.rs`.

use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::redirect::Policy;
use serde_json::{json, Value};

use crate::browser::Browser;
use crate::hub_support::{EngineProc, ADMIN_TOKEN};

/// The panel's Content-Security-Policy, as the issue asks for it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A client that keeps no cookies and follows no redirects: each test says what it sends.
pub struct Http {
    pub base: String,
    client: Client,
}

impl Http {
    pub fn new(engine: &EngineProc) -> Http {
        Http {
            base: engine.url(),
            client: Client::builder()
                .redirect(Policy::none())
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    pub fn get(&self, path: &str, cookie: Option<&str>) -> Response {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send().unwrap()
    }

    /// `POST` of a form body (already encoded) with extra headers.
    pub fn post_form(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Response {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned());
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.send().unwrap()
    }

    /// A JSON call with extra headers: status and body.
    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Logs in with the admin token: the `Cookie` header value and the `Set-Cookie` it came from.
    pub fn login(&self) -> (String, String) {
        let response = self.post_form("/login", &format!("token={ADMIN_TOKEN}"), &[]);
        assert_eq!(response.status().as_u16(), 303, "{:?}", response.text());
        assert_eq!(header(response.headers(), "location"), "/");
        let set_cookie = header(response.headers(), "set-cookie");
        let pair = set_cookie.split(';').next().unwrap().trim().to_owned();
        assert!(pair.starts_with("citrus_session="), "{set_cookie}");
        (pair, set_cookie)
    }

    /// The CSRF token a page of this session carries.
    pub fn csrf(&self, cookie: &str) -> String {
        let page = self.get("/servers", Some(cookie)).text().unwrap();
        let at = page
            .find("name=\"citrus-csrf\" content=\"")
            .expect("csrf meta")
            + 28;
        page[at..at + 64].to_owned()
    }
}

pub fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v: &HeaderValue| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[track_caller]
fn assert_panel_headers(headers: &HeaderMap) {
    assert_eq!(header(headers, "content-security-policy"), CSP);
    assert_eq!(header(headers, "x-frame-options"), "DENY");
    assert_eq!(header(headers, "x-content-type-options"), "nosniff");
    assert_eq!(header(headers, "referrer-policy"), "same-origin");
}

#[test]
fn panel_pages_redirect_to_login_without_a_session() {
    let engine = EngineProc::start("");
    let http = Http::new(&engine);
    for path in ["/servers", "/operations"] {
        let response = http.get(path, None);
        assert_eq!(response.status().as_u16(), 303, "{path}");
        assert_eq!(header(response.headers(), "location"), "/login", "{path}");
        assert_panel_headers(response.headers());
        // A made-up session is no session.
        let response = http.get(path, Some("citrus_session=00ff"));
        assert_eq!(response.status().as_u16(), 303, "{path}");
    }
    let response = http.get("/login", None);
    assert_eq!(response.status().as_u16(), 200);
    assert_panel_headers(response.headers());
    assert_eq!(header(response.headers(), "cache-control"), "no-store");
    let page = response.text().unwrap();
    assert!(page.contains("name=\"token\""), "{page}");
    // The admin API without a token or session is refused as before.
    let (status, body) = http.json("GET", "/admin/servers", None, &[]);
    assert_eq!(status, 401, "{body}");
}

#[test]
fn login_sets_a_strict_session_cookie_and_logout_ends_it_on_the_server() {
    let engine = EngineProc::start("");
    let http = Http::new(&engine);
    let (cookie, set_cookie) = http.login();
    let attributes: Vec<&str> = set_cookie.split(';').map(str::trim).collect();
    for want in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(attributes.contains(&want), "{want} in {set_cookie}");
    }
    assert!(
        !attributes.contains(&"Secure"),
        "public_url is http: {set_cookie}"
    );
    // The id is 32 random bytes in hex.
    assert_eq!(cookie.len(), "citrus_session=".len() + 64, "{cookie}");

    // Pages and the admin API accept the session; the login page sends it on to the fleet.
    let response = http.get("/servers", Some(&cookie));
    assert_eq!(response.status().as_u16(), 200);
    assert_panel_headers(response.headers());
    assert_eq!(header(response.headers(), "cache-control"), "no-store");
    let response = http.get("/login", Some(&cookie));
    assert_eq!(response.status().as_u16(), 303);
    let (status, body) = http.json("GET", "/admin/servers", None, &[("cookie", &cookie)]);
    assert_eq!(status, 200, "{body}");
    // The bearer API works beside it.
    assert_eq!(engine.admin("GET", "/admin/servers", None).0, 200);

    // Logout needs the page's CSRF token.
    let csrf = http.csrf(&cookie);
    let response = http.post_form("/logout", "csrf=wrong", &[("cookie", &cookie)]);
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(http.get("/servers", Some(&cookie)).status().as_u16(), 200);
    let response = http.post_form("/logout", &format!("csrf={csrf}"), &[("cookie", &cookie)]);
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(header(response.headers(), "location"), "/login");
    assert!(header(response.headers(), "set-cookie").contains("Max-Age=0"));
    // The server forgot it: the same cookie (a copy kept by anyone) no longer works.
    let response = http.get("/servers", Some(&cookie));
    assert_eq!(response.status().as_u16(), 303);
    let (status, body) = http.json("GET", "/admin/servers", None, &[("cookie", &cookie)]);
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("log in again"),
        "{body}"
    );
}

#[test]
fn wrong_tokens_are_rate_limited_without_locking_the_right_one_out() {
    let engine = EngineProc::start("auth_max_failures = 3\nauth_failure_window = \"1m\"\n");
    let http = Http::new(&engine);
    for _ in 0..2 {
        let response = http.post_form("/login", "token=wrong", &[]);
        assert_eq!(response.status().as_u16(), 401);
        assert!(header(response.headers(), "set-cookie").is_empty());
        assert!(response.text().unwrap().contains("wrong admin token"));
    }
    let response = http.post_form("/login", "token=wrong", &[]);
    assert_eq!(response.status().as_u16(), 429);
    assert!(!header(response.headers(), "retry-after").is_empty());
    assert!(response.text().unwrap().contains("too many wrong tokens"));
    let response = http.post_form("/login", "token=wrong-again", &[]);
    assert_eq!(response.status().as_u16(), 429);
    // The right token still gets in.
    http.login();
    // A form without the field is a clear refusal.
    let response = http.post_form("/login", "password=x", &[]);
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.text().unwrap().contains("`token`"));
}

#[test]
fn forged_requests_with_the_session_are_refused() {
    let engine = EngineProc::start("");
    let http = Http::new(&engine);
    let (cookie, _) = http.login();
    let csrf = http.csrf(&cookie);
    let body = Some(json!({"name": "forged"}));
    // A cross-site form or fetch has the cookie at most, never the page's token.
    for headers in [
        vec![("cookie", cookie.as_str())],
        vec![("cookie", cookie.as_str()), ("x-csrf-token", "0000")],
    ] {
        let (status, answer) = http.json("POST", "/admin/agents", body.clone(), &headers);
        assert_eq!(status, 403, "{answer}");
        assert!(answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-csrf-token"));
    }
    // The right token from another origin is refused too.
    let (status, answer) = http.json(
        "POST",
        "/admin/agents",
        body.clone(),
        &[
            ("cookie", &cookie),
            ("x-csrf-token", &csrf),
            ("origin", "http://evil.example"),
        ],
    );
    assert_eq!(status, 403, "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("cross-origin"));
    // A cross-origin login is refused as well.
    let response = http.post_form(
        "/login",
        &format!("token={ADMIN_TOKEN}"),
        &[("origin", "http://evil.example")],
    );
    assert_eq!(response.status().as_u16(), 403);
    // Nothing was created.
    let agents = engine.get("/admin/agents")["agents"].clone();
    assert_eq!(agents.as_array().unwrap().len(), 0, "{agents}");
    // The page's own request passes: token, and its own origin.
    let origin = engine.url();
    let (status, answer) = http.json(
        "POST",
        "/admin/agents",
        body,
        &[
            ("cookie", &cookie),
            ("x-csrf-token", &csrf),
            ("origin", &origin),
        ],
    );
    assert_eq!(status, 201, "{answer}");
}

#[test]
fn an_https_public_url_makes_the_cookie_secure() {
    let engine = EngineProc::start("public_url = \"https://engine.example.com\"\n");
    let http = Http::new(&engine);
    let (cookie, set_cookie) = http.login();
    assert!(
        set_cookie.split(';').any(|a| a.trim() == "Secure"),
        "{set_cookie}"
    );
    // The engine's origin is public_url's: the listener's own address is not it.
    let csrf = http.csrf(&cookie);
    let origin = engine.url();
    let (status, _) = http.json(
        "POST",
        "/admin/agents",
        Some(json!({})),
        &[
            ("cookie", &cookie),
            ("x-csrf-token", &csrf),
            ("origin", &origin),
        ],
    );
    assert_eq!(status, 403);
    let (status, answer) = http.json(
        "POST",
        "/admin/agents",
        Some(json!({})),
        &[
            ("cookie", &cookie),
            ("x-csrf-token", &csrf),
            ("origin", "https://engine.example.com"),
        ],
    );
    assert_eq!(status, 201, "{answer}");
}

#[test]
fn assets_are_content_addressed_and_immutable() {
    let engine = EngineProc::start("");
    let http = Http::new(&engine);
    let page = http.get("/login", None).text().unwrap();
    let urls: Vec<&str> = page
        .match_indices("\"/assets/")
        .map(|(i, _)| page[i + 1..].split('"').next().unwrap())
        .collect();
    assert_eq!(urls.len(), 2, "the CSS and the script: {urls:?}");
    for url in urls {
        let mime = match url.ends_with(".css") {
            true => "text/css",
            false => "text/javascript",
        };
        let response = http.get(url, None);
        assert_eq!(response.status().as_u16(), 200, "{url}");
        assert_panel_headers(response.headers());
        assert!(
            header(response.headers(), "content-type").starts_with(mime),
            "{url}"
        );
        assert_eq!(
            header(response.headers(), "cache-control"),
            "public, max-age=31536000, immutable"
        );
        // Another hash is not this file.
        let stale = url.replacen("/assets/", "/assets/0", 1);
        assert_eq!(http.get(&stale, None).status().as_u16(), 404, "{stale}");
    }
}

// ---- in a real browser ------------------------------------------------------------------------

#[test]
fn browser_login_fails_with_a_wrong_token_then_succeeds() {
    let engine = EngineProc::start("");
    let browser = Browser::start("login");
    let base = engine.url();
    browser.goto(&format!("{base}/servers"));
    // Sent to the login form.
    browser.find("#token");
    assert_eq!(browser.url(), format!("{base}/login"));
    browser.screenshot("login");
    browser.login_with(&base, "not-the-token");
    browser.wait_text("#login-error", "wrong admin token");
    browser.screenshot("login-wrong");
    browser.login(&base);
    browser.goto(&format!("{base}/servers"));
    browser.find("#deploy-server");
    browser.screenshot("servers");
}
