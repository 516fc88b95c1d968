//! Release self-update (issue 12) against the stand-in engine, which serves `GET /releases/…`:
//! two real citrusd binaries that differ (the test binary, and a copy with bytes appended past
//! the ELF's end, so its SHA-256 differs and only running it reports that), installed in the
//! daemon's temp dir; the apps keep their pids; truncated downloads, a full disk, a second
//! update in flight, a new binary that cannot start (put back by the unit's guard), one that
//! cannot reach the engine (put back by itself after `confirm_timeout`), and the git-checkout
//! path whose `build` makes the binary that is installed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use citrus::control::AppState;

use crate::engine::{Engine, Serve};
use crate::fleet::{agent, repos, KEY};
use crate::support::{git, wait_for, Daemon, Tmpfs, CITRUSD, DEADLINE};

fn sha256(bytes: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn sha_of(path: &Path) -> String {
    sha256(&fs::read(path).unwrap())
}

/// The running binary A and a different one B (A with a trailer: same code, another hash).
fn binaries() -> (Vec<u8>, Vec<u8>) {
    let a = fs::read(CITRUSD).unwrap();
    let mut b = a.clone();
    b.extend_from_slice(b"\0citrus selfupdate test: binary B\0");
    (a, b)
}

/// A daemon (`apps` sleepers plus the fleet's `api`) whose citrusd is a copy of `a` in
/// `<dir>/bin/citrusd`, not yet started.
fn prepared(engine: &Engine, apps: usize, a: &[u8], bin: Option<&Path>) -> (Daemon, PathBuf) {
    let mut d = agent(engine, Some(KEY), "");
    let mut text = fs::read_to_string(&d.config).unwrap();
    for i in 1..apps {
        text.push_str(&format!("\n[apps.w{i}]\ncommand = [\"sleep\", \"1000\"]\n"));
    }
    fs::write(&d.config, text).unwrap();
    let dir = bin.map_or_else(|| d.dir.path().join("bin"), Path::to_owned);
    fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("citrusd");
    fs::write(&exe, a).unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    d.program = exe.clone();
    (d, exe)
}

/// Appends `text` (e.g. a `[fleet.update]` section) to the daemon's config.
fn configure(d: &Daemon, text: &str) {
    let mut config = fs::read_to_string(&d.config).unwrap();
    config.push_str(text);
    fs::write(&d.config, config).unwrap();
}

fn op(engine: &Engine, ty: &str, id: &str, status: &str) -> serde_json::Value {
    engine.wait_frame(&format!("{ty} {id} {status}"), |v| {
        v["type"] == ty && v["id"] == id && v["status"] == status
    })
}

fn pids(d: &Daemon, apps: &[String]) -> Vec<Option<u32>> {
    apps.iter().flat_map(|a| d.app(a)).map(|s| s.pid).collect()
}

/// Names in `dir` other than `keep`: temp files left behind.
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

#[test]
fn update_installs_the_release_keeps_the_apps_and_rollback_goes_back_to_citrusd_prev() {
    let engine = Engine::start(KEY);
    let (a, b) = binaries();
    let (sha_a, sha_b) = (sha256(&a), sha256(&b));
    let (d, exe) = prepared(&engine, 10, &a, None);
    let d = d.launch();
    let mut apps: Vec<String> = (1..10).map(|i| format!("w{i}")).collect();
    apps.push("api".into());
    for app in &apps {
        d.wait_state(app, AppState::Online);
    }
    let before = pids(&d, &apps);
    assert_eq!(before.len(), 10);
    let hello = engine.wait_frame("agent_connected", |v| v["type"] == "agent_connected");
    assert_eq!(hello["binarySha256"], sha_a.as_str(), "{hello}");
    engine.wait_frame("status_update with binarySha256", |v| {
        v["type"] == "status_update" && v["status"]["binarySha256"] == sha_a.as_str()
    });

    engine.serve_release(&sha_b, b.clone(), Serve::Whole);
    let started = Instant::now();
    engine.send(&format!(
        r#"{{"type":"update_agent","id":"up-1","sha256":"{sha_b}"}}"#
    ));
    let done = op(&engine, "update_operation", "up-1", "completed");
    let took = started.elapsed();
    assert!(
        done["output"].as_str().unwrap().contains(&sha_b),
        "the new process reports its own hash: {done}"
    );
    engine.wait_frame("agent_connected from binary B", |v| {
        v["type"] == "agent_connected" && v["binarySha256"] == sha_b.as_str()
    });
    eprintln!(
        "FIGURE selfupdate: update_agent -> new binary reported, 10 apps: {} ms",
        took.as_millis()
    );
    assert_eq!(pids(&d, &apps), before, "no app pid changed");
    assert_eq!(sha_of(&exe), sha_b);
    assert_eq!(sha_of(&exe.with_file_name("citrusd.prev")), sha_a);
    assert!(!d.dir.path().join("state/binary-update.pending").exists());
    assert_eq!(
        d.ctl(&["ping"]).code,
        0,
        "same daemon (same pid, same socket)"
    );

    engine.send(r#"{"type":"rollback_agent","id":"rb-1"}"#);
    let back = op(&engine, "rollback_operation", "rb-1", "completed");
    assert!(back["output"].as_str().unwrap().contains(&sha_a), "{back}");
    assert_eq!(sha_of(&exe), sha_a);
    assert_eq!(sha_of(&exe.with_file_name("citrusd.prev")), sha_b);
    assert_eq!(pids(&d, &apps), before, "no app pid changed");
    assert_eq!(
        leftovers(exe.parent().unwrap(), &["citrusd", "citrusd.prev"]),
        Vec::<String>::new()
    );
}

#[test]
fn a_truncated_download_fails_the_checksum_and_replaces_nothing() {
    let engine = Engine::start(KEY);
    let (a, b) = binaries();
    let sha_b = sha256(&b);
    let (d, exe) = prepared(&engine, 1, &a, None);
    let d = d.launch();
    engine.wait_frame("agent_connected", |v| v["type"] == "agent_connected");
    engine.serve_release(&sha_b, b, Serve::Truncated(1 << 20));
    engine.send(&format!(
        r#"{{"type":"update_agent","id":"up-t","sha256":"{sha_b}"}}"#
    ));
    let failed = op(&engine, "update_operation", "up-t", "failed");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("checksum mismatch"), "{error}");
    assert!(
        error.contains(&sha_b) && error.contains("nothing was replaced"),
        "{error}"
    );
    assert_eq!(fs::read(&exe).unwrap(), a, "the binary is untouched");
    assert_eq!(
        leftovers(exe.parent().unwrap(), &["citrusd"]),
        Vec::<String>::new()
    );
    // Unknown to the engine: its 404 is the reason.
    let missing = "0".repeat(64);
    engine.send(&format!(
        r#"{{"type":"update_agent","id":"up-m","sha256":"{missing}"}}"#
    ));
    let failed = op(&engine, "update_operation", "up-m", "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("404"),
        "{failed}"
    );
    assert_eq!(d.ctl(&["ping"]).code, 0);
}

#[test]
fn a_second_update_while_one_is_in_flight_is_refused() {
    let engine = Engine::start(KEY);
    let (a, b) = binaries();
    let sha_b = sha256(&b);
    let (d, exe) = prepared(&engine, 1, &a, None);
    let _d = d.launch();
    engine.wait_frame("agent_connected", |v| v["type"] == "agent_connected");
    engine.serve_release(&sha_b, b, Serve::Stalled);
    engine.send(&format!(
        r#"{{"type":"update_agent","id":"up-1","sha256":"{sha_b}"}}"#
    ));
    op(&engine, "update_operation", "up-1", "starting");
    engine.send(&format!(
        r#"{{"type":"update_agent","id":"up-2","sha256":"{sha_b}"}}"#
    ));
    let refused = op(&engine, "update_operation", "up-2", "failed");
    assert!(
        refused["error"].as_str().unwrap().contains("in flight"),
        "{refused}"
    );
    engine.send(r#"{"type":"rollback_agent","id":"rb-2"}"#);
    let refused = op(&engine, "rollback_operation", "rb-2", "failed");
    assert!(
        refused["error"].as_str().unwrap().contains("in flight"),
        "{refused}"
    );
    assert_eq!(fs::read(&exe).unwrap(), a);
}

#[test]
fn a_full_disk_while_writing_the_new_binary_leaves_the_old_one() {
    let engine = Engine::start(KEY);
    let (a, b) = binaries();
    let sha_b = sha256(&b);
    let at = tempfile::tempdir().unwrap();
    let bin = at.path().join("bin");
    let size = format!("{}k", a.len() / 1024 + 2048);
    let Some(fs_) = Tmpfs::mount(&bin, &size) else {
        return;
    };
    let (d, exe) = prepared(&engine, 1, &a, Some(&bin));
    let d = d.launch();
    engine.wait_frame("agent_connected", |v| v["type"] == "agent_connected");
    fs_.fill();
    engine.serve_release(&sha_b, b, Serve::Whole);
    engine.send(&format!(
        r#"{{"type":"update_agent","id":"up-f","sha256":"{sha_b}"}}"#
    ));
    let failed = op(&engine, "update_operation", "up-f", "failed");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("cannot write") && error.contains("No space left"),
        "{error}"
    );
    assert_eq!(fs::read(&exe).unwrap(), a, "the binary is untouched");
    assert_eq!(
        leftovers(&bin, &["citrusd", "filler"]),
        Vec::<String>::new()
    );
    assert_eq!(d.ctl(&["ping"]).code, 0);
    drop(d);
    drop(fs_);
}

/// The unit's guard as systemd runs it (`ExecStartPre=/bin/sh -c '…'`), its paths pointed at
/// the test's binary and state dir.
fn run_unit_guard(exe: &Path, state: &Path) -> String {
    let unit = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/citrusd.service"
    ))
    .unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre=/bin/sh -c '"))
        .expect("the unit has the guard");
    let script = line
        .strip_suffix('\'')
        .unwrap()
        .replace("/usr/local/bin/citrusd", &exe.display().to_string())
        .replace(
            "/usr/local/bin",
            &exe.parent().unwrap().display().to_string(),
        )
        .replace("/var/lib/citrus", &state.display().to_string());
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_new_binary_that_cannot_start_is_put_back_by_the_units_guard() {
    let engine = Engine::start(KEY);
    let (a, _) = binaries();
    let sha_a = sha256(&a);
    // A real ELF that exits at once with status 1.
    let bad = fs::read("/bin/false").unwrap();
    let sha_bad = sha256(&bad);
    let (d, exe) = prepared(&engine, 1, &a, None);
    let mut d = d.launch();
    engine.wait_frame("agent_connected", |v| v["type"] == "agent_connected");
    engine.serve_release(&sha_bad, bad, Serve::Whole);
    engine.send(&format!(
        r#"{{"type":"update_agent","id":"up-x","sha256":"{sha_bad}"}}"#
    ));
    op(&engine, "update_operation", "up-x", "starting");
    assert_eq!(d.wait_exit(), 1, "the new binary exited at once");
    let state = d.dir.path().join("state");
    assert!(state.join("binary-update.pending").exists());
    // systemd restarts the service: ExecStartPre, then ExecStart.
    let said = run_unit_guard(&exe, &state);
    assert!(said.contains("put back citrusd.prev"), "{said}");
    assert_eq!(sha_of(&exe), sha_a);
    d.spawn();
    d.wait_ready();
    let failed = op(&engine, "update_operation", "up-x", "failed");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("put back") && error.contains(&sha_bad[..12]),
        "{error}"
    );
    assert!(!state.join("binary-update.pending").exists());
    // A start without an update in flight leaves the binary alone.
    assert_eq!(run_unit_guard(&exe, &state), "");
    assert_eq!(sha_of(&exe), sha_a);
}

