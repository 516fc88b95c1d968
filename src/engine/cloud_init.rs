//! The droplet's user data: a bash script, run once as root by cloud-init, that installs citrusd
//! (checksum verified), writes its config with the enrolment token, installs the systemd unit and
//! starts it. The script is `cloud-init/user-data.sh.tmpl` with validated values put in.
//!
//! User data is readable by any process on the droplet (the metadata service), so it carries
//! only the single-use enrolment token, and only inside the quoted heredoc that writes the
//! 0600 config: never on a command line, in the log or in a URL. Every value is checked against
//! a character set that cannot break out of a quoted heredoc, a single-quoted shell word or a
//! TOML string.

use std::fmt;
use std::time::Duration;

use crate::config::{format_duration, toml_string};

/// The script, with `{{NAME}}` placeholders.
const TEMPLATE: &str = include_str!("../../cloud-init/user-data.sh.tmpl");
/// The systemd unit the script installs.
const SERVICE: &str = include_str!("../../systemd/citrusd.service");

/// Where the config puts the agent key citrusd gets for the token.
const KEY_FILE: &str = "/etc/citrus/agent.key";

/// What a droplet's user data is made from.
#[derive(Clone, Copy)]
pub struct CloudInit<'a> {
    /// The engine's agent endpoint, `ws://` or `wss://` (e.g. `wss://engine.example.com/agent`).
    pub engine_url: &'a str,
    /// The agent's id, a UUID.
    pub agent_id: &'a str,
    /// The single-use enrolment token: `[A-Za-z0-9_-]`, 1 to 256 characters.
    pub enroll_token: &'a str,
    /// Where to download citrusd: `http://` or `https://` (not secret).
    pub citrusd_url: &'a str,
    /// citrusd's SHA-256, 64 hex digits.
    pub citrusd_sha256: &'a str,
    /// The engine's `status_interval`: the agent must report at least this often, or the engine
    /// takes it for silent after 3 intervals.
    pub status_interval: Duration,
    /// The host profile (`host_profile` in engine.toml): citrusd.toml text put before the
    /// generated `[daemon]` and `[fleet]`, checked by [`check_host_profile`] at engine start.
    pub host_profile: &'a str,
}

impl fmt::Debug for CloudInit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudInit")
            .field("engine_url", &self.engine_url)
            .field("agent_id", &self.agent_id)
            .field("enroll_token", &"<redacted>")
            .field("citrusd_url", &self.citrusd_url)
            .field("citrusd_sha256", &self.citrusd_sha256)
            .field("status_interval", &self.status_interval)
            .field("host_profile", &self.host_profile.len())
            .finish()
    }
}

/// A value that cannot go into the user data; `field` is the [`CloudInit`] field's name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot render cloud-init: invalid {field}: {why}")]
pub struct CloudInitError {
    /// `engine_url`, `agent_id`, `enroll_token`, `citrusd_url` or `citrusd_sha256`.
    pub field: &'static str,
    /// What is wrong (never the token itself).
    pub why: String,
}

/// The whole user-data script for `p`, every value checked first.
pub fn render(p: &CloudInit) -> Result<String, CloudInitError> {
    validate(p)?;
    let config = citrusd_config(p);
    let sha256 = p.citrusd_sha256.to_ascii_lowercase();
    Ok(fill(
        TEMPLATE,
        &[
            ("CITRUSD_URL", p.citrusd_url),
            ("CITRUSD_SHA256", &sha256),
            // The heredoc's closing delimiter follows on the template's next line.
            ("CITRUSD_CONFIG", config.trim_end_matches('\n')),
            ("CITRUSD_SERVICE", SERVICE.trim_end_matches('\n')),
        ],
    ))
}

