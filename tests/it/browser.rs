//! The browser harness: Debian's headless `chromium` driven through `chromedriver` (started per
//! test on a port of its own choosing) with the `fantoccini` WebDriver client, and screenshots
//! under `target/panel-screenshots/<test>-<page>.png`.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::hub_support::ADMIN_TOKEN;
use crate::support::{wait_for, DEADLINE};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One headless Chromium for one test. Dropping it ends the session and chromedriver.
pub struct Browser {
    pub rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    test: String,
    _profile: tempfile::TempDir,
}

/// Where screenshots go: `<target>/panel-screenshots` (the test binary is `<target>/debug/deps/it-…`).
pub fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary is in <target>/<profile>/deps")
        .to_path_buf();
    target.join("panel-screenshots")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; `test` names the screenshots.
    pub fn start(test: &str) -> Browser {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(tool).exists(),
                "{tool} is missing: the panel's browser tests need Debian's chromium and \
                 chromium-driver (apt-get install chromium chromium-driver; .ci/run does it)"
            );
        }
        // Its own process group: the drop ends chromium with it, whatever state it is in.
        let mut driver = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let stdout = driver.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the port, then keeps draining so chromedriver never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line
                    .split("started successfully on port ")
                    .nth(1)
                    .and_then(|p| p.trim_end_matches('.').trim().parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                }
            }
        });
        let port = match rx.recv_timeout(DEADLINE) {
            Ok(port) => port,
            Err(_) => {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(driver.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = driver.wait();
                panic!("chromedriver did not say its port within {DEADLINE:?}");
            }
        };
        let profile = tempfile::Builder::new()
            .prefix("citrus-chromium")
            .tempdir()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                    "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        // The console, to find script errors and refusals of the Content-Security-Policy.
        capabilities.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        // An alert must not be dismissed behind the test's back: the XSS test looks for one.
        capabilities.insert("unhandledPromptBehavior".into(), json!("ignore"));
        let client = rt
            .block_on(
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&format!("http://127.0.0.1:{port}")),
            )
            .unwrap_or_else(|e| panic!("cannot start headless chromium through chromedriver: {e}"));
        Browser {
            rt,
            client: Some(client),
            driver,
            test: test.to_owned(),
            _profile: profile,
        }
    }

    pub fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    pub fn goto(&self, url: &str) {
        self.rt.block_on(self.client().goto(url)).unwrap();
    }

    pub fn url(&self) -> String {
        self.rt
            .block_on(self.client().current_url())
            .unwrap()
            .to_string()
    }

    /// Runs `script` in the page (as a function body; `arguments` holds `args`).
    pub fn exec(&self, script: &str, args: Vec<Value>) -> Value {
        self.rt
            .block_on(self.client().execute(script, args))
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// The element matching `css`, waiting for it.
    #[track_caller]
    pub fn find(&self, css: &str) -> Element {
        wait_for(&format!("an element {css}"), DEADLINE, || {
            self.rt
                .block_on(self.client().find(Locator::Css(css)))
                .map_err(|e| e.to_string())
        })
    }

    /// How many elements match `css` now.
    pub fn count(&self, css: &str) -> usize {
        self.rt
            .block_on(self.client().find_all(Locator::Css(css)))
            .map_or(0, |all| all.len())
    }

    /// Clicks the element matching `css`, finding it again if the page replaced it meanwhile
    /// (a live update).
    #[track_caller]
    pub fn click(&self, css: &str) {
        wait_for(&format!("a click on {css}"), DEADLINE, || {
            self.rt
                .block_on(async {
                    let element = self.client().find(Locator::Css(css)).await?;
                    element.click().await
                })
                .map_err(|e| e.to_string())
        });
    }

    /// Replaces the value of the input matching `css` with `text`.
    #[track_caller]
    pub fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.rt.block_on(element.clear()).unwrap();
        self.rt.block_on(element.send_keys(text)).unwrap();
    }

    /// Waits until the text of `css` contains `needle`; returns the text.
    #[track_caller]
    pub fn wait_text(&self, css: &str, needle: &str) -> String {
        wait_for(&format!("{css} to say {needle:?}"), DEADLINE, || {
            let text = self
                .rt
                .block_on(async {
                    let element = self.client().find(Locator::Css(css)).await?;
                    element.text().await
                })
                .map_err(|e| e.to_string())?;
            match text.contains(needle) {
                true => Ok(text),
                false => Err(text),
            }
        })
    }

    /// Waits until `script` (a function body) returns something truthy; returns it.
    #[track_caller]
    pub fn wait_js(&self, what: &str, script: &str) -> Value {
        wait_for(what, DEADLINE, || {
            let value = self
                .rt
                .block_on(self.client().execute(script, vec![]))
                .map_err(|e| e.to_string())?;
            match value {
                Value::Null | Value::Bool(false) => Err(value.to_string()),
                Value::Number(ref n) if n.as_f64() == Some(0.0) => Err(value.to_string()),
                v => Ok(v),
            }
        })
    }

    /// Resizes the window (a phone: 390 × 844).
    pub fn resize(&self, width: u32, height: u32) {
        self.rt
            .block_on(self.client().set_window_size(width, height))
            .unwrap();
    }

    /// The console entries since the last call that say something is broken in the page: a
    /// script error or a refusal by the Content-Security-Policy (network errors such as a 401
    /// page are not).
    pub fn console_errors(&self) -> Vec<String> {
        let log = self
            .rt
            .block_on(self.client().issue_cmd(BrowserLog))
            .unwrap_or_else(|e| panic!("cannot read the browser's console: {e}"));
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE" && entry["source"] != "network")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// The text of an open alert, if any.
    pub fn alert(&self) -> Option<String> {
        self.rt.block_on(self.client().get_alert_text()).ok()
    }

    /// Saves `target/panel-screenshots/<test>-<page>.png`: the whole page (the window grows to
    /// its height for the shot, at most 4000 px), 1280 px wide or as wide as the window is.
    /// Fails if the console has an error (a script error, a CSP refusal) since the last shot.
    #[track_caller]
    pub fn screenshot(&self, page: &str) -> PathBuf {
        let errors = self.console_errors();
        assert!(
            errors.is_empty(),
            "the console of {page} has errors: {errors:#?}"
        );
        let client = self.client();
        let (width, height) = self.rt.block_on(client.get_window_size()).unwrap();
        let content = self
            .exec("return document.documentElement.scrollHeight;", vec![])
            .as_u64()
            .unwrap_or(height);
        let chrome = height.saturating_sub(
            self.exec("return window.innerHeight;", vec![])
                .as_u64()
                .unwrap_or(height),
        );
        let tall = (content + chrome).clamp(height, 4000);
        self.rt
            .block_on(client.set_window_size(width as u32, tall as u32))
            .unwrap();
        let png = self.rt.block_on(client.screenshot());
        self.rt
            .block_on(client.set_window_size(width as u32, height as u32))
            .unwrap();
        let png = png.unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}-{page}.png", self.test));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Logs in at `base` with `token` through the form.
    pub fn login_with(&self, base: &str, token: &str) {
        self.goto(&format!("{base}/login"));
        self.type_into("#token", token);
        self.click("form[action='/login'] button[type=submit]");
    }

    /// Logs in with the admin token and waits for the fleet page.
    #[track_caller]
    pub fn login(&self, base: &str) {
        self.login_with(base, ADMIN_TOKEN);
        wait_for("the fleet page after login", DEADLINE, || {
            let url = self.url();
            match url == format!("{base}/") {
                true => Ok(()),
                false => Err(url),
            }
        });
    }

    /// Waits until the page's live stream is open.
    #[track_caller]
    pub fn wait_live(&self) {
        self.wait_text("#live-state", "live");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), client.close()).await
            });
        }
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.driver.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.driver.wait();
    }
}

/// Chromedriver's console log (`POST /session/{id}/se/log {"type": "browser"}`): the entries
/// since the previous call.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}
