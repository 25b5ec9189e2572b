//! Flags that choose the request plane, shared by every subcommand.

use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use switchyard_runtime::RequestClient;
use switchyard_runtime::discovery::InstanceWatch;
use switchyard_runtime::events::{
    EventSubscriber, NatsEventSubscriber, TcpEventConfig, TcpEventSubscriber,
};
use switchyard_runtime::plane::nats::{self, NatsClient, NatsClientConfig, NatsSecurity};
use switchyard_runtime::plane::tcp::{TcpClient, TcpClientConfig};
use switchyard_runtime::plane::tls::PlaneTls;

use crate::env_names as env;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlaneKind {
    /// Direct gRPC connections from frontends to workers.
    Tcp,
    /// Requests and responses through a NATS server.
    Nats,
}

#[derive(Debug, Clone, Args)]
pub struct PlaneArgs {
    /// How requests reach workers.
    #[arg(long, env = env::REQUEST_PLANE, value_enum, default_value_t = PlaneKind::Tcp)]
    pub request_plane: PlaneKind,

    /// NATS server URL [default: nats://127.0.0.1:4222; also read from NATS_SERVER]. User
    /// info in it (`nats://user:pass@host`) is used to log in and never shown.
    #[arg(long, env = env::NATS_URL, hide_env_values = true)]
    pub nats_url: Option<String>,

    /// NATS user name (with --nats-password).
    #[arg(long, env = env::NATS_USER)]
    pub nats_user: Option<String>,

    /// NATS password.
    #[arg(long, env = env::NATS_PASSWORD, hide_env_values = true)]
    pub nats_password: Option<String>,

    /// NATS authentication token.
    #[arg(long, env = env::NATS_TOKEN, hide_env_values = true)]
    pub nats_token: Option<String>,

    /// NATS credentials file (`.creds`: a user JWT and nkey seed).
    #[arg(long, env = env::NATS_CREDS)]
    pub nats_creds: Option<std::path::PathBuf>,

    /// PEM file of the CA that signed the NATS server's certificate (turns TLS on).
    #[arg(long, env = env::NATS_TLS_CA)]
    pub nats_tls_ca: Option<std::path::PathBuf>,

    /// PEM client certificate for NATS servers that verify clients (with --nats-tls-key).
    #[arg(long, env = env::NATS_TLS_CERT)]
    pub nats_tls_cert: Option<std::path::PathBuf>,

    /// PEM key of --nats-tls-cert.
    #[arg(long, env = env::NATS_TLS_KEY)]
    pub nats_tls_key: Option<std::path::PathBuf>,

    /// Refuse a NATS connection without TLS.
    #[arg(long, env = env::NATS_REQUIRE_TLS)]
    pub nats_require_tls: bool,

    /// TCP plane over TLS (requests, event streams, KV transfer): PEM file of the CA that
    /// signed every process's certificate. Needs --plane-tls-cert and --plane-tls-key.
    #[arg(long, env = env::PLANE_TLS_CA)]
    pub plane_tls_ca: Option<std::path::PathBuf>,

    /// This process's PEM certificate (workers: for the host they advertise).
    #[arg(long, env = env::PLANE_TLS_CERT)]
    pub plane_tls_cert: Option<std::path::PathBuf>,

    /// The PEM key of --plane-tls-cert.
    #[arg(long, env = env::PLANE_TLS_KEY)]
    pub plane_tls_key: Option<std::path::PathBuf>,

    /// Workers accept only clients with a certificate the CA signed (mutual TLS).
    #[arg(long, env = env::PLANE_TLS_VERIFY_CLIENTS)]
    pub plane_tls_verify_clients: bool,
}