/// The `/etc/citrus/citrusd.toml` the script writes: the host profile as written (so that its
/// line numbers are the profile file's), then `[daemon]` directories as the systemd unit creates
/// them and `[fleet]` with the enrolment token. Values are TOML-escaped, but only [`render`]
/// checks them.
pub fn citrusd_config(p: &CloudInit) -> String {
    let profile = match p.host_profile.trim_end() {
        "" => String::new(),
        text => format!("{text}\n\n"),
    };
    profile
        + &format!(
        "# Written at first boot by citrus-engine's cloud-init. citrusd exchanges the single-use\n\
         # enroll_token for its agent key (key_file) when it first connects.\n\
         \n\
         [daemon]\n\
         state_dir = \"/var/lib/citrus\"\n\
         log_dir = \"/var/log/citrus\"\n\
         \n\
         [fleet]\n\
         engine_url = {}\n\
         agent_id = {}\n\
         key_file = {}\n\
         enroll_token = {}\n\
         status_interval = {}\n",
        toml_string(p.engine_url),
        toml_string(p.agent_id),
        toml_string(KEY_FILE),
        toml_string(p.enroll_token),
        toml_string(&format_duration(p.status_interval)),
    )
}

/// Checks every field of `p`.
fn validate(p: &CloudInit) -> Result<(), CloudInitError> {
    let invalid = |field: &'static str| move |why: String| CloudInitError { field, why };
    check_url(p.engine_url, &["ws", "wss"]).map_err(invalid("engine_url"))?;
    check_uuid(p.agent_id).map_err(invalid("agent_id"))?;
    check_token(p.enroll_token).map_err(invalid("enroll_token"))?;
    check_url(p.citrusd_url, &["http", "https"]).map_err(invalid("citrusd_url"))?;
    check_sha256(p.citrusd_sha256).map_err(invalid("citrusd_sha256"))?;
    check_delimiters(p.host_profile).map_err(invalid("host_profile"))?;
    Ok(())
}

/// The heredoc delimiters of the template: a line of the profile equal to one would end the
/// quoted text early and run the rest as shell.
const DELIMITERS: &[&str] = &["CITRUS_EOF", "CITRUS_UNIT_EOF", "CITRUS_SHA_EOF"];

fn check_delimiters(text: &str) -> Result<(), String> {
    match text.lines().position(|l| DELIMITERS.contains(&l.trim())) {
        Some(at) => Err(format!(
            "line {} is a heredoc delimiter of the cloud-init script; change it",
            at + 1
        )),
        None => Ok(()),
    }
}

