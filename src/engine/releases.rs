//! The engine as the fleet's release server (issue 12): citrusd binaries uploaded by the admin
//! (`POST /admin/releases?version=V&arch=ARCH`, raw body), listed and deleted under `/admin/`,
//! and served to agents and cloud-init without a secret at `GET /releases/{sha256}`.
//!
//! A release is the file `<releases_dir>/<sha256>` and its row in the store. An upload streams
//! to a temp file in that directory while it is hashed and counted (at most
//! `max_release_size`), its first bytes must be the ELF header of a 64-bit little-endian
//! executable for the given arch, then it is fsynced, renamed to its SHA-256 and the directory
//! fsynced, and only then recorded. Files are immutable: the same SHA-256 is the same bytes, so
//! downloads are cacheable forever.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::digest;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::{ApiError, ApiResult};
use super::store::ReleaseRow;
use super::{auth, now, Engine};

/// The architectures a release may be built for, with their ELF `e_machine`.
pub const ARCHES: &[(&str, u16)] = &[("x86_64", 62), ("aarch64", 183)];

/// The arch of DigitalOcean's droplets: what cloud-init installs.
pub const DROPLET_ARCH: &str = "x86_64";

/// Prefix of the temp files of uploads in progress (removed at start: see [`clean_uploads`]).
const UPLOAD_PREFIX: &str = ".upload-";

/// Bytes read from the release file per chunk of a download.
const CHUNK: usize = 64 * 1024;

/// The admin routes (behind the admin check of [`super::api::admin_routes`]).
pub fn admin_routes() -> Router<Arc<Engine>> {
    Router::new()
        .route("/admin/releases", get(list).post(upload))
        .route("/admin/releases/{sha256}", get(show).delete(delete))
}

/// The public download route: no token (a release holds no secret, and its name is its
/// checksum).
pub fn public_routes() -> Router<Arc<Engine>> {
    Router::new().route("/releases/{sha256}", get(download))
}

/// Checks a release name: exactly 64 lowercase hex digits.
pub fn check_sha256(sha256: &str) -> Result<(), ApiError> {
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    match sha256.len() == 64 && sha256.bytes().all(hex) {
        true => Ok(()),
        false => Err(ApiError::bad_request(format!(
            "invalid release {:?}: a release is named by its SHA-256, 64 lowercase hex digits (see GET /admin/releases)",
            sha256.chars().take(80).collect::<String>()
        ))),
    }
}

/// The release `sha256`, or a 404 saying where to look.
pub async fn find(engine: &Engine, sha256: &str) -> Result<ReleaseRow, ApiError> {
    check_sha256(sha256)?;
    engine.store.get_release(sha256).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no release {sha256}: upload it with POST /admin/releases, or pick one from GET /admin/releases"),
        )
    })
}

/// Checks the `sha256` of an `update_agent` command before it is sent: a string naming a
/// release this engine has (any case; stored lowercase back into the command), else a 400 or
/// 404 saying so — an agent is never sent to download what the engine cannot serve.
pub async fn check_update(engine: &Engine, sha256: &mut serde_json::Value) -> Result<(), ApiError> {
    let serde_json::Value::String(text) = sha256 else {
        return Err(ApiError::bad_request(
            "field `sha256` must be a string: the SHA-256 of a release (GET /admin/releases)",
        ));
    };
    let lower = text.to_ascii_lowercase();
    find(engine, &lower).await?;
    *text = lower;
    Ok(())
}

