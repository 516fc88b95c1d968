//! The agent's TLS client configuration, one for everything it reaches: the engine's
//! WebSocket, enrolment, and https git remotes.

use std::path::Path;
use std::sync::Arc;

/// The system's root certificates plus those of `ca_file` (PEM), if any.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(ca) = ca_file {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("cannot read ca_file {}: {e}", ca.display()))?;
        for cert in certs {
            let cert =
                cert.map_err(|e| format!("bad certificate in ca_file {}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("unusable certificate in ca_file {}: {e}", ca.display()))?;
        }
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}
