//! A bad config: exit 2, one message per problem with file:line:column, nothing started.

use std::fs;

use crate::support::{citrusd_once, with_daemon_table};

/// Writes `body` and runs citrusd on it; asserts it refused with exit 2 and started nothing.
#[track_caller]
pub(crate) fn refused(body: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("citrusd.toml");
    fs::write(&path, with_daemon_table(body)).unwrap();
    let run = citrusd_once(dir.path(), &path);
    run.code(2);
    assert!(
        !dir.path().join("refused.sock").exists(),
        "a refused config must not bind the socket"
    );
    assert!(
        !dir.path().join("state").exists(),
        "a refused config must not create state"
    );
    run.stderr
}

#[test]
fn unknown_key_names_file_line_column_and_suggests() {
    let err = refused("[apps.api]\ncommand = [\"true\"]\ncomand = [\"x\"]\n");
    assert!(err.contains("citrusd.toml:8:1"), "{err}");
    assert!(err.contains("apps.api.comand"), "{err}");
    assert!(err.contains("did you mean `command`"), "{err}");
}

#[test]
fn wrong_type_and_bad_duration_are_both_reported() {
    let err =
        refused("[apps.api]\ncommand = [\"true\"]\ninstances = \"two\"\nmin_uptime = \"ten\"\n");
    assert!(
        err.contains("citrusd.toml:8:13") && err.contains("apps.api.instances"),
        "{err}"
    );
    assert!(
        err.contains("citrusd.toml:9:14") && err.contains("invalid duration \"ten\""),
        "{err}"
    );
}

#[test]
fn empty_command_is_refused() {
    let err = refused("[apps.api]\ncommand = []\n");
    assert!(
        err.contains("apps.api.command") && err.contains("empty"),
        "{err}"
    );
}

#[test]
fn after_cycle_is_named() {
    let err = refused(
        "[apps.a]\ncommand = [\"true\"]\nafter = [\"b\"]\n[apps.b]\ncommand = [\"true\"]\nafter = [\"a\"]\n",
    );
    assert!(err.contains("a -> b -> a"), "{err}");
}

#[test]
fn after_unknown_app_and_zero_instances() {
    let err = refused("[apps.a]\ncommand = [\"true\"]\nafter = [\"dbb\"]\ninstances = 0\n[apps.db]\ncommand = [\"true\"]\n");
    assert!(err.contains("apps.a.after") && err.contains("dbb"), "{err}");
    assert!(err.contains("apps.a.instances"), "{err}");
}

#[test]
fn sections_not_implemented_yet_are_unknown() {
    let err = refused("[apps.a]\ncommand = [\"true\"]\ndeploy = { root = \"/srv\" }\n");
    assert!(err.contains("apps.a.deploy"), "{err}");
}

#[test]
fn missing_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = citrusd_once(dir.path(), &dir.path().join("nope.toml"));
    run.code(2).stderr_has(&["nope.toml"]);
}

#[test]
fn invalid_cron_names_the_job_and_the_field() {
    let err = refused("[apps.a]\ncommand = [\"true\"]\n[jobs.nightly]\nschedule = \"61 * * * *\"\nkind = \"save\"\n");
    assert!(
        err.contains("jobs.nightly.schedule") && err.contains("minute"),
        "{err}"
    );
}

#[test]
fn probe_url_that_does_not_parse_is_refused() {
    let err = refused(
        "[apps.a]\ncommand = [\"true\"]\nhealth = { http = \"http://127.0.0.1:99999/x\" }\n",
    );
    assert!(
        err.contains("apps.a.health") && err.contains("port"),
        "{err}"
    );
    let err = refused("[apps.a]\ncommand = [\"true\"]\nready = { http = \"not a url\" }\n");
    assert!(err.contains("apps.a.ready"), "{err}");
}

#[test]
fn a_duration_past_ten_years_is_refused_naming_the_maximum() {
    // 2e11 days passed before and overflowed the millisecond arithmetic done with it.
    let err = refused("[apps.api]\ncommand = [\"true\"]\nkill_timeout = \"200000000000d\"\n");
    assert!(
        err.contains("apps.api.kill_timeout")
            && err.contains("too large: the most is 3650d (ten years)"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("engine.toml");
    fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\nenroll_token_ttl = \"200000000000d\"\n",
    )
    .unwrap();
    // Spawned, not waited on blindly: an engine that accepted the config would run on.
    let mut engine = std::process::Command::new(crate::hub_support::ENGINE)
        .arg("--config")
        .arg(&path)
        .current_dir(dir.path())
        .env("CITRUS_ADMIN_TOKEN", crate::hub_support::ADMIN_TOKEN)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let code = crate::support::wait_for("the engine to exit", crate::support::DEADLINE, || {
        engine
            .try_wait()
            .unwrap()
            .ok_or_else(|| "still running".to_owned())
    });
    let out = engine.wait_with_output().unwrap();
    assert_eq!(code.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("engine.toml:2:")
            && stderr.contains("enroll_token_ttl")
            && stderr.contains("too large: the most is 3650d (ten years)"),
        "{stderr}"
    );
}