/// Why the first bytes of an upload are not a citrusd for `arch`; `None` when they are the
/// header of a 64-bit little-endian ELF executable (`ET_EXEC`, or `ET_DYN` for PIE) for it.
pub fn elf_refusal(header: &[u8], arch: &str) -> Option<String> {
    let (arch, machine) = *ARCHES.iter().find(|(a, _)| *a == arch)?;
    let not = "is not a citrusd binary";
    if header.len() < 64 {
        return Some(format!(
            "the upload {not}: it is {} bytes, shorter than an ELF header",
            header.len()
        ));
    }
    if &header[..4] != b"\x7fELF" {
        return Some(format!(
            "the upload {not}: it is not an ELF executable (no \\x7fELF magic); upload the file `cargo build --profile dist` wrote, not an archive or script"
        ));
    }
    if header[4] != 2 {
        return Some(format!(
            "the upload {not}: it is a 32-bit ELF; releases are 64-bit"
        ));
    }
    if header[5] != 1 {
        return Some(format!("the upload {not}: it is a big-endian ELF"));
    }
    let half = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
    match half(16) {
        2 | 3 => {}
        1 => {
            return Some(format!(
                "the upload {not}: it is an ELF object file (.o), not an executable"
            ))
        }
        4 => return Some(format!("the upload {not}: it is an ELF core dump")),
        other => return Some(format!("the upload {not}: unknown ELF type {other}")),
    }
    let got = half(18);
    if got != machine {
        let name = ARCHES
            .iter()
            .find(|(_, m)| *m == got)
            .map_or_else(|| format!("ELF machine {got}"), |(a, _)| (*a).to_owned());
        return Some(format!(
            "the upload is a {name} executable, but arch={arch}: upload the build for {arch}, or set arch={name}"
        ));
    }
    None
}

/// Removes the temp files of uploads a previous run left behind (it stopped mid-upload).
pub fn clean_uploads(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(UPLOAD_PREFIX)
        {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(file = %path.display(), "removed an unfinished upload"),
                Err(e) => {
                    tracing::warn!(file = %path.display(), "cannot remove an unfinished upload: {e}")
                }
            }
        }
    }
}

/// A failure of the releases directory: logged with its cause, a 500 for the caller.
fn io_error(what: &str, path: &Path, e: std::io::Error) -> ApiError {
    tracing::error!(file = %path.display(), "cannot {what}: {e}");
    let message = match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            format!(
                "the engine's releases directory is full ({e}); free space or delete old releases"
            )
        }
        _ => format!("cannot {what} in the engine's releases directory; the engine's log says why"),
    };
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
}

#[derive(Deserialize)]
struct UploadQuery {
    version: Option<String>,
    arch: Option<String>,
}

/// Checks a version label: 1 to 64 of letters, digits, `.`, `_`, `+`, `-`.
fn check_version(version: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&version.len())
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
    match ok {
        true => Ok(()),
        false => Err(ApiError::bad_request(format!(
            "invalid version {:?}: use 1 to 64 letters, digits, '.', '_', '+' or '-', e.g. version=0.4.2",
            version.chars().take(80).collect::<String>()
        ))),
    }
}

/// Deletes the temp file on every path that does not rename it.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), "cannot remove a refused upload: {e}");
            }
        }
    }
}