#[test]
fn update_agent_through_the_real_engine_installs_its_release_and_the_engine_records_it() {
    use crate::hub_support::EngineProc;
    // The test's citrusd is a debug build, bigger than the 64 MiB default.
    let engine = EngineProc::start("max_release_size = \"512M\"\n");
    let (id, key) = engine.enrolled_agent("selfupdate");
    let (a, b) = binaries();
    let (sha_a, sha_b) = (sha256(&a), sha256(&b));
    let (status, body) = crate::releases::upload(&engine, "version=0.1.0-b&arch=x86_64", b, false);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["release"]["sha256"], sha_b.as_str());
    let mut d = Daemon::prepare(
        &format!(
            "[apps.api]\ncommand = [\"sleep\", \"1000\"]\n[fleet]\nengine_url = \"{}\"\n\
             agent_id = \"{id}\"\nkey_file = \"agent.key\"\nstatus_interval = \"300ms\"\n\
             reconnect_delay = \"100ms\"\n",
            engine.ws_url()
        ),
        &[],
    );
    fs::write(d.dir.path().join("agent.key"), &key).unwrap();
    let exe = d.dir.path().join("citrusd");
    fs::write(&exe, &a).unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    d.program = exe.clone();
    let d = d.launch();
    let binary = |want: &str| {
        wait_for(
            &format!("the engine to record binary {want}"),
            DEADLINE,
            || {
                let agent = engine.agent(&id);
                let row = if agent["agent"].is_object() {
                    &agent["agent"]
                } else {
                    &agent
                };
                match row["binarySha256"].as_str() {
                    Some(sha) if sha == want => Ok(()),
                    _ => Err(agent.to_string()),
                }
            },
        )
    };
    binary(&sha_a);
    let pid = d.app("api")[0].pid;
    let (status, body) = engine.command(
        &id,
        serde_json::json!({"type": "update_agent", "sha256": sha_b}),
    );
    assert_eq!(status, 202, "{body}");
    let op = engine.wait_operation(body["operation"]["id"].as_str().unwrap());
    assert_eq!(op["status"], "completed", "{op}");
    assert!(op["output"].as_str().unwrap().contains(&sha_b), "{op}");
    binary(&sha_b);
    assert_eq!(d.app("api")[0].pid, pid, "the app kept its pid");
    assert_eq!(sha_of(&exe), sha_b);
    // A release the engine does not have never reaches the agent.
    let (status, body) = engine.command(
        &id,
        serde_json::json!({"type": "update_agent", "sha256": "1".repeat(64)}),
    );
    assert_eq!(status, 404, "{body}");
}

