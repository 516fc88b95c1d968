//! The web panel over HTTP (no browser): sessions, the CSRF and Origin checks on the admin API,
//! the rate limit of wrong tokens, and the headers of every panel response. The browser tests
//! are in `browser.rs`.

use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::redirect::Policy;
use serde_json::{json, Value};

use crate::browser::Browser;
use crate::digitalocean::FakeDo;
use crate::hub::agent_daemon;
use crate::hub_deploy::connected_agent;
use crate::hub_support::{EngineProc, ADMIN_TOKEN};
use crate::provision::engine_with;
use crate::support::{wait_for, DEADLINE};

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
    for path in [
        "/",
        "/?q=web",
        "/servers",
        "/operations",
        "/events",
        "/agents/x",
    ] {
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

#[test]
fn the_overview_renders_at_most_500_agents_and_filters_on_the_server() {
    let engine = EngineProc::start("");
    for i in 0..505 {
        engine.create_agent(&format!("host-{i:04}"));
    }
    let http = Http::new(&engine);
    let (cookie, _) = http.login();
    let page = http.get("/", Some(&cookie)).text().unwrap();
    assert_eq!(page.matches("<tr data-id=").count(), 500);
    assert!(page.contains("505 agents"), "the count of all of them");
    assert!(
        page.contains("Showing <span id=\"shown\">500</span> of <span id=\"total\">505</span>"),
        "the count of the rest"
    );
    assert!(page.len() < 1_000_000, "{} bytes", page.len());
    // `?q=` filters on the server (name, id or hostname, ignoring case).
    let page = http.get("/?q=HOST-0042", Some(&cookie)).text().unwrap();
    assert_eq!(page.matches("<tr data-id=").count(), 1);
    assert!(page.contains(">host-0042<"));
    assert!(page.contains("1 agent matching"));
    // An unknown agent's page is a 404 page.
    let response = http.get("/agents/nope", Some(&cookie));
    assert_eq!(response.status().as_u16(), 404);
    assert!(response.text().unwrap().contains("no agent with id"));
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
    // The console check of every screenshot sees errors (it would see a CSP refusal).
    browser.exec("console.error('probe');", vec![]);
    let errors = browser.console_errors();
    assert!(errors.iter().any(|e| e.contains("probe")), "{errors:?}");
}

/// Counts the pixels of the series colour (#e8a317) in the first canvas under `selector`.
fn chart_pixels(selector: &str) -> String {
    format!(
        "const c = document.querySelector('{selector} canvas'); if (!c) return 0;\n\
         const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;\n\
         for (let i = 0; i < d.length; i += 4) {{\n\
           if (d[i] > 200 && d[i + 1] > 130 && d[i + 1] < 190 && d[i + 2] < 90 && d[i + 3] > 200) n++;\n\
         }}\n\
         return n;"
    )
}

#[test]
fn browser_sees_an_agent_come_online_restarts_its_app_and_draws_its_charts() {
    let engine = EngineProc::start("command_timeout = \"20s\"\n");
    let (id, token) = engine.create_agent("web-1");
    let browser = Browser::start("agent");
    let base = engine.url();
    browser.login(&base);
    let row = format!("#agents tr[data-id='{id}']");
    // Not enrolled yet: pending.
    browser.wait_text(&format!("{row} [data-f=status]"), "pending");
    browser.wait_live();
    browser.exec("window.samePage = true;", vec![]);

    // The agent comes online and its app shows, without a reload.
    let daemon = agent_daemon(&engine, &id, &token);
    browser.wait_text(&format!("{row} [data-f=status]"), "online");
    browser.wait_text(&format!("{row} [data-f=apps]"), "1 online");
    assert_eq!(
        browser.exec("return window.samePage === true;", vec![]),
        json!(true),
        "the page was not reloaded"
    );
    browser.screenshot("fleet");
    // The filter narrows the rows at once, in the browser.
    let hidden = format!("return document.querySelector(\"{row}\").hidden;");
    browser.type_into("#filter", "no-such-host");
    browser.wait_js("the row hidden", &hidden);
    assert_eq!(
        browser.exec(
            "return document.getElementById('no-agents').hidden;",
            vec![]
        ),
        json!(false)
    );
    browser.type_into("#filter", "WEB-");
    browser.wait_js("the row shown", &hidden.replace("return ", "return !"));
    browser.type_into("#filter", "");

    // Its page: apps, and a chart drawn from the history.
    wait_for("history points", DEADLINE, || {
        let history = engine.get(&format!("/admin/agents/{id}/history?range=hour"));
        match history["points"].as_array().map_or(0, Vec::len) {
            n if n >= 1 => Ok(()),
            n => Err(format!("{n} points")),
        }
    });
    browser.click(&format!("{row} [data-f=agent] a"));
    browser.wait_text("#apps tbody tr[data-app=api]", "online");
    browser.wait_text("#chart-note", "point");
    browser.wait_js("the memory chart's line", &chart_pixels("#chart-memory"));
    browser.click(".ranges button[data-range=day]");
    browser.wait_js("the day's memory chart", &chart_pixels("#chart-memory"));

    // Restart the app: the operation's box follows it to the end.
    let before = daemon.app("api")[0].restarts;
    browser.click("#apps tr[data-app=api] button[data-app-action=restart]");
    browser.wait_text("#action-log .op-box [data-f=type]", "app_control");
    browser.wait_text("#action-log .op-box [data-f=status]", "completed");
    let after = daemon.app("api")[0].restarts;
    assert!(after > before);
    browser.wait_text("table.operations tbody tr [data-f=status]", "completed");
    // The apps table follows: the restart is counted, the app online again.
    browser.wait_text(
        "#apps tbody tr[data-app=api] td:nth-child(5)",
        &after.to_string(),
    );
    browser.wait_text("#apps tbody tr[data-app=api]", "online");
    browser.screenshot("agent");
    // On a phone: one column.
    browser.resize(390, 844);
    let columns = browser.exec(
        "return getComputedStyle(document.querySelector('.charts')).gridTemplateColumns.split(' ').length;",
        vec![],
    );
    assert_eq!(columns, json!(1));
    // The charts are redrawn to the narrower column (not left at the desktop width, which put
    // the newest points past the card's edge).
    browser.wait_js(
        "every chart within its card",
        "const charts = [...document.querySelectorAll('.chart')]; \
         return charts.length > 0 && charts.every(c => { const u = c.querySelector('.uplot'); \
         return u && u.offsetWidth <= c.clientWidth; }) || null;",
    );
    browser.screenshot("agent-phone");
    browser.goto(&format!("{base}/"));
    browser.wait_text(&format!("{row} [data-f=status]"), "online");
    browser.screenshot("fleet-phone");
    browser.resize(1280, 900);
    browser.goto(&format!("{base}/agents/{id}"));

    // A domain the agent would refuse is refused in the browser, before any request.
    browser.type_into("#site-domain", "bad_domain.com");
    browser.wait_live();
    browser.click("#site-form button[data-site=create_site]");
    let message = browser.exec(
        "return document.getElementById('site-domain').validationMessage;",
        vec![],
    );
    assert!(
        message.as_str().unwrap().contains("only letters, digits"),
        "{message}"
    );
    assert_eq!(browser.count("#action-log .op-box"), 0, "no operation");
    // A good one runs.
    browser.type_into("#site-domain", "shop.example.com");
    browser.click("#site-form button[data-site=create_site]");
    wait_for("an operation box", DEADLINE, || {
        match browser.count("#action-log .op-box") {
            1 => Ok(()),
            n => Err(n.to_string()),
        }
    });
    let output = browser.wait_js(
        "the site's output",
        "const b = document.querySelector('#action-log .op-box'); \
         return b.dataset.status === 'completed' && b.querySelector('pre').textContent;",
    );
    assert!(
        output
            .as_str()
            .unwrap()
            .contains("created shop.example.com"),
        "{output}"
    );

    // The Operations page lists both.
    browser.goto(&format!("{base}/operations"));
    browser.wait_text("table.operations", "create_site");
    browser.wait_text("table.operations", "app_control");
    browser.screenshot("operations");
}

#[test]
fn browser_deploys_a_server_watches_its_states_and_deletes_it() {
    let fake = FakeDo::start();
    // Slow enough to see `provisioning` (200 ms polls).
    fake.set_active_after(6);
    let engine = engine_with(&fake, fake.token(), "");
    let browser = Browser::start("servers");
    let base = engine.url();
    browser.login(&base);
    browser.goto(&format!("{base}/servers"));
    browser.wait_live();
    // Every state the row shows, in order.
    browser.exec(
        "window.states = [];
         const seen = () => {
           for (const b of document.querySelectorAll('#servers [data-f=status] .badge')) {
             if (window.states[window.states.length - 1] !== b.textContent) window.states.push(b.textContent);
           }
         };
         new MutationObserver(seen).observe(document.getElementById('servers'), {subtree: true, childList: true, characterData: true});",
        vec![],
    );
    browser.type_into("#server-name", "web-panel");
    browser.click("#deploy-server button[type=submit]");
    browser.wait_text("#deploy-result", "being created");
    let row = "#servers tbody tr[data-name='web-panel']";
    browser.wait_text(&format!("{row} [data-f=status]"), "initializing");
    browser.wait_text(&format!("{row} [data-f=ip]"), "203.0.113.1");
    let states = browser.exec("return window.states;", vec![]);
    let states: Vec<&str> = states
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let at = |s: &str| states.iter().position(|x| *x == s);
    assert!(
        at("provisioning").is_some() && at("provisioning") < at("initializing"),
        "{states:?}"
    );
    browser.screenshot("servers");

    // The overview shows it among the servers on their way.
    browser.goto(&format!("{base}/"));
    browser.wait_text("#provisioning", "web-panel");
    browser.wait_text("#provisioning", "initializing");
    browser.screenshot("fleet");

    // Deletion asks first, naming the droplet.
    browser.goto(&format!("{base}/servers"));
    browser.click(&format!("{row} button[data-action=delete-server]"));
    let question = browser.wait_text("#confirm-text", "web-panel");
    assert!(question.contains("droplet 1000"), "{question}");
    browser.screenshot("servers-confirm");
    browser.click("#confirm-yes");
    browser.wait_text("#deploy-result", "droplet 1000 destroyed");
    wait_for("the row to go", DEADLINE, || match browser.count(row) {
        0 => Ok(()),
        n => Err(n.to_string()),
    });
    assert_eq!(fake.deleted(), vec![1000]);
}

const EVIL: &str = "<img src=x onerror=alert(1)>";

/// A status naming the host and its one app `EVIL`.
fn evil_status(hostname: &str) -> String {
    json!({"type": "status_update", "status": {
        "hostname": hostname, "uptime": 1, "gitVersion": null,
        "cpu": {"load": 12.0, "cores": 2},
        "memory": {"total": 1 << 30, "used": 1 << 29, "free": 1 << 29},
        "disk": [{"fs": "/", "size": 10u64 << 30, "used": (9u64 << 30) + 1, "available": 1 << 29}],
        "apps": [{"name": EVIL, "instance": 0, "pid": 42, "state": "errored", "restarts": 3,
                  "unstable_restarts": 3, "memory_restarts": 0, "uptime_ms": 0,
                  "memory_bytes": 0, "cpu_percent": 0.0, "last_exit": null}],
        "timestamp": 1
    }})
    .to_string()
}

/// Whether the page has no element an agent's text could have injected, and no alert is open.
#[track_caller]
fn assert_nothing_injected(browser: &Browser) {
    assert_eq!(browser.alert(), None, "an alert is open");
    let injected = browser.exec(
        "return document.querySelectorAll('img, main script, [onerror]').length;",
        vec![],
    );
    assert_eq!(injected, json!(0));
}

#[test]
fn browser_renders_hostile_names_and_output_as_text() {
    let engine = EngineProc::start("status_interval = \"1m\"\ncommand_timeout = \"20s\"\n");
    let (id, _key, mut ws) = connected_agent(&engine, "evil");
    assert!(ws.send(&engine.rt, evil_status(EVIL)));
    wait_for("the hostile status", DEADLINE, || {
        let agent = engine.agent(&id);
        match agent["status"]["hostname"] == EVIL {
            true => Ok(()),
            false => Err(agent["status"].to_string()),
        }
    });
    // An operation whose output is hostile.
    let (status, body) =
        engine.command(&id, json!({"type": "create_site", "domain": "example.com"}));
    assert_eq!(status, 202, "{body}");
    let op = body["operation"]["id"].as_str().unwrap().to_owned();
    let frame = ws.recv(&engine.rt, DEADLINE).expect("the command").unwrap();
    assert!(frame.contains(&op), "{frame}");
    let output = format!("<script>alert(2)</script>{EVIL}");
    let report = json!({"type": "site_operation", "id": op, "operation": "create",
                        "status": "completed", "domain": "example.com", "output": output});
    assert!(ws.send(&engine.rt, report.to_string()));
    engine.wait_operation(&op);
    // And a hostile event.
    let event = json!({"type": "event", "kind": "errored", "app": EVIL, "message": format!("{EVIL} stored")});
    assert!(ws.send(&engine.rt, event.to_string()));
    wait_for("the stored event", DEADLINE, || {
        let events = engine.get("/admin/events");
        match events["events"].as_array().map_or(0, Vec::len) {
            1 => Ok(()),
            n => Err(format!("{n} events")),
        }
    });

    let browser = Browser::start("xss");
    let base = engine.url();
    browser.login(&base);
    let row = format!("#agents tr[data-id='{id}']");
    assert!(browser.wait_text(&row, EVIL).contains("1 errored"));
    assert_nothing_injected(&browser);
    browser.screenshot("fleet");

    browser.click(&format!("{row} [data-f=agent] a"));
    browser.wait_text("#apps tbody", EVIL);
    browser.wait_text("[data-f=hostname]", EVIL);
    let shown = browser.exec(
        "return document.querySelector('table.operations pre').textContent;",
        vec![],
    );
    assert_eq!(shown, json!(output));
    // The same through the live stream: the script's own rendering.
    browser.wait_live();
    assert!(ws.send(&engine.rt, evil_status(&format!("{EVIL}-2"))));
    browser.wait_text("[data-f=hostname]", &format!("{EVIL}-2"));
    browser.wait_text("#apps tbody", EVIL);
    assert_nothing_injected(&browser);
    browser.screenshot("agent");

    browser.wait_text("table.events", &format!("{EVIL} stored"));

    browser.goto(&format!("{base}/operations"));
    browser.wait_text("table.operations", "create_site");
    assert_nothing_injected(&browser);
    browser.screenshot("operations");

    // Events: the stored one from the server, a new one through the stream.
    browser.goto(&format!("{base}/events"));
    browser.wait_text("table.events", &format!("{EVIL} stored"));
    browser.wait_live();
    let event = json!({"type": "event", "kind": "health_failed", "app": EVIL, "message": format!("{EVIL} live")});
    assert!(ws.send(&engine.rt, event.to_string()));
    let text = browser.wait_text("table.events tbody tr", &format!("{EVIL} live"));
    assert!(
        text.contains("evil") && text.contains("health_failed"),
        "{text}"
    );
    assert_nothing_injected(&browser);
    browser.screenshot("events");
}
