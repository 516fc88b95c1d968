//! Provisioning against a local DigitalOcean stand-in: deploy-with-agent, cloud-init's config
//! played by a real citrusd, enrolment, the server's states (also across an engine restart),
//! DigitalOcean's errors, and deletion.

use serde_json::{json, Value};

use crate::digitalocean::FakeDo;
use crate::hub_support::{agent_headers, raw_connect, EngineProc};
use crate::support::{wait_for, Daemon, DEADLINE};

const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub fn engine_with(fake: &FakeDo, token: &str, extra: &str) -> EngineProc {
    EngineProc::start_env(
        &format!(
            "status_interval = \"500ms\"\n{extra}\
             [digitalocean]\napi_base = \"{}\"\npoll_interval = \"200ms\"\ntimeout = \"1s\"\nattempts = 2\n\
             [install]\ncitrusd_url = \"https://releases.example.com/citrusd\"\ncitrusd_sha256 = \"{SHA}\"\n",
            fake.base
        ),
        &[("DO_API_TOKEN", token)],
    )
}

fn deploy(engine: &EngineProc, name: Option<&str>) -> Value {
    let body = match name {
        Some(name) => json!({ "name": name }),
        None => json!({}),
    };
    let (status, body) = engine.admin("POST", "/admin/servers/deploy-with-agent", Some(body));
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["success"], true);
    body["server"].clone()
}

#[track_caller]
fn wait_server(engine: &EngineProc, id: &str, want: &str) -> Value {
    wait_for(&format!("server {id} to be {want}"), DEADLINE, || {
        let server = engine.get(&format!("/admin/servers/{id}"))["server"].clone();
        match server["status"] == want {
            true => Ok(server),
            false => Err(server.to_string()),
        }
    })
}

/// The citrusd.toml that cloud-init writes, from the droplet's user_data.
fn rendered_config(user_data: &str) -> String {
    let start = "cat > \"$ROOT/etc/citrus/citrusd.toml\" <<'CITRUS_EOF'\n";
    let from = user_data.find(start).expect("config heredoc") + start.len();
    let len = user_data[from..]
        .find("\nCITRUS_EOF\n")
        .expect("heredoc end");
    user_data[from..from + len].to_owned()
}