impl PlaneArgs {
    pub fn nats_url(&self) -> String {
        self.nats_url
            .clone()
            .or_else(|| env::compat(env::NATS_URL_COMPAT))
            .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned())
    }

    /// The TCP plane's TLS, when its files are given.
    pub fn plane_tls(&self) -> anyhow::Result<Option<PlaneTls>> {
        let (ca, cert, key) = (&self.plane_tls_ca, &self.plane_tls_cert, &self.plane_tls_key);
        match (ca, cert, key) {
            (None, None, None) => {
                anyhow::ensure!(
                    !self.plane_tls_verify_clients,
                    "--plane-tls-verify-clients needs --plane-tls-ca, --plane-tls-cert and --plane-tls-key"
                );
                Ok(None)
            }
            (Some(ca), Some(cert), Some(key)) => {
                Ok(Some(PlaneTls::load(ca, cert, key, self.plane_tls_verify_clients)?))
            }
            _ => anyhow::bail!(
                "TLS on the TCP plane needs all of --plane-tls-ca, --plane-tls-cert and --plane-tls-key"
            ),
        }
    }

    /// Connects to the NATS server; a clear error when it is not running.
    pub async fn connect_nats(&self) -> anyhow::Result<async_nats::Client> {
        let url = self.nats_url();
        let security = NatsSecurity {
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            token: self.nats_token.clone(),
            creds_file: self.nats_creds.clone(),
            tls_ca: self.nats_tls_ca.clone(),
            tls_cert: self.nats_tls_cert.clone(),
            tls_key: self.nats_tls_key.clone(),
            require_tls: self.nats_require_tls,
        };
        let shown = nats::split_credentials(&url).0;
        nats::connect_secure(&url, &security).await.with_context(|| {
            format!("connecting to NATS at {shown} (is it running? set --nats-url)")
        })
    }

    /// The frontend's side of the plane.
    pub async fn client(&self) -> anyhow::Result<Arc<dyn RequestClient>> {
        Ok(match self.request_plane {
            PlaneKind::Tcp => Arc::new(TcpClient::new(TcpClientConfig {
                tls: self.plane_tls()?,
                ..TcpClientConfig::default()
            })),
            PlaneKind::Nats => {
                let client = self.connect_nats().await?;
                Arc::new(NatsClient::new(client, NatsClientConfig::default()).await?)
            }
        })
    }

    /// The frontend's side of the event plane, for the workers of `namespace`: in TCP mode one
    /// stream per instance of `instances` (keep the watch alive while the subscriber is used).
    pub async fn event_subscriber(
        &self,
        namespace: &str,
        instances: &InstanceWatch,
    ) -> anyhow::Result<Arc<dyn EventSubscriber>> {
        Ok(match self.request_plane {
            PlaneKind::Tcp => {
                let config = TcpEventConfig { tls: self.plane_tls()?, ..TcpEventConfig::default() };
                Arc::new(TcpEventSubscriber::new(instances.subscribe(), config))
            }
            PlaneKind::Nats => {
                let client = self.connect_nats().await?;
                Arc::new(NatsEventSubscriber::new(client, namespace)?)
            }
        })
    }

    /// Flags that give a child process the same plane.
    pub fn to_flags(&self) -> Vec<String> {
        let mut flags: Vec<String> = vec!["--request-plane".into()];
        match self.request_plane {
            PlaneKind::Tcp => flags.push("tcp".into()),
            PlaneKind::Nats => flags.push("nats".into()),
        }
        let paths = [
            ("--plane-tls-ca", &self.plane_tls_ca),
            ("--plane-tls-cert", &self.plane_tls_cert),
            ("--plane-tls-key", &self.plane_tls_key),
            ("--nats-creds", &self.nats_creds),
            ("--nats-tls-ca", &self.nats_tls_ca),
            ("--nats-tls-cert", &self.nats_tls_cert),
            ("--nats-tls-key", &self.nats_tls_key),
        ];
        for (flag, path) in paths {
            if let Some(path) = path {
                flags.extend([flag.to_owned(), path.display().to_string()]);
            }
        }
        if let Some(user) = &self.nats_user {
            flags.extend(["--nats-user".to_owned(), user.clone()]);
        }
        if self.nats_require_tls {
            flags.push("--nats-require-tls".into());
        }
        if self.plane_tls_verify_clients {
            flags.push("--plane-tls-verify-clients".into());
        }
        flags
    }

    /// What a child process gets in its environment rather than on its command line, where
    /// any user of the machine could read it: the NATS URL (it may hold a password) and the
    /// secrets.
    pub fn secret_env(&self) -> Vec<(&'static str, String)> {
        let mut vars = Vec::new();
        if self.request_plane == PlaneKind::Nats {
            vars.push((env::NATS_URL, self.nats_url()));
        }
        if let Some(password) = &self.nats_password {
            vars.push((env::NATS_PASSWORD, password.clone()));
        }
        if let Some(token) = &self.nats_token {
            vars.push((env::NATS_TOKEN, token.clone()));
        }
        vars
    }
}