/// Checks a host profile (the text of the file `path`) as the host's citrusd will read it: no
/// `[daemon]` and no `[fleet]` keys of its own (cloud-init writes those; `[fleet.sites]` and
/// `[fleet.update]` are the profile's), then the whole citrusd.toml of a sample host through
/// citrusd's own validation, so that every app, job and site template is checked as on the host.
pub fn check_host_profile(text: &str, path: &std::path::Path) -> Result<(), String> {
    check_delimiters(text)?;
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    if table.contains_key("daemon") {
        return Err(
            "[daemon] is written by cloud-init (state_dir and log_dir as the systemd unit makes them); remove it from the profile".into(),
        );
    }
    if let Some(fleet) = table.get("fleet") {
        let keys: Vec<&String> = match fleet.as_table() {
            Some(fleet) => fleet
                .keys()
                .filter(|k| !matches!(k.as_str(), "sites" | "update"))
                .collect(),
            None => return Err("`fleet` must be a table ([fleet.sites], [fleet.update])".into()),
        };
        if let Some(key) = keys.first() {
            return Err(format!(
                "[fleet] {key} is written by cloud-init for each host; the profile may hold only [fleet.sites] and [fleet.update]"
            ));
        }
    }
    let sample = CloudInit {
        engine_url: "wss://engine.example.com/agent",
        agent_id: "00000000-0000-4000-8000-000000000000",
        enroll_token: "sample",
        citrusd_url: "https://engine.example.com/releases/sample",
        citrusd_sha256: "",
        status_interval: Duration::from_secs(60),
        host_profile: text,
    };
    crate::config::Config::parse(&citrusd_config(&sample), path, None)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// `SCHEME://HOST[:PORT][/PATH][?QUERY]` with one of `schemes`, in characters that are inert in
/// shell quotes, heredocs and TOML strings (no quotes, spaces, `$`, backticks, `\`, `;`, `@`).
fn check_url(url: &str, schemes: &[&str]) -> Result<(), String> {
    let listed: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
    let expected = format!("expected a {} URL", listed.join(" or "));
    if url.len() > 2048 {
        return Err(format!("the URL is {} bytes long; at most 2048", url.len()));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("{url:?} is not a URL; {expected}"));
    };
    if !schemes.contains(&scheme) {
        return Err(format!("unsupported scheme in {url:?}; {expected}"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~:/?&=%+,[]".contains(c);
    if let Some(c) = url.chars().find(|&c| !allowed(c)) {
        return Err(format!(
            "{url:?} contains {c:?}; use only letters, digits and - . _ ~ : / ? & = % + , [ ] \
             (percent-encode anything else)"
        ));
    }
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("{url:?} has no host"));
    }
    Ok(())
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, hex digits of either case.
fn check_uuid(id: &str) -> Result<(), String> {
    let groups: Vec<&str> = id.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let hex = groups
        .iter()
        .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
    match lengths == [8, 4, 4, 4, 12] && hex {
        true => Ok(()),
        false => Err(format!(
            "{id:?} is not a UUID (expected e.g. \"7c4f5a8e-2b1d-4e6f-9a3c-0d8e7f6a5b4c\")"
        )),
    }
}

/// 1 to 256 of `[A-Za-z0-9_-]`. Messages never show the token.
fn check_token(token: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if token.is_empty() {
        Err("the token is empty".to_owned())
    } else if token.len() > 256 {
        Err(format!(
            "the token is {} characters; at most 256",
            token.len()
        ))
    } else if !token.chars().all(allowed) {
        Err("the token may only contain letters, digits, `_` and `-`".to_owned())
    } else {
        Ok(())
    }
}

/// 64 hex digits.
fn check_sha256(sha: &str) -> Result<(), String> {
    match sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()) {
        true => Ok(()),
        false => Err(format!(
            "{sha:?} is not a SHA-256 (64 hex digits, as `sha256sum` prints)"
        )),
    }
}

/// `template` with each `{{NAME}}` of `values` replaced, in one pass (a value is never scanned
/// for placeholders). Unknown placeholders stay as written.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 4096);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            rest = &rest[start..];
            break;
        };
        let name = &after[..end];
        match values.iter().find(|(known, _)| *known == name) {
            Some((_, value)) => out.push_str(value),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    const TOKEN: &str = "enr_Q8v2-kT9_zX4mW7pL3nR6sY1";
    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn params() -> CloudInit<'static> {
        CloudInit {
            engine_url: "wss://engine.example.com/agent",
            agent_id: "7c4f5a8e-2b1d-4e6f-9a3c-0d8e7f6a5b4c",
            enroll_token: TOKEN,
            citrusd_url: "https://releases.example.com/citrusd-x86_64",
            citrusd_sha256: SHA,
            status_interval: Duration::from_secs(60),
            host_profile: "",
        }
    }

    /// The text between the line `<<'DELIM'` ends and the line `DELIM`.
    fn heredoc<'a>(script: &'a str, opener: &str, delim: &str) -> (usize, &'a str) {
        let start = script.find(opener).expect(opener) + opener.len();
        let len = script[start..].find(&format!("\n{delim}\n")).expect(delim);
        (start, &script[start..start + len + 1])
    }

    #[test]
    fn the_script_is_valid_bash() {
        let script = render(&params()).unwrap();
        let path = std::env::temp_dir().join(format!("citrus-user-data-{}.sh", std::process::id()));
        std::fs::write(&path, &script).unwrap();
        let checked = Command::new("bash").arg("-n").arg(&path).output();
        let _ = std::fs::remove_file(&path);
        let checked = checked.expect("bash is needed for this test");
        assert!(
            checked.status.success(),
            "bash -n: {}\n{script}",
            String::from_utf8_lossy(&checked.stderr)
        );
    }

    #[test]
    fn script_shape() {
        let script = render(&params()).unwrap();
        assert!(script.starts_with("#!/bin/bash\n"));
        assert!(!script.contains("{{"), "a placeholder is left:\n{script}");
        let lines: Vec<&str> = script.lines().map(str::trim).collect();
        let at = |line: &str| {
            lines
                .iter()
                .position(|l| *l == line)
                .unwrap_or_else(|| panic!("no line {line:?}"))
        };
        assert!(at("set -euo pipefail") < at("umask 077"));
        for xtrace in ["set -x", "set -o xtrace", "-x", "xtrace"] {
            let traced = |l: &&str| l.starts_with("set ") && l.contains(xtrace);
            assert!(!lines.iter().any(traced), "{xtrace}");
        }
        assert!(!script.contains("bash -x"));
        // The log exists with mode 0600 before the first write into it.
        let created = at(r#"install -m 600 /dev/null "$LOG""#);
        let redirected = at(r#"exec >>"$LOG" 2>&1"#);
        assert!(at(r#"LOG="$ROOT/var/log/citrus-init.log""#) < created);
        assert!(created < redirected);
        assert!(lines[..redirected].iter().all(|l| !l.starts_with("log ")));
        // Download, check, install, in that order; a mismatch stops the script.
        let curl = lines
            .iter()
            .position(|l| l.starts_with("curl -fsSL"))
            .unwrap();
        assert!(lines[curl].contains("--retry 5"));
        let check = lines
            .iter()
            .position(|l| l.contains("sha256sum -c"))
            .unwrap();
        let install = at(r#"install -m 755 "$WORK/citrusd" "$ROOT/usr/local/bin/citrusd""#);
        assert!(redirected < curl && curl < check && check < install);
        assert!(lines[check..install]
            .iter()
            .any(|l| l.contains("checksum mismatch")));
        assert!(lines[check..install].contains(&"exit 1"));
        let (_, sums) = heredoc(&script, "<<'CITRUS_SHA_EOF'\n", "CITRUS_SHA_EOF");
        assert_eq!(sums, format!("{SHA}  citrusd\n"));
        // The config is 0600 before it is written; the unit is the project's.
        assert!(
            at(r#"install -m 600 /dev/null "$ROOT/etc/citrus/citrusd.toml""#)
                < at(r#"cat > "$ROOT/etc/citrus/citrusd.toml" <<'CITRUS_EOF'"#)
        );
        let (_, unit) = heredoc(
            &script,
            "cat > \"$ROOT/etc/systemd/system/citrusd.service\" <<'CITRUS_UNIT_EOF'\n",
            "CITRUS_UNIT_EOF",
        );
        assert_eq!(unit, SERVICE);
        let start = at("systemctl enable --now citrusd");
        assert!(at("systemctl daemon-reload") < start);
        assert!(start < at(r#"step "done""#));
        assert!(script.contains("trap finish EXIT"));
    }

    #[test]
    fn the_token_is_only_in_the_config_heredoc() {
        let script = render(&params()).unwrap();
        assert_eq!(script.matches(TOKEN).count(), 1);
        let (start, config) = heredoc(
            &script,
            "cat > \"$ROOT/etc/citrus/citrusd.toml\" <<'CITRUS_EOF'\n",
            "CITRUS_EOF",
        );
        assert_eq!(config, citrusd_config(&params()));
        let at = script.find(TOKEN).unwrap();
        assert!((start..start + config.len()).contains(&at));
        let line = script.lines().find(|l| l.contains(TOKEN)).unwrap();
        assert_eq!(line, format!("enroll_token = \"{TOKEN}\""));
        assert!(!format!("{:?}", params()).contains(TOKEN));
    }

    #[test]
    fn heredoc_delimiters_cannot_close_early() {
        let config = citrusd_config(&params());
        for delim in ["CITRUS_EOF", "CITRUS_UNIT_EOF", "CITRUS_SHA_EOF"] {
            assert!(!SERVICE.lines().any(|l| l.trim() == delim), "{delim}");
            assert!(!config.lines().any(|l| l.trim() == delim), "{delim}");
        }
    }

    #[test]
    fn the_config_is_what_citrusd_reads() {
        let config: toml::Table = toml::from_str(&citrusd_config(&params())).unwrap();
        let keys = |table: &toml::Table| table.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&config), ["daemon", "fleet"]);
        let daemon = config["daemon"].as_table().unwrap();
        assert_eq!(daemon["state_dir"].as_str(), Some("/var/lib/citrus"));
        assert_eq!(daemon["log_dir"].as_str(), Some("/var/log/citrus"));
        let fleet = config["fleet"].as_table().unwrap();
        let mut written = keys(fleet);
        written.sort();
        assert_eq!(
            written,
            [
                "agent_id",
                "engine_url",
                "enroll_token",
                "key_file",
                "status_interval"
            ]
        );
        let p = params();
        assert_eq!(fleet["engine_url"].as_str(), Some(p.engine_url));
        assert_eq!(fleet["agent_id"].as_str(), Some(p.agent_id));
        assert_eq!(fleet["key_file"].as_str(), Some("/etc/citrus/agent.key"));
        assert_eq!(fleet["enroll_token"].as_str(), Some(TOKEN));
        assert_eq!(fleet["status_interval"].as_str(), Some("1m"));
        let every_10s = CloudInit {
            status_interval: Duration::from_secs(10),
            ..p
        };
        let config: toml::Table = toml::from_str(&citrusd_config(&every_10s)).unwrap();
        assert_eq!(config["fleet"]["status_interval"].as_str(), Some("10s"));
    }

    #[test]
    fn plain_ws_and_ports_are_fine() {
        let p = CloudInit {
            engine_url: "ws://10.0.0.5:8080/agent",
            citrusd_url: "http://[::1]:8000/dl/citrusd?v=1.2.0&arch=x86_64",
            citrusd_sha256: &SHA.to_ascii_uppercase(),
            ..params()
        };
        let script = render(&p).unwrap();
        assert!(script.contains(&format!("{SHA}  citrusd")));
        assert!(script.contains("'http://[::1]:8000/dl/citrusd?v=1.2.0&arch=x86_64'"));
    }

    #[test]
    fn hostile_values_are_refused() {
        let base = params();
        let not_hex = SHA.replace('9', "g");
        let cases: Vec<(CloudInit, &str)> = vec![
            (
                CloudInit {
                    engine_url: "a.com; rm -rf /",
                    ..base
                },
                "engine_url",
            ),
            (
                CloudInit {
                    engine_url: "wss://a.com; rm -rf /",
                    ..base
                },
                "engine_url",
            ),
            (
                CloudInit {
                    engine_url: "wss://e.com/$(reboot)",
                    ..base
                },
                "engine_url",
            ),
            (
                CloudInit {
                    engine_url: "wss://e.com/`id`",
                    ..base
                },
                "engine_url",
            ),
            (
                CloudInit {
                    engine_url: "wss://e.com/\nreboot",
                    ..base
                },
                "engine_url",
            ),
            (
                CloudInit {
                    engine_url: "https://e.com/agent",
                    ..base
                },
                "engine_url",
            ),
            (
                CloudInit {
                    engine_url: "wss://",
                    ..base
                },
                "engine_url",
            ),
            (
                CloudInit {
                    engine_url: "wss://u:p@e.com/agent",
                    ..base
                },
                "engine_url",
            ),
            (
                CloudInit {
                    agent_id: "web-1",
                    ..base
                },
                "agent_id",
            ),
            (
                CloudInit {
                    agent_id: "7c4f5a8e-2b1d-4e6f-9a3c-0d8e7f6a5b4c\n",
                    ..base
                },
                "agent_id",
            ),
            (
                CloudInit {
                    enroll_token: "abc'def",
                    ..base
                },
                "enroll_token",
            ),
            (
                CloudInit {
                    enroll_token: "abc\"def",
                    ..base
                },
                "enroll_token",
            ),
            (
                CloudInit {
                    enroll_token: "abc\nCITRUS_EOF\nreboot",
                    ..base
                },
                "enroll_token",
            ),
            (
                CloudInit {
                    enroll_token: "",
                    ..base
                },
                "enroll_token",
            ),
            (
                CloudInit {
                    citrusd_url: "https://r.example.com/$(id)",
                    ..base
                },
                "citrusd_url",
            ),
            (
                CloudInit {
                    citrusd_url: "https://r.example.com/a\nb",
                    ..base
                },
                "citrusd_url",
            ),
            (
                CloudInit {
                    citrusd_url: "https://r.example.com/a'b",
                    ..base
                },
                "citrusd_url",
            ),
            (
                CloudInit {
                    citrusd_url: "file:///etc/shadow",
                    ..base
                },
                "citrusd_url",
            ),
            (
                CloudInit {
                    citrusd_url: "wss://r.example.com/citrusd",
                    ..base
                },
                "citrusd_url",
            ),
            (
                CloudInit {
                    citrusd_sha256: "9f86d081",
                    ..base
                },
                "citrusd_sha256",
            ),
            (
                CloudInit {
                    citrusd_sha256: &not_hex,
                    ..base
                },
                "citrusd_sha256",
            ),
        ];
        for (p, field) in cases {
            let err = render(&p).unwrap_err();
            assert_eq!(err.field, field, "{p:?}: {err}");
            let shown = err.to_string();
            assert!(shown.starts_with(&format!("cannot render cloud-init: invalid {field}: ")));
            assert!(!shown.contains('\n'), "{shown}");
            if field == "enroll_token" {
                assert!(!shown.contains("abc"), "{shown}");
            }
        }
    }

    const PROFILE: &str = r#"[fleet.sites]
create = ["ee", "site", "create", "{domain}"]

[jobs.health]
schedule = "*/5 * * * *"
kind = "health"

[apps.node-exporter]
command = ["/usr/local/bin/node_exporter"]
"#;

    #[test]
    fn the_host_profile_comes_first_and_is_read_as_citrusd_reads_it() {
        let path = std::path::Path::new("/etc/citrus/host.toml");
        check_host_profile(PROFILE, path).unwrap();
        let p = CloudInit {
            host_profile: PROFILE,
            ..params()
        };
        let config = citrusd_config(&p);
        assert!(config.starts_with(PROFILE), "{config}");
        let table: toml::Table = toml::from_str(&config).unwrap();
        assert_eq!(
            table["fleet"]["sites"]["create"][3].as_str(),
            Some("{domain}")
        );
        assert_eq!(table["fleet"]["agent_id"].as_str(), Some(p.agent_id));
        assert!(table["apps"]["node-exporter"].is_table());
        let script = render(&p).unwrap();
        assert!(script.contains(PROFILE));

        let refused = |text: &str, part: &str| {
            let why = check_host_profile(text, path).unwrap_err();
            assert!(why.contains(part), "{text:?}: {why:?} lacks {part:?}");
        };
        refused(
            "[daemon]\nstate_dir = \"/tmp\"\n",
            "[daemon] is written by cloud-init",
        );
        refused(
            "[fleet]\nagent_id = \"x\"\n",
            "[fleet] agent_id is written by cloud-init",
        );
        refused("[apps.web]\ncommand = []\n", "host.toml:");
        refused(
            "[jobs.x]\nschedule = \"61 * * * *\"\nkind = \"health\"\n",
            "host.toml:2",
        );
        refused(
            "[fleet.sites]\ncreate = [\"rm -rf {domain}\", \"x\"]\nbogus = 1\n",
            "bogus",
        );
        refused(
            "[apps.a]\ncommand = [\"x\"]\nenv = { A = \"\"\"\nCITRUS_EOF\nreboot\"\"\" }\n",
            "heredoc delimiter",
        );
        let p = CloudInit {
            host_profile: "x = 1\nCITRUS_EOF\nreboot\n",
            ..params()
        };
        assert_eq!(render(&p).unwrap_err().field, "host_profile");
    }

    #[test]
    fn the_shipped_host_profile_is_valid() {
        let text = include_str!("../../config/host-profile.toml");
        check_host_profile(text, std::path::Path::new("config/host-profile.toml")).unwrap();
    }

    #[test]
    fn filling() {
        let filled = fill("a{{X}}b{{Y}}c{{Z}}d{{", &[("X", "{{Y}}"), ("Y", "1")]);
        assert_eq!(filled, "a{{Y}}b1c{{Z}}d{{");
    }
}
