//! Servers provisioned on DigitalOcean with an agent (SPEC 4): `deploy-with-agent`, the durable
//! loop `creating → provisioning → initializing → active | failed`, and deletion.
//!
//! The droplet is created right after the server is recorded, by a task holding the enrolment
//! token in memory only (the store keeps its hash). Everything after that is driven by the
//! server's row, so a restarted engine picks up where it was; a server still `creating` when the
//! engine starts lost its token with the old process and fails with a message saying so.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;

use super::cloud_init::{self, CloudInit};
use super::digitalocean::{CreateDroplet, DoError};
use super::error::ApiError;
use super::store::{ServerRow, ServerStatus, ServerUpdate};
use super::{auth, now, releases, Engine, EngineError};
use crate::config::format_duration;

/// Servers whose droplet this process is creating right now (the enrolment token of each lives
/// only in that task).
#[derive(Default)]
pub struct Creating(Mutex<HashSet<String>>);

impl Creating {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The agents' WebSocket URL derived from `public_url`.
pub fn agent_url(public_url: &str) -> String {
    let ws = public_url
        .strip_prefix("https://")
        .map(|rest| format!("wss://{rest}"))
        .or_else(|| {
            public_url
                .strip_prefix("http://")
                .map(|rest| format!("ws://{rest}"))
        })
        .unwrap_or_else(|| public_url.to_owned());
    format!("{ws}/agent")
}

/// Reads and checks `host_profile` (see [`cloud_init::check_host_profile`]); empty without one.
pub(super) fn load_host_profile(
    config: &crate::config::EngineConfig,
) -> Result<String, EngineError> {
    let Some(path) = &config.host_profile else {
        return Ok(String::new());
    };
    let text = std::fs::read_to_string(path).map_err(|source| EngineError::File {
        what: "read the host profile",
        path: path.display().to_string(),
        source,
    })?;
    cloud_init::check_host_profile(&text, path).map_err(|why| EngineError::HostProfile {
        path: path.display().to_string(),
        why,
    })?;
    Ok(text)
}

/// Checks a server or agent name: a hostname label set (DigitalOcean's droplet name rule).
pub(super) fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.']);
    match ok {
        true => Ok(()),
        false => Err(ApiError::bad_request(format!(
            "invalid name {name:?}: use 1 to 63 letters, digits, '-' or '.', not starting with '-' or '.'"
        ))),
    }
}

/// Where cloud-init gets citrusd: the release asked for, else `[install]` (the override), else
/// the engine's newest release for the droplets' arch; the URL and its SHA-256.
async fn citrusd_source(
    engine: &Engine,
    release: Option<&str>,
) -> Result<(String, String), ApiError> {
    let public = &engine.config.public_url;
    if let Some(sha256) = release {
        let release = releases::find(engine, &sha256.to_ascii_lowercase()).await?;
        if release.arch != releases::DROPLET_ARCH {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "release {} is for {}, but droplets are {}: pick a {} release",
                    release.sha256,
                    release.arch,
                    releases::DROPLET_ARCH,
                    releases::DROPLET_ARCH
                ),
            ));
        }
        return Ok((
            format!("{public}/releases/{}", release.sha256),
            release.sha256,
        ));
    }
    if let Some(install) = &engine.config.install {
        return Ok((install.citrusd_url.clone(), install.citrusd_sha256.clone()));
    }
    match engine.store.newest_release(releases::DROPLET_ARCH).await? {
        Some(release) => Ok((format!("{public}/releases/{}", release.sha256), release.sha256)),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no citrusd to install: upload a release (POST /admin/releases?version=V&arch={}, see the README's \"Releases\") or set [install] in {}",
                releases::DROPLET_ARCH,
                engine.config.path.display()
            ),
        )),
    }
}

