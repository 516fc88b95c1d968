//! Deployments with the real binaries: releases from a directory, a git repository and an
//! archive, the atomic `current` switch, shared paths, retention, rollback (by hand and after a
//! failed health check), a failed build, crash resume at each phase, self-healing symlinks and
//! the bad input the issue lists.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use citrus::control::AppState;
use citrus::deploy::{Deployment, Phase};

use crate::support::{free_port, git, wait_for, Daemon, Run, DEADLINE};

/// The app every test deploys: serves `version.txt` of its working directory on `/`, and on
/// `/health` answers 200 unless a `broken` file is in the release (500), or `$HEALTH_GATE` is set
/// and the test's `healthy` file (three levels up from the release) is missing (503). SIGTERM
/// stops it at once.
const SERVER: &str = r#"
import http.server, os, signal, sys
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            gate = os.environ.get("HEALTH_GATE") and not os.path.exists("../../../healthy")
            code = 500 if os.path.exists("broken") else 503 if gate else 200
            body = b"health"
        else:
            code, body = 200, open("version.txt", "rb").read()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// One test's world: a source directory to deploy from, a deploy root, a port.
struct Site {
    daemon: Daemon,
    port: u16,
}

impl Site {
    fn dir(&self) -> &Path {
        self.daemon.dir.path()
    }

    fn source(&self) -> PathBuf {
        self.dir().join("src")
    }

    fn root(&self) -> PathBuf {
        self.dir().join("www")
    }

    /// Writes version `v` into the source tree.
    fn version(&self, v: &str) {
        fs::write(self.source().join("version.txt"), v).unwrap();
    }

    fn ctl(&self, args: &[&str]) -> Run {
        self.daemon.ctl(args)
    }

    /// `GET /` on the app.
    fn get(&self, path: &str) -> Result<String, String> {
        http_get(self.port, path)
    }

    fn current(&self) -> Option<String> {
        let target = fs::read_link(self.root().join("current")).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }

    fn deployments(&self) -> Vec<Deployment> {
        let r = self.ctl(&["--json", "deployments", "web"]);
        r.code(0);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        serde_json::from_value(v["deployments"].clone()).unwrap()
    }

    /// Waits until the newest deployment is in `phase`.
    #[track_caller]
    fn wait_phase(&self, phase: Phase) -> Deployment {
        wait_for(
            &format!("the deployment to reach {phase}"),
            DEADLINE,
            || {
                let newest = self.deployments().into_iter().next();
                match newest {
                    Some(d) if d.phase == phase => Ok(d),
                    other => Err(format!("{other:?}")),
                }
            },
        )
    }

