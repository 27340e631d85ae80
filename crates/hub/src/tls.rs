//! HTTPS for `hub serve --tls-cert FILE --tls-key FILE`: rustls (ring provider) with a PEM
//! certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1), read once at start.
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::error::HubServerError;

fn tls_error(path: &Path, message: String) -> HubServerError {
    HubServerError::Tls { path: path.to_owned(), message }
}

/// A TLS acceptor offering HTTP/2 and HTTP/1.1 through ALPN.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, HubServerError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_error(cert, format!("{e}; accepted: a PEM file of one or more CERTIFICATE blocks")))?;
    if chain.is_empty() {
        return Err(tls_error(cert, "no certificate found; accepted: a PEM file of CERTIFICATE blocks".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| tls_error(key, format!("{e}; accepted: a PEM private key (PKCS#8, RSA or EC)")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| tls_error(cert, format!("certificate and key do not form a usable pair: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