#[test]
fn a_new_binary_that_does_not_reach_the_engine_puts_citrusd_prev_back_by_itself() {
    let mut engine = Engine::start(KEY);
    let (a, b) = binaries();
    let (sha_a, sha_b) = (sha256(&a), sha256(&b));
    let (d, exe) = prepared(&engine, 3, &a, None);
    configure(&d, "[fleet.update]\nconfirm_timeout = \"2s\"\n");
    let d = d.launch();
    let apps = ["api".to_string(), "w1".to_string(), "w2".to_string()];
    for app in &apps {
        d.wait_state(app, AppState::Online);
    }
    let (before, citrusd) = (pids(&d, &apps), d.pid());
    engine.wait_frame("agent_connected", |v| v["type"] == "agent_connected");
    engine.serve_release(&sha_b, b, Serve::Whole);
    // From now on the engine turns every agent away: binary B will not get in.
    engine.accept_keys(&[]);
    engine.send(&format!(
        r#"{{"type":"update_agent","id":"up-r","sha256":"{sha_b}"}}"#
    ));
    op(&engine, "update_operation", "up-r", "starting");
    wait_for(
        "binary B to try the engine and be refused",
        DEADLINE,
        || match engine.refused() {
            0 => Err(format!("exe {}", sha_of(&exe))),
            n => Ok(n),
        },
    );
    // Then the engine goes away altogether.
    engine.stop();
    let state = d.dir.path().join("state");
    // In order: the message, the rename back, the marker removed, the exec; then binary A
    // answers on the same socket.
    wait_for(
        "citrusd.prev put back by the new binary, which re-executes it",
        DEADLINE,
        || {
            let (now, said) = (sha_of(&exe), d.stderr());
            let prev = exe.with_file_name("citrusd.prev").exists();
            let marker = state.join("binary-update.pending").exists();
            let ping = d.ctl(&["ping"]).code;
            if now == sha_a
                && said.contains("did not reach the engine")
                && !prev
                && !marker
                && ping == 0
            {
                Ok(())
            } else {
                Err(format!(
                "exe {now}; citrusd.prev {prev}; marker {marker}; ping exit {ping}; stderr: {said}"
            ))
            }
        },
    );
    assert_eq!(d.pid(), citrusd, "re-executed in place, not restarted");
    assert_eq!(pids(&d, &apps), before, "no app pid changed");

    // The engine is back: the old binary reports the update failed, with the reason.
    engine.restart();
    engine.accept_keys(&[KEY]);
    let failed = op(&engine, "update_operation", "up-r", "failed");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("did not reach the engine within 2s")
            && error.contains(&format!("the previous binary {}", &sha_a[..12])),
        "{error}"
    );
    assert!(
        failed["output"].as_str().unwrap().contains(&sha_a),
        "reported by binary A: {failed}"
    );
    wait_for("the update record cleared", DEADLINE, || {
        match state.join("fleet-update.json").exists() {
            true => Err(d.stderr()),
            false => Ok(()),
        }
    });
    assert_eq!(sha_of(&exe), sha_a);
    assert_eq!(pids(&d, &apps), before, "no app pid changed");
    assert_eq!(
        leftovers(exe.parent().unwrap(), &["citrusd"]),
        Vec::<String>::new()
    );
}