    fn wait_serving(&self, want: &str) {
        wait_for(
            &format!("the app to serve {want:?}"),
            DEADLINE,
            || match self.get("/") {
                Ok(body) if body == want => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
}

/// A plain HTTP/1.0 GET on 127.0.0.1: the body, or why not.
fn http_get(port: u16, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let (head, body) = out.split_once("\r\n\r\n").ok_or("no header end")?;
    match head.starts_with("HTTP/1.0 200") {
        true => Ok(body.to_owned()),
        false => Err(head.lines().next().unwrap_or_default().to_owned()),
    }
}

/// A daemon with app `web` deploying from `src/` (or `source`, a TOML inline table) into `www/`,
/// with `extra` lines added to `[apps.web.deploy]` and `app_extra` to `[apps.web]` (`PORT` in
/// them is the app's port).
fn site(source: Option<&str>, extra: &str, app_extra: &str) -> Site {
    let port = free_port();
    let (extra, app_extra) = (
        extra.replace("PORT", &port.to_string()),
        app_extra.replace("PORT", &port.to_string()),
    );
    let mut daemon = Daemon::prepare("", &[]);
    let dir = daemon.dir.path().to_path_buf();
    let src = dir.join("src");
    fs::create_dir_all(src.join("storage")).unwrap();
    fs::write(src.join("server.py"), SERVER).unwrap();
    fs::write(src.join("version.txt"), "v1").unwrap();
    fs::write(src.join("storage/seed"), "seeded").unwrap();
    let source = source.unwrap_or(r#"{ path = "src" }"#);
    let config = format!(
        r#"[daemon]
state_dir = "state"
log_dir = "logs"

[apps.web]
command = ["python3", "server.py"]
env = {{ PORT = "{port}" }}
kill_timeout = "2s"
{app_extra}

[apps.web.deploy]
root = "www"
source = {source}
shared = ["storage"]
{extra}

[jobs.reconcile]
schedule = "0 * * * *"
kind = "deploy-reconcile"
"#
    );
    fs::write(&daemon.config, config).unwrap();
    daemon.spawn();
    daemon.wait_ready();
    Site { daemon, port }
}

#[test]
fn path_source_deploys_switch_share_list_roll_back_and_prune() {
    let s = site(
        None,
        "keep = 2\nbuild = [\"sh\", \"-c\", \"echo built > built.txt; echo building $CITRUS_APP\"]",
        "",
    );
    // No release yet: the app cannot start in www/current.
    s.daemon.wait_state("web", AppState::Errored);

    let first = s.ctl(&["deploy", "web", "--follow"]);
    first.code(0).stdout_has(&[
        "queued",
        "pulling_source",
        "building",
        "copying_files",
        "creating_symlinks",
        "restarting",
        "health_check",
        "-> completed",
        "completed in",
    ]);
    s.wait_serving("v1");
    let release1 = s.current().expect("current");
    let rel1 = s.root().join("releases").join(&release1);
    assert_eq!(
        fs::read_to_string(rel1.join("built.txt")).unwrap(),
        "built\n"
    );
    // The shared path is seeded from the first release and linked into it.
    assert_eq!(
        fs::read_link(rel1.join("storage")).unwrap(),
        s.root().join("shared/storage")
    );
    assert_eq!(
        fs::read_to_string(s.root().join("shared/storage/seed")).unwrap(),
        "seeded"
    );
    assert_eq!(
        fs::read_link(s.root().join("current")).unwrap(),
        Path::new("releases").join(&release1)
    );
    let status = s.daemon.app("web");
    assert_eq!(status[0].release.as_deref(), Some(release1.as_str()));

    s.version("v2");
    s.ctl(&["deploy", "web"])
        .code(0)
        .stdout_has(&["completed in"]);
    s.wait_serving("v2");
    let release2 = s.current().unwrap();
    assert!(release2 > release1, "{release2} after {release1}");

    // deployments --json: newest first, each with the fields the issue names.
    let r = s.ctl(&["--json", "deployments", "web"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let list = v["deployments"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], release2.as_str());
    for d in list {
        for key in [
            "id",
            "ref",
            "commit",
            "phase",
            "started_ms",
            "ended_ms",
            "error",
            "output",
        ] {
            assert!(d.get(key).is_some(), "{key} in {d}");
        }
        assert_eq!(d["phase"], "completed");
    }
    s.ctl(&["deployments", "web"])
        .code(0)
        .stdout_has(&["ID", "PHASE", "DURATION", &release1, &release2]);

    // Rollback to the previous release, then forward again with --to.
    s.ctl(&["rollback", "web"]).code(0).stdout_has(&[&release1]);
    assert_eq!(s.current().as_deref(), Some(release1.as_str()));
    s.wait_serving("v1");
    s.ctl(&["rollback", "web", "--to", &release2]).code(0);
    s.wait_serving("v2");

    // Retention (keep = 2): older completed releases go; current and the previous stay.
    for v in ["v3", "v4"] {
        s.version(v);
        s.ctl(&["deploy", "web"]).code(0);
    }
    s.wait_serving("v4");
    let left: Vec<String> = fs::read_dir(s.root().join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&s.current().unwrap()));
    assert!(!left.contains(&release1), "{left:?}");
    // The app's data in shared/ survived every switch.
    assert_eq!(
        fs::read_to_string(s.root().join("shared/storage/seed")).unwrap(),
        "seeded"
    );
}

#[test]
fn a_failed_build_leaves_current_and_the_app_untouched() {
    let s = site(None, "build = [\"sh\", \"build.sh\"]", "");
    fs::write(s.source().join("build.sh"), "echo fine").unwrap();
    s.ctl(&["deploy", "web"]).code(0);
    s.wait_serving("v1");
    let before = s.current().unwrap();
    let pid = s.daemon.app("web")[0].pid;

    fs::write(
        s.source().join("build.sh"),
        "echo compiling; echo 'error: boom' >&2; exit 3",
    )
    .unwrap();
    s.version("v2");
    let r = s.ctl(&["deploy", "web", "--follow"]);
    r.code(1)
        .stderr_has(&["failed", "exited with code 3", "error: boom", "untouched"]);
    assert_eq!(s.current().as_deref(), Some(before.as_str()));
    assert_eq!(s.daemon.app("web")[0].pid, pid, "the app was not restarted");
    s.wait_serving("v1");
    let failed = &s.deployments()[0];
    assert_eq!(failed.phase, Phase::Failed);
    assert!(failed.output.contains("error: boom"), "{}", failed.output);
    // A failed release's directory is removed at once.
    assert!(!s.root().join("releases").join(&failed.id).exists());

    // A build program that does not exist: failed with the OS error, nothing switched.
    fs::write(
        &s.daemon.config,
        fs::read_to_string(&s.daemon.config)
            .unwrap()
            .replace("[\"sh\", \"build.sh\"]", "[\"/nonexistent/build\"]"),
    )
    .unwrap();
    s.ctl(&["reload-config"]).code(0);
    s.ctl(&["deploy", "web"])
        .code(1)
        .stderr_has(&["cannot start", "/nonexistent/build"]);
    assert_eq!(s.current().as_deref(), Some(before.as_str()));
}

#[test]
fn a_release_that_fails_its_health_check_is_rolled_back() {
    let s = site(
        None,
        "health = { http = \"http://127.0.0.1:PORT/health\", timeout = \"3s\" }",
        "",
    );
    s.ctl(&["deploy", "web"]).code(0);
    s.wait_serving("v1");
    let good = s.current().unwrap();

    s.version("v2");
    fs::write(s.source().join("broken"), "").unwrap();
    let r = s.ctl(&["deploy", "web", "--follow"]);
    r.code(1)
        .stderr_has(&["rolled_back", "health check did not pass", "500", &good]);
    assert_eq!(s.current().as_deref(), Some(good.as_str()));
    s.wait_serving("v1");
    let d = &s.deployments()[0];
    assert_eq!(d.phase, Phase::RolledBack);
    assert_eq!(d.previous.as_deref(), Some(good.as_str()));
    assert!(
        d.error
            .as_deref()
            .unwrap()
            .contains("probe http://127.0.0.1"),
        "{d:?}"
    );
}

#[test]
fn git_source_deploys_a_branch_a_tag_and_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    fs::write(repo.join("server.py"), SERVER).unwrap();
    fs::write(repo.join("version.txt"), "g1").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "one"]);
    git(&repo, &["tag", "v1"]);
    let first = git(&repo, &["rev-parse", "HEAD"]).trim().to_owned();
    fs::write(repo.join("version.txt"), "g2").unwrap();
    git(&repo, &["commit", "-qam", "two"]);
    let second = git(&repo, &["rev-parse", "HEAD"]).trim().to_owned();

    let source = format!(
        "{{ git = \"file://{}\", branch = \"main\" }}",
        repo.display()
    );
    let s = site(Some(&source), "", "");
    s.ctl(&["deploy", "web"])
        .code(0)
        .stdout_has(&[&second[..12]]);
    s.wait_serving("g2");
    let d = &s.deployments()[0];
    assert_eq!(d.commit.as_deref(), Some(second.as_str()));
    assert_eq!(d.git_ref.as_deref(), Some("main"));
    // No .git in a release.
    assert!(!s.root().join("current/.git").exists());

    s.ctl(&["deploy", "web", "--ref", "v1"]).code(0);
    s.wait_serving("g1");
    assert_eq!(s.deployments()[0].commit.as_deref(), Some(first.as_str()));
    s.ctl(&["deploy", "web", "--ref", &second[..10]]).code(0);
    s.wait_serving("g2");

    // Refs that could be options or ranges are refused before anything runs.
    for bad in ["-x", "--upload-pack=sh", "a..b", "a:b", "a b"] {
        s.ctl(&["deploy", "web", &format!("--ref={bad}")])
            .code(2)
            .stderr_has(&["invalid ref"]);
    }
    s.ctl(&["deploy", "web", "--ref", "nope"])
        .code(1)
        .stderr_has(&["ref nope not found"]);
    s.wait_serving("g2");
}

#[test]
fn bad_requests_are_refused_with_one_clear_message() {
    let s = site(
        None,
        "build = [\"sh\", \"-c\", \"while [ ! -e ../../../go ]; do sleep 0.05; done\"]",
        "",
    );
    // Concurrent deploys of one app: the second is refused while the first builds.
    let r = s.ctl(&["--json", "deploy", "web", "--ref", "x"]);
    r.code(2).stderr_has(&["--ref is for git sources"]);
    let first = std::thread::spawn({
        let socket = s.daemon.socket.clone();
        move || crate::support::ctl_at(&socket, &["deploy", "web"])
    });
    s.wait_phase(Phase::Building);
    s.ctl(&["deploy", "web"])
        .code(1)
        .stderr_has(&["already running", "building"]);
    fs::write(s.dir().join("go"), "").unwrap();
    first.join().unwrap().code(0);

    s.ctl(&["deploy", "nope"])
        .code(1)
        .stderr_has(&["no app named \"nope\""]);
    s.ctl(&["rollback", "web"])
        .code(1)
        .stderr_has(&["no previous release to roll back to"]);
    s.ctl(&["rollback", "web", "--to", "../../etc"])
        .code(2)
        .stderr_has(&["invalid release id"]);
    s.ctl(&["rollback", "web", "--to", "20200101T000000000Z"])
        .code(1)
        .stderr_has(&["not a completed release"]);

    // An app without [deploy].
    let plain = Daemon::start("[apps.a]\ncommand = [\"sleep\", \"60\"]\n");
    plain
        .ctl(&["deploy", "a"])
        .code(2)
        .stderr_has(&["has no [apps.a.deploy] section"]);
    plain.ctl(&["deployments", "a"]).code(2);
}

#[test]
fn a_vanished_source_or_an_unwritable_root_fails_with_the_reason() {
    let s = site(None, "", "");
    fs::remove_dir_all(s.source()).unwrap();
    s.ctl(&["deploy", "web"])
        .code(1)
        .stderr_has(&["source directory", "is missing"]);
    assert_eq!(s.current(), None);

    // The root cannot be made: a file stands where a directory must go.
    fs::write(s.dir().join("blocker"), "").unwrap();
    let text = fs::read_to_string(&s.daemon.config)
        .unwrap()
        .replace("root = \"www\"", "root = \"blocker/www\"");
    fs::write(&s.daemon.config, text).unwrap();
    s.ctl(&["reload-config"]).code(0);
    s.ctl(&["deploy", "web"])
        .code(1)
        .stderr_has(&["cannot create the release directory"]);
}

#[test]
fn reconcile_repairs_a_missing_dangling_or_wrong_current_and_shared_links() {
    let s = site(None, "", "");
    s.ctl(&["deploy", "web"]).code(0);
    s.version("v2");
    s.ctl(&["deploy", "web"]).code(0);
    s.wait_serving("v2");
    let newest = s.current().unwrap();
    let older = s.deployments()[1].id.clone();
    let current = s.root().join("current");

    s.ctl(&["job", "run", "reconcile"])
        .code(0)
        .stdout_has(&["checked 1, fixed 0, errors 0"]);

    // Missing: repaired (and the app restarted, since it could not have run from there).
    fs::remove_file(&current).unwrap();
    s.ctl(&["job", "run", "reconcile"])
        .code(1)
        .stdout_has(&["fixed 1", "current was missing"]);
    assert_eq!(s.current().as_deref(), Some(newest.as_str()));

    // Pointing at an older release.
    fs::remove_file(&current).unwrap();
    std::os::unix::fs::symlink(format!("releases/{older}"), &current).unwrap();
    s.ctl(&["job", "run", "reconcile"])
        .code(1)
        .stdout_has(&["fixed 1", &format!("pointed at {older}")]);
    assert_eq!(s.current().as_deref(), Some(newest.as_str()));

    // Dangling.
    fs::remove_file(&current).unwrap();
    std::os::unix::fs::symlink("releases/20200101T000000000Z", &current).unwrap();
    s.ctl(&["job", "run", "reconcile"])
        .stdout_has(&["dangling"]);
    assert_eq!(s.current().as_deref(), Some(newest.as_str()));

    // A shared link replaced by a directory.
    let link = s.root().join("releases").join(&newest).join("storage");
    fs::remove_file(&link).unwrap();
    fs::create_dir(&link).unwrap();
    s.ctl(&["job", "run", "reconcile"])
        .stdout_has(&["shared links repaired", "storage"]);
    assert_eq!(
        fs::read_link(&link).unwrap(),
        s.root().join("shared/storage")
    );
    s.ctl(&["job", "run", "reconcile"])
        .code(0)
        .stdout_has(&["fixed 0"]);
    s.wait_serving("v2");
}

/// A held phase, citrusd SIGKILLed there, started again: the deployment goes on from that phase
/// and completes once.
fn crash_and_resume(s: &mut Site, phase: Phase, release: impl FnOnce(&Site)) -> Deployment {
    let socket = s.daemon.socket.clone();
    let deploy = std::thread::spawn(move || crate::support::ctl_at(&socket, &["deploy", "web"]));
    let held = s.wait_phase(phase);
    s.daemon.kill9();
    if phase < Phase::CreatingSymlinks {
        assert_ne!(
            s.current(),
            Some(held.release.clone()),
            "a release not built yet is never live"
        );
    }
    // The client sees the daemon go away: the deploy did not end as far as it knows.
    deploy.join().unwrap().code(1);
    s.daemon.spawn();
    s.daemon.wait_ready();
    release(s);
    let done = s.wait_phase(Phase::Completed);
    assert_eq!(done.id, held.id);
    assert_eq!(done.resumed, 1, "{done:?}");
    let swaps = done
        .phases
        .iter()
        .filter(|p| p.phase == Phase::CreatingSymlinks)
        .count();
    assert_eq!(swaps, 1, "one switch: {:?}", done.phases);
    assert_eq!(s.current().as_deref(), Some(done.release.as_str()));
    done
}

#[test]
fn a_deployment_resumes_after_citrusd_is_killed_while_building() {
    let build = "echo start >> ../../../builds; while [ ! -e ../../../go ]; do sleep 0.05; done; echo done >> ../../../builds; echo built > built.txt";
    let mut s = site(None, &format!("build = [\"sh\", \"-c\", \"{build}\"]"), "");
    crash_and_resume(&mut s, Phase::Building, |s| {
        fs::write(s.dir().join("go"), "").unwrap()
    });
    s.wait_serving("v1");
    // The interrupted build was stopped with citrusd's processes and run again from a fresh
    // copy: it completed exactly once.
    let builds = fs::read_to_string(s.dir().join("builds")).unwrap();
    assert_eq!(builds.matches("done").count(), 1, "{builds}");
    assert!(s.root().join("current/built.txt").exists());
}

#[test]
fn a_deployment_resumes_after_citrusd_is_killed_while_the_source_blocks() {
    // The source is a pipe nobody writes yet: the fetch blocks on it.
    let fifo = tempfile::tempdir().unwrap();
    let pipe = fifo.path().join("upload.tar.gz");
    nix::unistd::mkfifo(&pipe, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let source = format!("{{ archive = \"{}\" }}", pipe.display());
    let mut s = site(Some(&source), "", "");
    // An archive of the source tree, fed into the pipe once citrusd is back.
    let tarball = fifo.path().join("ready.tar.gz");
    let out = std::process::Command::new("tar")
        .args(["-czf"])
        .arg(&tarball)
        .arg("-C")
        .arg(s.source())
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success());
    crash_and_resume(&mut s, Phase::PullingSource, |_| {
        let (pipe, tarball) = (pipe.clone(), tarball.clone());
        std::thread::spawn(move || fs::write(&pipe, fs::read(&tarball).unwrap()).unwrap());
    });
    s.wait_serving("v1");
}

#[test]
fn a_deployment_resumes_after_citrusd_is_killed_during_the_health_check() {
    let health = "health = { http = \"http://127.0.0.1:PORT/health\", timeout = \"30s\" }";
    let mut s = site(None, health, "env_file = \"gate.env\"");
    fs::write(s.dir().join("gate.env"), "HEALTH_GATE=1\n").unwrap();
    crash_and_resume(&mut s, Phase::HealthCheck, |s| {
        fs::write(s.dir().join("healthy"), "").unwrap()
    });
    s.wait_serving("v1");
}

#[test]
fn citrusd_killed_between_the_switch_and_the_journal_write_does_not_switch_twice() {
    let build = "echo start >> ../../../builds; while [ ! -e ../../../go ]; do sleep 0.05; done";
    let mut s = site(None, &format!("build = [\"sh\", \"-c\", \"{build}\"]"), "");
    fs::write(s.dir().join("go"), "").unwrap();
    s.ctl(&["deploy", "web"]).code(0);
    let first = s.current().unwrap();
    fs::remove_file(s.dir().join("go")).unwrap();

    // Hold the second deployment in its build and kill citrusd there.
    s.version("v2");
    let socket = s.daemon.socket.clone();
    let deploy = std::thread::spawn(move || crate::support::ctl_at(&socket, &["deploy", "web"]));
    let held = s.wait_phase(Phase::Building);
    s.daemon.kill9();
    deploy.join().unwrap();
    // Make the disk look exactly as at the instant between `rename(current)` and the journal
    // write that follows it: the build finished and was journalled, `previous` recorded,
    // `current` already renamed to the new release, the journal still at creating_symlinks.
    let journal = s
        .dir()
        .join(format!("state/deployments/web/{}.json", held.id));
    let mut d: Deployment = serde_json::from_slice(&fs::read(&journal).unwrap()).unwrap();
    d.enter(Phase::CopyingFiles, "built".into());
    d.previous = Some(first.clone());
    d.enter(Phase::CreatingSymlinks, String::new());
    fs::write(&journal, serde_json::to_vec(&d).unwrap()).unwrap();
    let release = s.root().join("releases").join(&held.id);
    fs::write(release.join("version.txt"), "v2").unwrap();
    let tmp = s.root().join("current.tmp");
    std::os::unix::fs::symlink(format!("releases/{}", held.id), &tmp).unwrap();
    fs::rename(&tmp, s.root().join("current")).unwrap();

    s.daemon.spawn();
    s.daemon.wait_ready();
    let done = s.wait_phase(Phase::Completed);
    assert_eq!(done.id, held.id);
    let switched = done
        .phases
        .iter()
        .find(|p| p.phase == Phase::CreatingSymlinks);
    assert!(switched.is_some());
    let out = &done
        .phases
        .iter()
        .find(|p| p.phase == Phase::CreatingSymlinks)
        .unwrap()
        .output;
    assert!(out.contains("already"), "no second switch: {out}");
    // The build was not run again after the crash (it had been journalled as done).
    let builds = fs::read_to_string(s.dir().join("builds")).unwrap();
    assert_eq!(
        builds.matches("start").count(),
        2,
        "one per deployment: {builds}"
    );
    assert_eq!(done.previous.as_deref(), Some(first.as_str()));
    s.wait_serving("v2");
}

#[test]
fn the_engine_deploys_through_a_real_agent_and_sees_a_broken_commit_rolled_back() {
    use crate::hub_support::EngineProc;
    use serde_json::json;

    let engine = EngineProc::start("command_timeout = \"60s\"\n");
    let (agent, token) = engine.create_agent("web-1");
    let repos = tempfile::tempdir().unwrap();
    let (work, bare) = (repos.path().join("work"), repos.path().join("web.git"));
    fs::create_dir(&work).unwrap();
    git(
        repos.path(),
        &["init", "-q", "--bare", bare.to_str().unwrap()],
    );
    git(&work, &["init", "-q"]);
    fs::write(work.join("server.py"), SERVER).unwrap();
    fs::write(work.join("version.txt"), "fleet-1").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "one"]);
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    let good = git(&work, &["rev-parse", "HEAD"]).trim().to_owned();

    let fleet = format!(
        "\n[fleet]\nengine_url = \"{}\"\nagent_id = \"{agent}\"\nkey_file = \"agent.key\"\n\
         enroll_token = \"{token}\"\nstatus_interval = \"300ms\"\nreconnect_delay = \"100ms\"\n",
        engine.ws_url()
    );
    let source = format!("{{ git = \"file://{}\" }}", bare.display());
    let health = "health = { http = \"http://127.0.0.1:PORT/health\", timeout = \"3s\" }";
    let s = site(Some(&source), health, &fleet);
    engine.wait_agent_status(&agent, "online");

    let deploy = |body: serde_json::Value| {
        let (status, reply) =
            engine.admin("POST", &format!("/admin/agents/{agent}/deploy"), Some(body));
        assert_eq!(status, 202, "{reply}");
        engine.wait_operation(reply["operation"]["id"].as_str().unwrap())
    };
    let op = deploy(json!({"app": "web"}));
    assert_eq!(op["status"], "completed", "{op}");
    s.wait_serving("fleet-1");
    let list = engine.get(&format!("/admin/agents/{agent}/deployments"));
    let newest = &list["deployments"][0];
    assert_eq!(newest["phase"], "completed", "{list}");
    assert_eq!(newest["commit"], good.as_str());
    assert_eq!(newest["releaseId"], s.current().unwrap().as_str());
    // The agent's status shows the release each app runs.
    wait_for("the release in the agent's status", DEADLINE, || {
        let status = engine.agent(&agent);
        match status["status"]["apps"][0]["release"] == newest["releaseId"] {
            true => Ok(()),
            false => Err(status["status"]["apps"].to_string()),
        }
    });

    // A commit whose release fails its health check: rolled back, and the engine says so.
    fs::write(work.join("broken"), "").unwrap();
    fs::write(work.join("version.txt"), "fleet-2").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "broken"]);
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    let bad = git(&work, &["rev-parse", "HEAD"]).trim().to_owned();
    let op = deploy(json!({"app": "web", "ref": "main"}));
    assert_eq!(op["status"], "failed", "{op}");
    let list = engine.get(&format!("/admin/agents/{agent}/deployments"));
    let newest = &list["deployments"][0];
    assert_eq!(newest["phase"], "rolled_back", "{list}");
    assert_eq!(newest["commit"], bad.as_str());
    assert!(
        newest["error"]
            .as_str()
            .unwrap()
            .contains("health check did not pass"),
        "{newest}"
    );
    s.wait_serving("fleet-1");
    // The agent refuses what it cannot run, and the engine shows why.
    let op = deploy(json!({"app": "ghost"}));
    assert_eq!(op["status"], "failed");
    assert!(
        op["error"].as_str().unwrap().contains("no app named"),
        "{op}"
    );
}

