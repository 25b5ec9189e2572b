//! TLS on the TCP planes: the request plane, the workers' event streams and the KV transfer
//! between prefill and decode workers. Every process is given the same three files: the CA
//! that signed the fabric's certificates, its own certificate and its key. Servers present
//! the certificate and, with `verify_clients`, accept only clients whose certificate the CA
//! signed (mutual TLS); clients check the server against the CA and present their own.
//!
//! Certificates name the host each worker advertises (its `--advertise-host`, or the IP it
//! binds), since clients check that name, and allow both server and client authentication
//! (extended key usage `serverAuth,clientAuth`): a decode worker is a client of prefill
//! workers, and every process presents its own certificate.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::error::{Error, Result};

/// Loaded TLS settings of the TCP planes. Cheap to clone.
#[derive(Clone)]
pub struct PlaneTls {
    ca: Certificate,
    identity: Identity,
    verify_clients: bool,
}

impl std::fmt::Debug for PlaneTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("PlaneTls").field("verify_clients", &self.verify_clients).finish()
    }
}

impl PlaneTls {
    /// Reads the CA, certificate and key (PEM files).
    pub fn load(ca: &Path, cert: &Path, key: &Path, verify_clients: bool) -> Result<PlaneTls> {
        let read = |what: &str, path: &Path| {
            std::fs::read(path).map_err(|e| {
                Error::Config(format!("cannot read the plane's TLS {what} {}: {e}", path.display()))
            })
        };
        Ok(PlaneTls {
            ca: Certificate::from_pem(read("CA", ca)?),
            identity: Identity::from_pem(read("certificate", cert)?, read("key", key)?),
            verify_clients,
        })
    }

    /// The server side: this process's certificate, and the CA its clients must be signed by
    /// when clients are verified.
    pub fn server(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new().identity(self.identity.clone());
        if self.verify_clients { config.client_ca_root(self.ca.clone()) } else { config }
    }

    fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(self.ca.clone()).identity(self.identity.clone())
    }
}

/// The endpoint of `address` (`host:port`, or a full URI): over TLS when `tls` is given.
pub fn endpoint(address: &str, tls: Option<&PlaneTls>) -> Result<Endpoint> {
    let invalid = |e: String| Error::Connect { address: address.to_owned(), reason: e };
    let uri = match (address.split_once("://"), tls) {
        (Some(_), _) => address.to_owned(),
        (None, Some(_)) => format!("https://{address}"),
        (None, None) => format!("http://{address}"),
    };
    let endpoint =
        Endpoint::from_shared(uri).map_err(|e| invalid(format!("invalid address: {e}")))?;
    match tls {
        Some(tls) => {
            endpoint.tls_config(tls.client()).map_err(|e| invalid(format!("TLS settings: {e}")))
        }
        None => Ok(endpoint),
    }
}
