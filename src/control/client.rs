//! A small HTTP/1.1 client for the control socket (hyper over a Unix stream), used by `citrusctl`
//! and by tests.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use super::{ApiError, ErrorBody, ErrorCode};

/// Why a control request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket: the daemon is not running (or the path is wrong).
    #[error("citrusd is not reachable on {path}: {source}\nhint: start it with `citrusd`, or pass --socket / set CITRUS_SOCKET to the socket it uses")]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered with an error.
    #[error("{}{}", .0.message, .0.hint.as_deref().map(|h| format!("\nhint: {h}")).unwrap_or_default())]
    Api(ApiError),
    /// The exchange itself broke (connection dropped, unreadable reply).
    #[error("control request {what} failed: {detail}")]
    Protocol { what: String, detail: String },
}

/// Talks to one daemon socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path`, decoding the JSON reply.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.call(Method::GET, path, None).await?;
        decode(path, &body)
    }

    /// `POST path` with a JSON body, decoding the JSON reply.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let json = serde_json::to_vec(body).map_err(|e| protocol(path, e))?;
        let reply = self.call(Method::POST, path, Some(json)).await?;
        decode(path, &reply)
    }

    /// `DELETE path`, decoding the JSON reply.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.call(Method::DELETE, path, None).await?;
        decode(path, &body)
    }

    /// `GET path` as raw bytes (Prometheus metrics).
    pub async fn get_raw(&self, path: &str) -> Result<Bytes, ClientError> {
        self.call(Method::GET, path, None).await
    }

    /// `GET path`, handing each body chunk to `sink` as it arrives (for `logs -f`).
    pub async fn stream(&self, path: &str, mut sink: impl FnMut(&[u8])) -> Result<(), ClientError> {
        let mut body = self.open(Method::GET, path, None).await?;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| protocol(path, e))?;
            if let Some(data) = frame.data_ref() {
                sink(data);
            }
        }
        Ok(())
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let body = self.open(method, path, body).await?;
        Ok(body
            .collect()
            .await
            .map_err(|e| protocol(path, e))?
            .to_bytes())
    }

    /// Sends the request and returns the body of a successful reply; an error reply is decoded
    /// into [`ClientError::Api`].
    async fn open(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::body::Incoming, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Unreachable {
                    path: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| protocol(path, e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| protocol(path, e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| protocol(path, e))?;
        let status = resp.status();
        let body = resp.into_body();
        if status.is_success() {
            return Ok(body);
        }
        let bytes = body
            .collect()
            .await
            .map_err(|e| protocol(path, e))?
            .to_bytes();
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => ClientError::Api(e.error),
            Err(_) => ClientError::Api(ApiError {
                code: if status == StatusCode::NOT_FOUND {
                    ErrorCode::BadRequest
                } else {
                    ErrorCode::Failed
                },
                message: format!(
                    "citrusd answered {status}: {}",
                    String::from_utf8_lossy(&bytes).trim()
                ),
                hint: None,
            }),
        })
    }
}

fn decode<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|e| protocol(path, e))
}

fn protocol(path: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol {
        what: path.to_string(),
        detail: e.to_string(),
    }
}