/// Records a server named `name` (or `citrus-…`) in `creating` and starts creating its droplet
/// with `release` (else the default citrusd, see [`citrusd_source`]); answers the server.
pub(super) async fn deploy_with_agent(
    engine: &Arc<Engine>,
    name: Option<String>,
    release: Option<&str>,
) -> Result<ServerRow, ApiError> {
    let Some(_) = &engine.digitalocean else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "DigitalOcean is not configured: start the engine with DO_API_TOKEN in its environment",
        ));
    };
    if let Some(name) = &name {
        check_name(name)?;
    }
    let (citrusd_url, citrusd_sha256) = citrusd_source(engine, release).await?;
    let server_id = auth::new_uuid();
    let agent_id = auth::new_uuid();
    let name = name.unwrap_or_else(|| format!("citrus-{}", &server_id[..8]));
    check_name(&name)?;
    let engine_url = agent_url(&engine.config.public_url);
    let at = now();
    let (token, _) = engine.new_enroll_token(&agent_id, &name).await?;
    // Render before anything is created: a bad input fails the request, not a droplet.
    let user_data = cloud_init::render(&CloudInit {
        engine_url: &engine_url,
        agent_id: &agent_id,
        enroll_token: &token,
        citrusd_url: &citrusd_url,
        citrusd_sha256: &citrusd_sha256,
        status_interval: engine.config.status_interval,
        host_profile: &engine.host_profile,
    })
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cloud-init: {e}"),
        )
    })?;
    let d = &engine.config.digitalocean;
    let server = ServerRow {
        id: server_id.clone(),
        name: name.clone(),
        agent_id: agent_id.clone(),
        status: ServerStatus::Creating,
        droplet_id: None,
        ip: None,
        region: d.region.clone(),
        size: d.size.clone(),
        image: d.image.clone(),
        error: None,
        created_at: at,
        updated_at: at,
    };
    engine.store.insert_server(&server).await?;
    engine.live.server(&server);
    let request = CreateDroplet {
        name: name.clone(),
        region: d.region.clone(),
        size: d.size.clone(),
        image: d.image.clone(),
        backups: d.backups,
        ipv6: d.ipv6,
        monitoring: d.monitoring,
        tags: d.tags.clone(),
        user_data,
    };
    engine.creating.lock().insert(server_id.clone());
    tokio::spawn(create_droplet(engine.clone(), server_id.clone(), request));
    tracing::info!(server = %server_id, agent = %agent_id, name = %name, "deploying a server");
    Ok(server)
}

async fn create_droplet(engine: Arc<Engine>, server: String, request: CreateDroplet) {
    let result = match &engine.digitalocean {
        Some(client) => client.create_droplet(&request).await,
        None => unreachable!("checked before the task started"),
    };
    let moved = match result {
        Ok(droplet) => {
            tracing::info!(server = %server, droplet = droplet.id, "droplet created");
            let update = ServerUpdate {
                droplet_id: i64::try_from(droplet.id).ok(),
                ..Default::default()
            };
            engine
                .store
                .move_server(
                    &server,
                    &[ServerStatus::Creating],
                    ServerStatus::Provisioning,
                    update,
                    now(),
                )
                .await
        }
        Err(e) => {
            let error = format!("creating the droplet failed: {e}");
            tracing::error!(server = %server, "{error}");
            let update = ServerUpdate {
                error: Some(&error),
                ..Default::default()
            };
            engine
                .store
                .move_server(
                    &server,
                    &[ServerStatus::Creating],
                    ServerStatus::Failed,
                    update,
                    now(),
                )
                .await
        }
    };
    if let Err(e) = moved {
        tracing::error!(server = %server, "{e}");
    }
    engine.live.server_changed(&engine.store, &server).await;
    engine.creating.lock().remove(&server);
    engine.provision_wake.notify_one();
}

/// Called when an agent connects: its server, if still on the way, is `active`.
pub async fn agent_connected(engine: &Engine, agent: &str) {
    let result = async {
        let Some(server) = engine.store.server_of_agent(agent).await? else {
            return Ok(());
        };
        let from = [ServerStatus::Provisioning, ServerStatus::Initializing];
        if engine
            .store
            .move_server(
                &server.id,
                &from,
                ServerStatus::Active,
                ServerUpdate::default(),
                now(),
            )
            .await?
        {
            tracing::info!(server = %server.id, "server active: its agent connected");
            engine.live.server_changed(&engine.store, &server.id).await;
        }
        Ok::<_, super::store::StoreError>(())
    }
    .await;
    if let Err(e) = result {
        tracing::error!(agent, "{e}");
    }
}

