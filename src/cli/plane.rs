//! Flags that choose the request plane, shared by every subcommand.

use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use switchyard_runtime::RequestClient;
use switchyard_runtime::discovery::InstanceWatch;
use switchyard_runtime::events::{
    EventSubscriber, NatsEventSubscriber, TcpEventConfig, TcpEventSubscriber,
};
use switchyard_runtime::plane::nats::{self, NatsClient, NatsClientConfig};
use switchyard_runtime::plane::tcp::{TcpClient, TcpClientConfig};

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

    /// NATS server URL [default: nats://127.0.0.1:4222; also read from NATS_SERVER].
    #[arg(long, env = env::NATS_URL)]
    pub nats_url: Option<String>,
}

impl PlaneArgs {
    pub fn nats_url(&self) -> String {
        self.nats_url
            .clone()
            .or_else(|| env::compat(env::NATS_URL_COMPAT))
            .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned())
    }

    /// Connects to the NATS server; a clear error when it is not running.
    pub async fn connect_nats(&self) -> anyhow::Result<async_nats::Client> {
        let url = self.nats_url();
        nats::connect(&url)
            .await
            .with_context(|| format!("connecting to NATS at {url} (is it running? set --nats-url)"))
    }

    /// The frontend's side of the plane.
    pub async fn client(&self) -> anyhow::Result<Arc<dyn RequestClient>> {
        Ok(match self.request_plane {
            PlaneKind::Tcp => Arc::new(TcpClient::new(TcpClientConfig::default())),
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
                Arc::new(TcpEventSubscriber::new(instances.subscribe(), TcpEventConfig::default()))
            }
            PlaneKind::Nats => {
                let client = self.connect_nats().await?;
                Arc::new(NatsEventSubscriber::new(client, namespace)?)
            }
        })
    }

    /// Flags that give a child process the same plane.
    pub fn to_flags(&self) -> Vec<String> {
        match self.request_plane {
            PlaneKind::Tcp => vec!["--request-plane".into(), "tcp".into()],
            PlaneKind::Nats => {
                vec!["--request-plane".into(), "nats".into(), "--nats-url".into(), self.nats_url()]
            }
        }
    }
}
