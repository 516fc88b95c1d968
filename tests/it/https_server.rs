//! A small HTTPS server for tests: std threads, rustls, a self-signed certificate for
//! `localhost`, one request per connection, raw responses from a handler.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A request as the handler sees it.
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// An HTTPS server on 127.0.0.1 with a self-signed certificate for `localhost`: each request
/// (one per connection) is answered with the raw HTTP response its handler makes.
pub struct HttpsServer {
    port: u16,
    pem: String,
    /// "METHOD PATH" of every request, in order.
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl HttpsServer {
    /// `handler(request, port)` makes each response.
    pub fn start(
        handler: impl Fn(&Request, u16) -> Vec<u8> + Send + Sync + 'static,
    ) -> HttpsServer {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let pem = cert.cert.pem();
        let key =
            rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.cert.der().clone()], key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let (seen, stopping) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (config, seen, handler) = (config.clone(), seen.clone(), handler.clone());
                std::thread::spawn(move || serve(stream, config, port, &seen, &*handler));
            }
        });
        HttpsServer {
            port,
            pem,
            requests,
            stop,
        }
    }

    /// `https://localhost:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}/{path}", self.port)
    }

    /// The self-signed certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// "METHOD PATH" of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// The client side's TLS: the system roots plus this server's certificate.
    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_slice(self.pem.as_bytes()).unwrap())
            .unwrap();
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One request on one connection.
fn serve(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    port: u16,
    seen: &Mutex<Vec<String>>,
    handler: &(dyn Fn(&Request, u16) -> Vec<u8> + Send + Sync),
) {
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    let mut line = String::new();
    if tls.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let (mut content_type, mut length) = (String::new(), 0usize);
    loop {
        let mut header = String::new();
        if tls.read_line(&mut header).is_err() || header.trim().is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((&header, ""));
        match name.to_ascii_lowercase().as_str() {
            "content-type" => content_type = value.trim().to_string(),
            "content-length" => length = value.trim().parse().unwrap_or(0),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    if tls.read_exact(&mut body).is_err() {
        return;
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    seen.lock().unwrap().push(format!("{method} {path}"));
    let request = Request {
        method,
        path: path.to_string(),
        query: query.to_string(),
        content_type,
        body,
    };
    let response = handler(&request, port);
    let stream = tls.get_mut();
    let _ = stream.write_all(&response);
    let _ = stream.flush();
    stream.conn.send_close_notify();
    let _ = stream.flush();
}