/// `POST /admin/releases?version=V&arch=ARCH` with the binary as the raw body → 201
/// `{release}` (200 when the same binary was already stored).
async fn upload(
    State(engine): State<Arc<Engine>>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let choices = ARCHES
        .iter()
        .map(|(a, _)| *a)
        .collect::<Vec<_>>()
        .join(", ");
    let version = q.version.ok_or_else(|| {
        ApiError::bad_request(
            "missing `version` in the query: POST /admin/releases?version=0.4.2&arch=x86_64",
        )
    })?;
    check_version(&version)?;
    let arch = q.arch.ok_or_else(|| {
        ApiError::bad_request(format!(
            "missing `arch` in the query (one of: {choices}), e.g. ?version={version}&arch=x86_64"
        ))
    })?;
    if !ARCHES.iter().any(|(a, _)| *a == arch) {
        return Err(ApiError::bad_request(format!(
            "unknown arch {:?}: one of {choices}",
            arch.chars().take(40).collect::<String>()
        )));
    }
    let max = engine.config.max_release_size;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the release is larger than max_release_size ({max} bytes): build with `--profile dist`, or raise max_release_size in {}",
                engine.config.path.display()
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }

    let dir = &engine.config.releases_dir;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| io_error("create the directory", dir, e))?;
    let temp_path = dir.join(format!("{UPLOAD_PREFIX}{}", auth::random_hex(8)));
    let mut file = tokio::fs::File::create(&temp_path)
        .await
        .map_err(|e| io_error("create a temp file", &temp_path, e))?;
    let mut temp = TempFile(Some(temp_path.clone()));

    let mut hasher = digest::Context::new(&digest::SHA256);
    let mut size: u64 = 0;
    let mut header = Vec::with_capacity(64);
    let mut refusal: Option<String> = None;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("the upload was cut short: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        size += data.len() as u64;
        if size > max {
            return Err(too_large());
        }
        if refusal.is_some() {
            // Read to the end (bounded above) so that the client gets the answer, not a reset.
            continue;
        }
        if header.len() < 64 {
            let take = (64 - header.len()).min(data.len());
            header.extend_from_slice(&data[..take]);
            if header.len() == 64 {
                refusal = elf_refusal(&header, &arch);
                if refusal.is_some() {
                    continue;
                }
            }
        }
        hasher.update(&data);
        file.write_all(&data)
            .await
            .map_err(|e| io_error("write the upload", &temp_path, e))?;
    }
    if header.len() < 64 {
        refusal = elf_refusal(&header, &arch);
    }
    if let Some(why) = refusal {
        tracing::warn!(version, arch, size, "release refused: {why}");
        return Err(ApiError::bad_request(why));
    }
    file.sync_all()
        .await
        .map_err(|e| io_error("fsync the upload", &temp_path, e))?;
    drop(file);
    let sha256 = auth::hex(hasher.finish().as_ref());
    let final_path = dir.join(&sha256);
    tokio::fs::rename(&temp_path, &final_path)
        .await
        .map_err(|e| io_error("rename the upload", &final_path, e))?;
    temp.0 = None;
    let dir_owned = dir.clone();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir_owned)?.sync_all())
        .await
        .map_err(|e| io_error("fsync", dir, std::io::Error::other(e)))?
        .map_err(|e| io_error("fsync", dir, e))?;

    let row = ReleaseRow {
        sha256,
        version,
        arch,
        size: size as i64,
        created_at: now(),
    };
    let (release, new) = engine.store.insert_release(&row).await?;
    tracing::info!(sha256 = %release.sha256, version = %release.version, arch = %release.arch, size, new, "release stored");
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "release": release }))).into_response())
}

/// `GET /admin/releases` → `{releases}`, newest first.
async fn list(State(engine): State<Arc<Engine>>) -> ApiResult {
    let releases = engine.store.list_releases().await?;
    Ok(Json(json!({ "releases": releases })).into_response())
}

/// `GET /admin/releases/{sha256}` → `{release, runningOn}`.
async fn show(State(engine): State<Arc<Engine>>, UrlPath(sha256): UrlPath<String>) -> ApiResult {
    let release = find(&engine, &sha256).await?;
    let running = engine.store.agents_running(&sha256).await?;
    Ok(Json(json!({ "release": release, "runningOn": running })).into_response())
}

/// `DELETE /admin/releases/{sha256}`: refused (409) while an agent reports running it.
async fn delete(State(engine): State<Arc<Engine>>, UrlPath(sha256): UrlPath<String>) -> ApiResult {
    let release = find(&engine, &sha256).await?;
    let running = engine.store.agents_running(&sha256).await?;
    if !running.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "release {sha256} is running on agent(s) {}: update them to another release first",
                running.join(", ")
            ),
        ));
    }
    engine.store.delete_release(&sha256).await?;
    let path = engine.config.releases_dir.join(&sha256);
    match tokio::fs::remove_file(&path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(file = %path.display(), "release deleted, but its file stays: {e}")
        }
    }
    tracing::info!(sha256, version = %release.version, "release deleted");
    Ok(Json(json!({ "success": true, "release": release })).into_response())
}