#[test]
fn deploy_with_agent_end_to_end() {
    let fake = FakeDo::start();
    let engine = engine_with(&fake, fake.token(), "");
    let server = deploy(&engine, Some("web-7"));
    let (server_id, agent_id) = (
        server["id"].as_str().unwrap().to_owned(),
        server["agent"]["id"].as_str().unwrap().to_owned(),
    );
    assert_eq!(server["status"], "creating");
    assert_eq!(agent_id.len(), 36, "a UUID");
    // The agent exists, offline and not enrolled.
    let agent = engine.agent(&agent_id);
    assert_eq!(agent["agent"]["status"], "offline");
    assert_eq!(agent["agent"]["enrolled"], false);

    // The droplet request carries SPEC 4's defaults and the rendered cloud-init.
    let server = wait_server(&engine, &server_id, "initializing");
    assert_eq!(server["ip"], "203.0.113.1");
    assert_eq!(server["dropletId"], 1000);
    let created = fake.created();
    assert_eq!(created.len(), 1);
    let request = &created[0];
    assert_eq!(request["name"], "web-7");
    assert_eq!(request["region"], "sfo3");
    assert_eq!(request["size"], "s-1vcpu-512mb-10gb");
    assert_eq!(request["image"], "ubuntu-22-04-x64");
    assert_eq!(request["backups"], false);
    assert_eq!(request["ipv6"], true);
    assert_eq!(request["monitoring"], true);
    assert_eq!(request["tags"], json!(["citrus-host"]));
    let auth = &fake.requests()[0].2;
    assert_eq!(
        auth.as_deref(),
        Some(format!("Bearer {}", fake.token()).as_str())
    );
    let user_data = request["user_data"].as_str().unwrap();
    let config = rendered_config(user_data);
    let token = config
        .lines()
        .find_map(|l| l.strip_prefix("enroll_token = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("an enroll token")
        .to_owned();
    assert!(config.contains(&format!("agent_id = \"{agent_id}\"")));
    assert!(config.contains(&format!("engine_url = \"{}\"", engine.ws_url())));
    // The agent reports as often as the engine expects it to.
    assert!(config.contains("status_interval = \"500ms\""), "{config}");
    assert!(
        !engine.stderr().contains(&token),
        "the token is never logged"
    );

    // A real citrusd plays the droplet: the rendered config, paths moved into its temp dir, and
    // an `echo` standing in for EasyEngine.
    let config = config
        .replace("/var/lib/citrus", "state")
        .replace("/var/log/citrus", "logs")
        .replace("/etc/citrus/agent.key", "agent.key")
        + "\n[fleet.sites]\ncreate = [\"echo\", \"created\", \"{domain}\"]\n";
    let daemon = Daemon::start(&config);
    let server = wait_server(&engine, &server_id, "active");
    assert!(server["error"].is_null(), "{server}");
    let connected_at =
        engine.wait_agent_status(&agent_id, "online")["agent"]["connectedAt"].clone();
    assert!(daemon.dir.path().join("agent.key").exists());
    // It stays connected past 3 of the engine's status intervals (1.5 s): its reports keep coming.
    wait_for("6 status reports of the new host", DEADLINE, || {
        let points = engine.get(&format!("/admin/agents/{agent_id}/history"))["points"].clone();
        match points.as_array().map_or(0, Vec::len) {
            n if n >= 6 => Ok(()),
            n => Err(format!("{n} points")),
        }
    });
    let agent = engine.agent(&agent_id)["agent"].clone();
    assert_eq!(agent["status"], "online", "{agent}");
    assert_eq!(
        agent["connectedAt"], connected_at,
        "the agent never reconnected"
    );

    // The token was burnt: a second enrolment is refused and the server says why.
    let (status, body) = engine.enroll(&agent_id, &token);
    assert_eq!(status, 403, "{body}");
    let server = engine.get(&format!("/admin/servers/{server_id}"))["server"].clone();
    assert_eq!(server["status"], "active");
    assert!(
        server["error"].as_str().unwrap().contains("already used"),
        "{server}"
    );

    // Commands reach the new host.
    let (status, body) = engine.command(
        &agent_id,
        json!({"type": "create_site", "domain": "blog.example.com"}),
    );
    assert_eq!(status, 202, "{body}");
    let op = engine.wait_operation(body["operation"]["id"].as_str().unwrap());
    assert_eq!(op["status"], "completed", "{op}");
    assert!(op["output"]
        .as_str()
        .unwrap()
        .contains("created blog.example.com"));

    // Key rotation: the agent comes back with the new key; the old one is refused.
    let old_key = std::fs::read_to_string(daemon.dir.path().join("agent.key")).unwrap();
    let (status, body) = engine.admin(
        "POST",
        &format!("/admin/agents/{agent_id}/rotate-key"),
        None,
    );
    assert_eq!(status, 202, "{body}");
    let op = engine.wait_operation(body["operation"]["id"].as_str().unwrap());
    assert_eq!(op["status"], "completed", "{op}");
    wait_for("the agent's new key", DEADLINE, || {
        let key = std::fs::read_to_string(daemon.dir.path().join("agent.key")).unwrap();
        if key != old_key {
            Ok(())
        } else {
            Err("old key".into())
        }
    });
    engine.wait_agent_status(&agent_id, "online");
    let refused = raw_connect(
        &engine.rt,
        &engine.ws_url(),
        &agent_headers(&agent_id, old_key.trim()),
    );
    assert_eq!(refused.err(), Some(401));

    // Deleting the server destroys the droplet and forgets the agent.
    let (status, body) = engine.admin("DELETE", &format!("/admin/servers/{server_id}"), None);
    assert_eq!(status, 200, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("droplet 1000 destroyed"));
    assert_eq!(fake.deleted(), vec![1000]);
    let (status, _) = engine.admin("GET", &format!("/admin/servers/{server_id}"), None);
    assert_eq!(status, 404);
    let (status, _) = engine.admin("GET", &format!("/admin/agents/{agent_id}"), None);
    assert_eq!(status, 404);
}

#[test]
fn digitalocean_errors_fail_the_server_with_their_message() {
    let fake = FakeDo::start();
    // A wrong API token: DigitalOcean's 401.
    let engine = engine_with(&fake, "dop_v1_wrong", "");
    let id = deploy(&engine, None)["id"].as_str().unwrap().to_owned();
    let server = wait_server(&engine, &id, "failed");
    let error = server["error"].as_str().unwrap();
    assert!(
        error.contains("401") && error.contains("Unable to authenticate you"),
        "{error}"
    );
    assert!(!error.contains("dop_v1_wrong"), "the token is never shown");
    drop(engine);

    let engine = engine_with(&fake, fake.token(), "");
    for (status, message) in [(422, "Region is not available"), (500, "Server Error")] {
        fake.fail_create(status, message);
        let id = deploy(&engine, None)["id"].as_str().unwrap().to_owned();
        let server = wait_server(&engine, &id, "failed");
        let error = server["error"].as_str().unwrap();
        assert!(
            error.contains(&status.to_string()) && error.contains(message),
            "{error}"
        );
    }
    // The 500 was retried (attempts = 2); the 401 and the 422 were not.
    let posts = fake
        .requests()
        .iter()
        .filter(|(m, p, _)| m == "POST" && p == "/v2/droplets")
        .count();
    assert_eq!(posts, 4);
    // No answer at all: the request times out.
    fake.hang_create();
    let id = deploy(&engine, None)["id"].as_str().unwrap().to_owned();
    let server = wait_server(&engine, &id, "failed");
    assert!(
        server["error"]
            .as_str()
            .unwrap()
            .contains("did not answer within 1s"),
        "{server}"
    );
    // A hostile name never reaches DigitalOcean.
    let (status, body) = engine.admin(
        "POST",
        "/admin/servers/deploy-with-agent",
        Some(json!({"name": "a.com; rm -rf /"})),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid name"),
        "{body}"
    );
}

#[test]
fn provisioning_resumes_after_an_engine_restart_then_times_out_without_an_agent() {
    let fake = FakeDo::start();
    fake.set_active_after(1_000_000);
    let mut engine = engine_with(&fake, fake.token(), "agent_connect_timeout = \"4s\"\n");
    let id = deploy(&engine, None)["id"].as_str().unwrap().to_owned();
    wait_server(&engine, &id, "provisioning");
    assert_eq!(engine.stop(), 0);
    // While the engine is down the droplet comes up; the restarted loop sees it.
    fake.set_active_after(0);
    engine.spawn();
    let server = wait_server(&engine, &id, "initializing");
    assert!(server["ip"].is_string());
    // No agent ever connects: failed, saying what to check.
    let server = wait_server(&engine, &id, "failed");
    let error = server["error"].as_str().unwrap();
    assert!(error.contains("no agent connected within 4s"), "{error}");
    assert!(error.contains("citrus-init.log"), "{error}");
}

// --- Issue 12: cloud-init installs from the engine, and the host profile makes the host ready.

/// Runs the rendered user-data for real with every path under `root` and a `systemctl` stand-in
/// that records its arguments in `root/systemctl.log`; answers the exit code.
fn run_user_data(user_data: &str, root: &std::path::Path) -> i32 {
    use std::os::unix::fs::PermissionsExt;
    let bin = root.join("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let systemctl = bin.join("systemctl");
    std::fs::write(
        &systemctl,
        "#!/bin/sh\necho \"$*\" >> \"$CITRUS_INIT_ROOT/systemctl.log\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = root.join("user-data.sh");
    std::fs::write(&script, user_data).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = std::process::Command::new("bash")
        .arg(&script)
        .env("CITRUS_INIT_ROOT", root)
        .env("PATH", path)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_for("the user-data script to end", DEADLINE, || {
        match child.try_wait().unwrap() {
            Some(status) => Ok(status),
            None => Err("running".into()),
        }
    });
    status.code().unwrap_or(-1)
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_provisioned_host_installs_citrusd_from_the_engine_and_runs_its_profile() {
    use crate::releases::{fake_elf, sha256_hex, upload};
    let fake = FakeDo::start();
    let mut engine = EngineProc::prepare(
        &format!(
            "status_interval = \"500ms\"\nmax_release_size = \"512M\"\nhost_profile = \"host.toml\"\n\
             [digitalocean]\napi_base = \"{}\"\npoll_interval = \"200ms\"\ntimeout = \"1s\"\nattempts = 2\n",
            fake.base
        ),
        &[("DO_API_TOKEN", fake.token())],
    );
    std::fs::write(
        engine.dir.path().join("host.toml"),
        "[fleet.sites]\ncreate = [\"echo\", \"created\", \"{domain}\"]\n\n\
         [jobs.health]\nschedule = \"*/5 * * * *\"\nkind = \"health\"\n\n\
         [apps.heartbeat]\ncommand = [\"sleep\", \"3600\"]\n",
    )
    .unwrap();
    engine.spawn();

    // Nothing to install yet: refused, saying how to fix it.
    let (status, body) = engine.admin("POST", "/admin/servers/deploy-with-agent", Some(json!({})));
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upload a release"),
        "{body}"
    );
    let unknown = "0".repeat(64);
    let (status, body) = engine.admin(
        "POST",
        "/admin/servers/deploy-with-agent",
        Some(json!({"release": unknown})),
    );
    assert_eq!(status, 404, "{body}");

    // An older release, then the real citrusd: the newest is what cloud-init installs.
    assert_eq!(
        upload(
            &engine,
            "version=0.0.1&arch=x86_64",
            fake_elf(62, 5000),
            false
        )
        .0,
        201
    );
    let citrusd = std::fs::read(crate::support::CITRUSD).unwrap();
    let sha = sha256_hex(&citrusd);
    let (status, body) = upload(
        &engine,
        "version=0.1.0-test&arch=x86_64",
        citrusd.clone(),
        false,
    );
    assert_eq!(status, 201, "{body}");
    let server = deploy(&engine, Some("web-9"));
    let (server_id, agent_id) = (
        server["id"].as_str().unwrap().to_owned(),
        server["agent"]["id"].as_str().unwrap().to_owned(),
    );
    wait_server(&engine, &server_id, "initializing");
    let user_data = fake.created()[0]["user_data"].as_str().unwrap().to_owned();
    assert!(
        user_data.contains(&format!("'{}/releases/{sha}'", engine.url())),
        "the script downloads the newest release from the engine"
    );

    // The script, for real, under a temp root.
    let root = tempfile::tempdir().unwrap();
    let code = run_user_data(&user_data, root.path());
    let log = std::fs::read_to_string(root.path().join("var/log/citrus-init.log")).unwrap();
    assert_eq!(code, 0, "{log}");
    assert!(log.trim_end().ends_with("citrus-init: done"), "{log}");
    let installed = root.path().join("usr/local/bin/citrusd");
    assert_eq!(
        sha256_hex(&std::fs::read(&installed).unwrap()),
        sha,
        "the release, byte for byte"
    );
    assert_eq!(mode(&installed), 0o755);
    assert_eq!(mode(&root.path().join("var/log/citrus-init.log")), 0o600);
    let config_path = root.path().join("etc/citrus/citrusd.toml");
    assert_eq!(mode(&config_path), 0o600);
    let systemctl = std::fs::read_to_string(root.path().join("systemctl.log")).unwrap();
    assert_eq!(systemctl, "daemon-reload\nenable --now citrusd\n");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let token = config
        .lines()
        .find_map(|l| l.strip_prefix("enroll_token = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    assert!(!log.contains(&token), "the token is not in the log");
    assert!(config.starts_with("[fleet.sites]"), "{config}");

    // citrusd (the same bytes the script installed) starts on the config the script wrote.
    let config = config
        .replace("/var/lib/citrus", "state")
        .replace("/var/log/citrus", "logs")
        .replace("/etc/citrus/agent.key", "agent.key");
    let daemon = Daemon::start(&config);
    wait_server(&engine, &server_id, "active");
    engine.wait_agent_status(&agent_id, "online");
    // The profile's app runs, and reaches the engine in the host's status.
    wait_for("heartbeat online in the agent's status", DEADLINE, || {
        let status = engine.agent(&agent_id)["status"].clone();
        let online = status["apps"].as_array().is_some_and(|apps| {
            apps.iter()
                .any(|a| a["name"] == "heartbeat" && a["state"] == "online")
        });
        if online {
            Ok(())
        } else {
            Err(status.to_string())
        }
    });
    // create_site runs the profile's template on the fresh host.
    engine.create_site_completes(&agent_id, "shop.example.com");
    drop(daemon);

    // The file the engine serves is damaged (same length): the checksum step stops the script
    // with the reason in its log, and nothing is installed.
    {
        use std::io::{Seek, SeekFrom, Write};
        let stored = engine.dir.path().join("state/releases").join(&sha);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(stored)
            .unwrap();
        file.seek(SeekFrom::Start(4096)).unwrap();
        file.write_all(b"tampered").unwrap();
    }
    let root = tempfile::tempdir().unwrap();
    let code = run_user_data(&user_data, root.path());
    let log = std::fs::read_to_string(root.path().join("var/log/citrus-init.log")).unwrap();
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("checksum mismatch"), "{log}");
    assert!(
        log.contains(&format!("sha256 {sha}); refusing to install it")),
        "{log}"
    );
    assert!(
        log.contains("FAILED (exit 1) at step: verifying the citrusd checksum"),
        "{log}"
    );
    assert!(!root.path().join("usr/local/bin/citrusd").exists());
    assert!(!root.path().join("etc/citrus/citrusd.toml").exists());
    assert!(!root.path().join("systemctl.log").exists());
}

#[test]
fn a_bad_host_profile_stops_the_engine_with_the_line() {
    let mut engine = EngineProc::prepare("host_profile = \"host.toml\"\n", &[]);
    std::fs::write(
        engine.dir.path().join("host.toml"),
        "[apps.web]\ncommand = [\"node\"]\nrestart_delay = \"soon\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(crate::hub_support::ENGINE)
        .arg("--config")
        .arg(&engine.config)
        .env("CITRUS_ADMIN_TOKEN", crate::hub_support::ADMIN_TOKEN)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("host profile") && stderr.contains("host.toml:3"),
        "{stderr}"
    );
    // Fixed, it starts.
    std::fs::write(
        engine.dir.path().join("host.toml"),
        "[apps.web]\ncommand = [\"node\"]\n",
    )
    .unwrap();
    engine.spawn();
}
