//! Authenticating to NATS and securing the connection: user and password (as flags or in the
//! URL, `nats://user:pass@host`), a token, a credentials file (NATS's `.creds`: JWT and nkey
//! seed), TLS with a CA of the operator's and optionally a client certificate. No secret ever
//! appears in a log line, a `Debug` print or an error: URLs are shown without their user info.

use std::path::PathBuf;

use async_nats::ConnectOptions;

use crate::error::{Error, Result};

/// The security settings of NATS connections.
#[derive(Clone, Default)]
pub struct NatsSecurity {
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// A `.creds` file (JWT and nkey seed).
    pub creds_file: Option<PathBuf>,
    /// PEM file of the CA(s) that signed the server's certificate.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate and key, for servers that verify clients.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Refuse a connection without TLS.
    pub require_tls: bool,
}

impl std::fmt::Debug for NatsSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |o: &Option<String>| o.as_ref().map(|_| "<set>");
        f.debug_struct("NatsSecurity")
            .field("user", &self.user)
            .field("password", &set(&self.password))
            .field("token", &set(&self.token))
            .field("creds_file", &self.creds_file)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("require_tls", &self.require_tls)
            .finish()
    }
}

/// `url` (one or several, comma-separated) without user info, and the first user info found:
/// (user, password).
pub fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    let mut found = None;
    let clean: Vec<String> = url
        .split(',')
        .map(|one| {
            let one = one.trim();
            let (scheme, rest) = one.split_once("://").unwrap_or(("", one));
            let Some((userinfo, host)) = rest.rsplit_once('@') else {
                return one.to_owned();
            };
            if found.is_none() {
                let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                found = Some((user.to_owned(), pass.to_owned()));
            }
            if scheme.is_empty() { host.to_owned() } else { format!("{scheme}://{host}") }
        })
        .collect();
    (clean.join(","), found)
}

impl NatsSecurity {
    /// `options` with these settings (and any user info of `url`) applied; `url` without its
    /// user info, to connect to and to show.
    pub async fn apply(
        &self,
        url: &str,
        options: ConnectOptions,
    ) -> Result<(String, ConnectOptions)> {
        let (clean, in_url) = split_credentials(url);
        let mut options = options;
        let user = self.user.clone().or_else(|| in_url.as_ref().map(|(u, _)| u.clone()));
        let password = self.password.clone().or_else(|| in_url.map(|(_, p)| p));
        match (user, password) {
            (Some(user), password) => {
                options = options.user_and_password(user, password.unwrap_or_default());
            }
            (None, Some(_)) => {
                return Err(Error::Config("a NATS password needs a user (--nats-user)".into()));
            }
            (None, None) => {}
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(path) = &self.creds_file {
            options = options.credentials_file(path).await.map_err(|e| {
                Error::Config(format!(
                    "cannot read the NATS credentials file {}: {e}",
                    path.display()
                ))
            })?;
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
            (None, None) => {}
            _ => {
                return Err(Error::Config(
                    "a NATS client certificate needs both --nats-tls-cert and --nats-tls-key"
                        .into(),
                ));
            }
        }
        let tls = self.require_tls || self.tls_ca.is_some() || self.tls_cert.is_some();
        if tls || clean.split(',').any(|u| u.trim().starts_with("tls://")) {
            options = options.require_tls(true);
        }
        Ok((clean, options))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_leaves_the_url_and_is_returned() {
        let (url, creds) = split_credentials("nats://alice:s3cr%t@10.0.0.1:4222");
        assert_eq!(url, "nats://10.0.0.1:4222");
        assert_eq!(creds, Some(("alice".into(), "s3cr%t".into())));
        let (url, creds) = split_credentials("nats://a:b@h1:4222, nats://h2:4222");
        assert_eq!(url, "nats://h1:4222,nats://h2:4222");
        assert_eq!(creds, Some(("a".into(), "b".into())));
        assert_eq!(split_credentials("nats://h:4222"), ("nats://h:4222".into(), None));
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let s = NatsSecurity {
            user: Some("alice".into()),
            password: Some("hunter2".into()),
            token: Some("tok3n".into()),
            ..NatsSecurity::default()
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("tok3n"), "{shown}");
    }
}
