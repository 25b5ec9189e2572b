//! TLS on the frontend's HTTP server (HTTPS), with rustls: a certificate chain and its key
//! from PEM files. Clients are not asked for certificates; API keys authenticate them.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::error::Error;

/// The loaded certificate and key. Cheap to clone; never prints the key.
#[derive(Clone)]
pub struct HttpTls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for HttpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpTls")
    }
}

impl HttpTls {
    /// Reads the certificate chain (PEM, the server's certificate first) and its private key
    /// (PEM: PKCS#8, PKCS#1 or SEC1); a clear error when either is missing or does not parse,
    /// or when they do not belong together.
    pub fn load(cert: &Path, key: &Path) -> Result<HttpTls, Error> {
        let fail = |what: String| Error::Config(format!("HTTPS: {what}"));
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| fail(format!("cannot read the certificate {}: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(fail(format!("{} holds no certificate", cert.display())));
        }
        // The error of a key file never quotes its content.
        let key_der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| fail(format!("cannot read the private key {}: {e}", key.display())))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key_der))
            .map_err(|e| fail(format!("the certificate and key do not make a server: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(HttpTls { acceptor: TlsAcceptor::from(Arc::new(config)) })
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}