/// The provisioning loop: every `poll_interval`, or when woken, moves each unfinished server.
pub async fn run(engine: Arc<Engine>) {
    let every = engine.config.digitalocean.poll_interval;
    loop {
        match engine.store.servers_in_progress().await {
            Ok(servers) => {
                for server in servers {
                    if let Err(e) = step(&engine, &server).await {
                        tracing::error!(server = %server.id, "{e}");
                    }
                }
            }
            Err(e) => tracing::error!("{e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = engine.provision_wake.notified() => {}
        }
    }
}

async fn fail(
    engine: &Engine,
    server: &ServerRow,
    error: &str,
) -> Result<(), super::store::StoreError> {
    tracing::error!(server = %server.id, "server failed: {error}");
    let update = ServerUpdate {
        error: Some(error),
        ..Default::default()
    };
    let from = [
        ServerStatus::Creating,
        ServerStatus::Provisioning,
        ServerStatus::Initializing,
    ];
    if engine
        .store
        .move_server(&server.id, &from, ServerStatus::Failed, update, now())
        .await?
    {
        engine.live.server_changed(&engine.store, &server.id).await;
    }
    Ok(())
}

async fn step(engine: &Engine, server: &ServerRow) -> Result<(), super::store::StoreError> {
    let timeout = engine.config.agent_connect_timeout;
    if now() - server.created_at > timeout.as_millis() as i64 {
        let error = format!(
            "no agent connected within {} (agent_connect_timeout); see /var/log/citrus-init.log on the droplet",
            format_duration(timeout)
        );
        return fail(engine, server, &error).await;
    }
    if engine.hub.is_connected(&server.agent_id) {
        agent_connected(engine, &server.agent_id).await;
        return Ok(());
    }
    match server.status {
        ServerStatus::Creating if !engine.creating.lock().contains(&server.id) => {
            let error = "the engine restarted before the droplet was created (the enrolment \
                         token lived only in that process); delete this server and deploy again";
            fail(engine, server, error).await
        }
        ServerStatus::Provisioning => {
            let (Some(client), Some(droplet)) = (&engine.digitalocean, server.droplet_id) else {
                return fail(
                    engine,
                    server,
                    "DigitalOcean is not configured (DO_API_TOKEN) to follow the droplet",
                )
                .await;
            };
            match client.get_droplet(droplet as u64).await {
                Ok(d) if d.status == "active" => {
                    let update = ServerUpdate {
                        ip: d.public_ipv4.as_deref(),
                        ..Default::default()
                    };
                    if engine
                        .store
                        .move_server(
                            &server.id,
                            &[ServerStatus::Provisioning],
                            ServerStatus::Initializing,
                            update,
                            now(),
                        )
                        .await?
                    {
                        engine.live.server_changed(&engine.store, &server.id).await;
                    }
                    tracing::info!(server = %server.id, ip = ?d.public_ipv4, "droplet active; waiting for its agent");
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(e) if permanent(&e) => {
                    fail(
                        engine,
                        server,
                        &format!("following droplet {droplet} failed: {e}"),
                    )
                    .await
                }
                Err(e) => {
                    let note = format!("following droplet {droplet}: {e} (retrying)");
                    engine
                        .store
                        .note_server_error(&server.id, &note, now())
                        .await?;
                    engine.live.server_changed(&engine.store, &server.id).await;
                    Ok(())
                }
            }
        }
        _ => Ok(()),
    }
}

/// An answer that retrying will not change.
fn permanent(e: &DoError) -> bool {
    matches!(e.status(), Some(400..=428 | 430..=499))
}

/// Destroys server `id`'s droplet, then forgets the server and its agent; answers the server
/// as it was.
pub(super) async fn delete_server(engine: &Engine, id: &str) -> Result<ServerRow, ApiError> {
    let Some(server) = engine.store.get_server(id).await? else {
        return Err(ApiError::not_found("server", id));
    };
    if engine.creating.lock().contains(id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the droplet is being created right now; retry in a few seconds",
        ));
    }
    if let Some(droplet) = server.droplet_id {
        let Some(client) = &engine.digitalocean else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "DigitalOcean is not configured: start the engine with DO_API_TOKEN to destroy the droplet",
            ));
        };
        client.delete_droplet(droplet as u64).await.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("destroying droplet {droplet} failed: {e}"),
            )
        })?;
    }
    engine
        .hub
        .disconnect(&server.agent_id, 1000, "server deleted");
    engine.store.delete_server(id).await?;
    engine.store.delete_agent(&server.agent_id).await?;
    engine.live.server_deleted(id, &server.agent_id);
    engine.live.deleted(&server.agent_id);
    tracing::info!(server = %id, droplet = ?server.droplet_id, "server deleted");
    Ok(server)
}
