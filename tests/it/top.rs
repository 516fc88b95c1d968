//! `citrusctl top` in a real pseudo-terminal: a private tmux server (its own socket in a temp
//! dir, a 120x40 window) runs a shell that runs top against a real citrusd; the tests read the
//! screen with `capture-pane` and press keys with `send-keys`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use citrus::control::AppState;

use crate::support::{succeeded, wait_for, Daemon, CITRUSCTL, DEADLINE};

/// The shell prompt in the pane, to see the shell back after top exits.
const PROMPT: &str = "top-shell$";

/// A tmux server of its own, one session `top` running `sh`.
struct Tmux {
    _dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Tmux {
    fn start() -> Tmux {
        let dir = tempfile::Builder::new()
            .prefix("citrus-tmux")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("sock");
        let t = Tmux { _dir: dir, socket };
        t.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "120",
            "-y",
            "40",
            "sh",
        ]);
        // dash sets its own prompt for root whatever the environment says: set it here.
        t.type_line(&format!("PS1='{PROMPT} '"));
        t.wait_screen("the shell prompt", |s| s.contains(PROMPT));
        t
    }

    /// Runs a tmux command on this server; returns its stdout.
    #[track_caller]
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .env("TERM", "xterm-256color")
            .env_remove("TMUX")
            .stdin(Stdio::null())
            .output()
            .expect("tmux (the tests of `citrusctl top` need it: apt-get install tmux)");
        succeeded(out, &format!("tmux {args:?}"))
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    fn format(&self, f: &str) -> String {
        self.run(&["display-message", "-p", "-t", "top", f])
            .trim()
            .to_string()
    }

    /// Types `text` literally, then Enter.
    fn type_line(&self, text: &str) {
        self.run(&["send-keys", "-t", "top", "-l", text]);
        self.keys(&["Enter"]);
    }

    /// Presses keys by tmux name (`Down`, `Escape`, `C-c`, `r`).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    #[track_caller]
    fn wait_screen(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        wait_for(what, DEADLINE, || {
            let s = self.screen();
            if check(&s) {
                Ok(s)
            } else {
                Err(format!("screen:\n{s}"))
            }
        })
    }

    /// Starts `citrusctl top` on `socket` in the pane and waits for its full-screen view.
    fn top(&self, socket: &Path) {
        self.type_line(&format!("{CITRUSCTL} --socket {} top", socket.display()));
        wait_for("top on the alternate screen", DEADLINE, || {
            match self.format("#{alternate_on}").as_str() {
                "1" => Ok(()),
                other => Err(format!("alternate_on={other}; screen:\n{}", self.screen())),
            }
        });
    }

    /// Waits for top to have exited and the terminal to be as before: the normal screen, the
    /// shell in the foreground, its prompt on the last line.
    #[track_caller]
    fn wait_restored(&self) {
        wait_for("the shell back on the normal screen", DEADLINE, || {
            let alt = self.format("#{alternate_on}");
            let cmd = self.format("#{pane_current_command}");
            let screen = self.screen();
            let last = screen.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            if alt == "0" && cmd == "sh" && last.trim() == PROMPT {
                Ok(())
            } else {
                Err(format!(
                    "alternate_on={alt} command={cmd}; screen:\n{screen}"
                ))
            }
        });
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The screen line of `app`'s first instance.
fn line_of<'a>(screen: &'a str, app: &str) -> Option<&'a str> {
    screen.lines().find(|l| {
        l.split_whitespace()
            .any(|w| w == app || w == format!("▶{app}"))
    })
}

const APPS: &str = r#"
[apps.alpha]
command = ["sh", "-c", "while :; do sleep 1; done"]

[apps.beta]
command = ["sh", "-c", "echo beta-says-hello; while :; do sleep 1; done"]
"#;

#[test]
fn select_restart_logs_daemon_gone_and_back_quit() {
    let mut d = Daemon::start(APPS);
    d.wait_state("alpha", AppState::Online);
    d.wait_state("beta", AppState::Online);
    let tmux = Tmux::start();
    tmux.top(&d.socket);
    tmux.wait_screen("both apps online, with their history", |s| {
        let online = |app| line_of(s, app).is_some_and(|l| l.contains("online"));
        online("alpha") && online("beta") && s.contains("HISTORY") && s.contains('▁')
    });

    // Down selects beta; `r` asks, `y` restarts it.
    tmux.keys(&["Down"]);
    tmux.wait_screen("beta selected", |s| {
        line_of(s, "beta").is_some_and(|l| l.contains('▶'))
    });
    tmux.keys(&["r"]);
    tmux.wait_screen("the confirmation", |s| s.contains("Restart beta"));
    assert_eq!(
        d.app("beta")[0].restarts,
        0,
        "nothing before the confirmation"
    );
    tmux.keys(&["y"]);
    tmux.wait_screen("the restart done", |s| s.contains("restarted beta"));
    assert_eq!(d.app("beta")[0].restarts, 1);
    assert_eq!(d.app("alpha")[0].restarts, 0, "only the selected app");
    tmux.wait_screen("beta's restart count on screen", |s| {
        line_of(s, "beta").is_some_and(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // ▶beta INST STATE PID UPTIME RESTARTS …
            cols.get(5) == Some(&"1") && cols.get(2) == Some(&"online")
        })
    });

    // `l` shows what beta printed (twice by now: before and after the restart).
    tmux.keys(&["l"]);
    tmux.wait_screen("beta's log", |s| {
        s.contains("log of beta") && s.matches("beta-says-hello").count() >= 2
    });
    tmux.keys(&["Escape"]);
    tmux.wait_screen("the table again", |s| s.contains("RESTARTS"));

    // The daemon goes away: top says so and waits; it comes back: top shows it again.
    d.signal(nix::sys::signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
    tmux.wait_screen("the daemon-gone message", |s| {
        s.contains("citrusd went away") && s.contains("waiting for it to come back")
    });
    assert_eq!(tmux.format("#{alternate_on}"), "1", "top is still running");
    d.spawn();
    d.wait_ready();
    tmux.wait_screen("the apps back", |s| {
        !s.contains("went away")
            && line_of(s, "alpha").is_some_and(|l| l.contains("online"))
            && line_of(s, "beta").is_some_and(|l| l.contains("online"))
    });

    tmux.keys(&["q"]);
    tmux.wait_restored();
}

#[test]
fn ctrl_c_restores_the_terminal_even_with_no_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("none.sock");
    let tmux = Tmux::start();
    tmux.top(&socket);
    tmux.wait_screen("the not-answering message", |s| {
        s.contains("citrusd went away") && s.contains(&socket.display().to_string())
    });
    tmux.keys(&["C-c"]);
    tmux.wait_restored();
}

#[test]
fn bad_interval_and_no_terminal_are_refused() {
    let run = |args: &[&str]| {
        Command::new(CITRUSCTL)
            .args(["--socket", "/nonexistent/citrus.sock"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("citrusctl")
    };
    let out = run(&["top", "--interval", "200ms"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--interval \"200ms\" is too short"), "{err}");
    let out = run(&["top", "--interval", "often"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration"));
    let out = run(&["top"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("top needs a terminal"), "{err}");
}