/// `GET /releases/{sha256}`: the binary, streamed, with its length and checksum; immutable.
async fn download(
    State(engine): State<Arc<Engine>>,
    UrlPath(sha256): UrlPath<String>,
    headers: HeaderMap,
) -> ApiResult {
    let release = find(&engine, &sha256).await?;
    let etag = format!("\"{sha256}\"");
    let cache = "public, max-age=31536000, immutable";
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let path = engine.config.releases_dir.join(&sha256);
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::error!(file = %path.display(), "release {sha256} is recorded but its file is missing");
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("release {sha256} is recorded but its file is gone; upload it again"),
                ));
            }
            Err(e) => return Err(io_error("open", &path, e)),
        };
        let stream = futures_util::stream::unfold(file, |mut file| async move {
            let mut buf = bytes::BytesMut::with_capacity(CHUNK);
            match file.read_buf(&mut buf).await {
                Ok(0) => None,
                Ok(_) => Some((Ok::<_, std::io::Error>(buf.freeze()), file)),
                Err(e) => Some((Err(e), file)),
            }
        });
        let mut response = Body::from_stream(stream).into_response();
        let h = response.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(release.size));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        response
    };
    let h = response.headers_mut();
    let value = |s: &str| HeaderValue::from_str(s).expect("hex is a valid header value");
    h.insert(header::ETAG, value(&etag));
    h.insert("x-checksum-sha256", value(&sha256));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(class: u8, data: u8, kind: u16, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = class;
        h[5] = data;
        h[16..18].copy_from_slice(&kind.to_le_bytes());
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h
    }

    #[test]
    fn elf_header_checks() {
        assert_eq!(elf_refusal(&elf(2, 1, 2, 62), "x86_64"), None);
        assert_eq!(elf_refusal(&elf(2, 1, 3, 62), "x86_64"), None, "PIE");
        assert_eq!(elf_refusal(&elf(2, 1, 3, 183), "aarch64"), None);
        let refused = |h: &[u8], arch: &str, part: &str| {
            let why = elf_refusal(h, arch).expect("refused");
            assert!(why.contains(part), "{why:?} lacks {part:?}");
        };
        refused(
            &elf(2, 1, 3, 183),
            "x86_64",
            "is a aarch64 executable, but arch=x86_64",
        );
        refused(&elf(2, 1, 3, 40), "x86_64", "ELF machine 40");
        refused(&elf(1, 1, 2, 62), "x86_64", "32-bit");
        refused(&elf(2, 2, 2, 62), "x86_64", "big-endian");
        refused(&elf(2, 1, 1, 62), "x86_64", "object file");
        refused(&elf(2, 1, 4, 62), "x86_64", "core dump");
        refused(
            b"#!/bin/sh\necho hi\n",
            "x86_64",
            "shorter than an ELF header",
        );
        refused(&[b'M'; 100], "x86_64", "no \\x7fELF magic");
    }

    #[test]
    fn names_and_versions() {
        assert!(check_sha256(&"0a".repeat(32)).is_ok());
        for bad in [
            "",
            "..",
            "../etc/passwd",
            &"0A".repeat(32),
            &"0".repeat(63),
            &"g".repeat(64),
        ] {
            assert!(check_sha256(bad).is_err(), "{bad:?}");
        }
        for good in ["0.4.2", "1.0.0-rc.1+abc", "v2_x"] {
            assert!(check_version(good).is_ok(), "{good:?}");
        }
        for bad in ["", "1 2", "a/b", "$(x)", &"1".repeat(65)] {
            assert!(check_version(bad).is_err(), "{bad:?}");
        }
    }
}