#[test]
fn a_full_disk_fails_the_deployment_and_leaves_current_alone() {
    let s = site(None, "", "");
    let root = s.root();
    let Some(_disk) = crate::support::Tmpfs::mount(&root, "1m") else {
        return;
    };
    s.ctl(&["deploy", "web"]).code(0);
    s.wait_serving("v1");
    let before = s.current().unwrap();

    fs::write(s.source().join("big.bin"), vec![7u8; 2 << 20]).unwrap();
    s.version("v2");
    s.ctl(&["deploy", "web"])
        .code(1)
        .stderr_has(&["disk is full (ENOSPC)", "big.bin"]);
    assert_eq!(s.current().as_deref(), Some(before.as_str()));
    s.wait_serving("v1");
    // The partial release was removed: the disk has room again.
    let releases: Vec<_> = fs::read_dir(root.join("releases")).unwrap().collect();
    assert_eq!(releases.len(), 1);
}

#[test]
fn sources_that_reach_outside_are_refused_and_nothing_is_written_outside() {
    let s = site(None, "", "");
    // A path source with a symlink out of its tree: not followed, the deployment refused.
    std::os::unix::fs::symlink("/etc/passwd", s.source().join("passwd")).unwrap();
    s.ctl(&["deploy", "web"])
        .code(1)
        .stderr_has(&["refused", "passwd"]);
    assert_eq!(s.current(), None);
    fs::remove_file(s.source().join("passwd")).unwrap();

    // An archive with a `../` entry.
    let archive = s.dir().join("evil.tar.gz");
    let script = format!(
        "import tarfile, io\n\
         t = tarfile.open({:?}, 'w:gz')\n\
         for name in ['version.txt', '../escaped']:\n\
         \x20   data = b'x'\n\
         \x20   info = tarfile.TarInfo(name); info.size = len(data)\n\
         \x20   t.addfile(info, io.BytesIO(data))\n\
         t.close()\n",
        archive.display().to_string()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = fs::read_to_string(&s.daemon.config).unwrap().replace(
        "source = { path = \"src\" }",
        "source = { archive = \"evil.tar.gz\" }",
    );
    fs::write(&s.daemon.config, text).unwrap();
    s.ctl(&["reload-config"]).code(0);
    s.ctl(&["deploy", "web"])
        .code(1)
        .stderr_has(&["refused", "../escaped"]);
    assert!(!s.root().join("releases/escaped").exists());
    assert!(!s.root().join("escaped").exists());
    assert_eq!(s.current(), None);
}

#[test]
fn a_resumed_deployment_whose_source_vanished_fails_with_the_reason() {
    let build = "while [ ! -e ../../../go ]; do sleep 0.05; done";
    let mut s = site(None, &format!("build = [\"sh\", \"-c\", \"{build}\"]"), "");
    let socket = s.daemon.socket.clone();
    let deploy = std::thread::spawn(move || crate::support::ctl_at(&socket, &["deploy", "web"]));
    let held = s.wait_phase(Phase::Building);
    s.daemon.kill9();
    deploy.join().unwrap();
    fs::remove_dir_all(s.source()).unwrap();
    s.daemon.spawn();
    s.daemon.wait_ready();
    let failed = s.wait_phase(Phase::Failed);
    assert_eq!((failed.id.as_str(), failed.resumed), (held.id.as_str(), 1));
    assert!(
        failed
            .error
            .as_deref()
            .unwrap()
            .contains("source directory"),
        "{failed:?}"
    );
    assert_eq!(s.current(), None);
    // The app is free to be deployed again.
    s.ctl(&["deploy", "web"])
        .code(1)
        .stderr_has(&["is missing"]);
}