/// A daemon running binary A with a `[fleet.update]` git checkout at commit A (the remote has
/// B) whose `build` is `cp <from> citrusd-built` and whose `binary` is what it made.
fn git_prepared(
    engine: &Engine,
    a: &[u8],
    from: &Path,
    confirm_timeout: &str,
) -> (Daemon, PathBuf, String, String) {
    let (d, exe) = prepared(engine, 1, a, None);
    let (ca, cb) = repos(d.dir.path());
    configure(
        &d,
        &format!(
            "[fleet.update]\nrepo = \"checkout\"\nbuild = [\"cp\", \"{}\", \"citrusd-built\"]\n\
             binary = \"citrusd-built\"\nconfirm_timeout = \"{confirm_timeout}\"\n",
            from.display()
        ),
    );
    (d, exe, ca, cb)
}

#[test]
fn the_git_path_runs_the_build_and_installs_the_binary_it_made() {
    let engine = Engine::start(KEY);
    let (a, b) = binaries();
    let (sha_a, sha_b) = (sha256(&a), sha256(&b));
    let made = tempfile::tempdir().unwrap();
    let from = made.path().join("citrusd-b");
    fs::write(&from, &b).unwrap();
    let (d, exe, ca, cb) = git_prepared(&engine, &a, &from, "20s");
    let d = d.launch();
    let (api, citrusd) = (d.wait_state("api", AppState::Online)[0].pid, d.pid());
    let hello = engine.wait_frame("agent_connected", |v| v["type"] == "agent_connected");
    assert_eq!(hello["binarySha256"], sha_a.as_str(), "{hello}");
    assert_eq!(hello["gitVersion"], ca[..12], "{hello}");

    engine.send(r#"{"type":"update_agent","id":"up-g"}"#);
    let done = op(&engine, "update_operation", "up-g", "completed");
    assert!(
        done["output"].as_str().unwrap().contains(&sha_b),
        "the new process reports its own hash: {done}"
    );
    assert_eq!(done["gitVersion"], cb[..12], "{done}");
    engine.wait_frame("agent_connected from the built binary", |v| {
        v["type"] == "agent_connected" && v["binarySha256"] == sha_b.as_str()
    });
    let checkout = d.dir.path().join("checkout");
    assert_eq!(git(&checkout, &["rev-parse", "HEAD"]), cb);
    assert_eq!(sha_of(&exe), sha_b);
    assert_eq!(sha_of(&exe.with_file_name("citrusd.prev")), sha_a);
    assert_eq!(d.pid(), citrusd, "re-executed in place");
    assert_eq!(d.app("api")[0].pid, api, "the app kept its pid");
    assert_eq!(
        leftovers(exe.parent().unwrap(), &["citrusd", "citrusd.prev"]),
        Vec::<String>::new()
    );
    assert!(!d.dir.path().join("state/fleet-update.json").exists());
}

#[test]
fn a_failing_build_reports_its_output_and_changes_nothing() {
    let engine = Engine::start(KEY);
    let (a, _) = binaries();
    let missing = tempfile::tempdir().unwrap().path().join("no-such-citrusd");
    let (d, exe, ca, cb) = git_prepared(&engine, &a, &missing, "20s");
    let d = d.launch();
    let (api, citrusd) = (d.wait_state("api", AppState::Online)[0].pid, d.pid());
    engine.wait_frame("agent_connected", |v| v["type"] == "agent_connected");

    engine.send(r#"{"type":"update_agent","id":"up-b"}"#);
    let failed = op(&engine, "update_operation", "up-b", "failed");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("the build failed")
            && error.contains("cp exited")
            && error.contains(&format!("went back to {}", &ca[..12])),
        "{error}"
    );
    assert!(
        error.contains("no-such-citrusd") && error.contains("No such file"),
        "the build's own output: {error}"
    );
    assert_eq!(
        failed["output"].as_str().unwrap(),
        format!("{} -> {}", &ca[..12], &cb[..12])
    );
    let checkout = d.dir.path().join("checkout");
    assert_eq!(git(&checkout, &["rev-parse", "HEAD"]), ca, "checkout reset");
    assert_eq!(git(&checkout, &["status", "--porcelain"]), "");
    assert_eq!(fs::read(&exe).unwrap(), a, "the binary is untouched");
    assert_eq!(
        leftovers(exe.parent().unwrap(), &["citrusd"]),
        Vec::<String>::new()
    );
    let state = d.dir.path().join("state");
    assert!(!state.join("fleet-update.json").exists());
    assert!(!state.join("binary-update.pending").exists());
    assert_eq!(d.pid(), citrusd);
    assert_eq!(d.app("api")[0].pid, api);
    assert_eq!(engine.connects().len(), 1, "no re-exec");
}

#[test]
fn a_built_binary_that_does_not_reach_the_engine_goes_back_with_the_checkout() {
    let engine = Engine::start(KEY);
    let (a, b) = binaries();
    let sha_a = sha256(&a);
    let made = tempfile::tempdir().unwrap();
    let from = made.path().join("citrusd-b");
    fs::write(&from, &b).unwrap();
    let (d, exe, ca, _) = git_prepared(&engine, &a, &from, "2s");
    let d = d.launch();
    let (api, citrusd) = (d.wait_state("api", AppState::Online)[0].pid, d.pid());
    engine.wait_frame("agent_connected", |v| v["type"] == "agent_connected");
    engine.accept_keys(&[]);
    engine.send(r#"{"type":"update_agent","id":"up-gr"}"#);
    wait_for(
        "the built binary to try the engine",
        DEADLINE,
        || match engine.refused() {
            0 => Err(format!("exe {}", sha_of(&exe))),
            n => Ok(n),
        },
    );
    let checkout = d.dir.path().join("checkout");
    wait_for("binary A and commit A back", DEADLINE, || {
        let (now, head) = (sha_of(&exe), git(&checkout, &["rev-parse", "HEAD"]));
        if now == sha_a && head == ca && d.stderr().contains("going back to") {
            Ok(())
        } else {
            Err(format!("exe {now}, HEAD {head}"))
        }
    });
    engine.accept_keys(&[KEY]);
    let failed = op(&engine, "update_operation", "up-gr", "failed");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "went back to the previous binary {} and commit {}",
            &sha_a[..12],
            &ca[..12]
        )),
        "{error}"
    );
    assert_eq!(failed["gitVersion"], ca[..12], "{failed}");
    assert!(!exe.with_file_name("citrusd.prev").exists());
    assert_eq!(d.pid(), citrusd);
    assert_eq!(d.app("api")[0].pid, api, "the app kept its pid");
}
