//! The event plane in NATS mode: each worker publishes on `switchyard.<namespace>.events.<id>`,
//! and a router subscribes to `switchyard.<namespace>.events.*`.

use async_nats::{Client, Subject};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use prost::Message as _;
use switchyard_proto::WorkerEvent;
use switchyard_proto::worker_event::Event;
use tracing::warn;

use super::{EventPublisher, EventStream, EventSubscriber, SnapshotRequests};
use crate::plane::nats::{PUBLISH_TIMEOUT, check_token, sync_with_server};
use crate::{Error, Result};

/// The subject a worker's events go to.
pub fn events_subject(namespace: &str, instance_id: &str) -> Result<String> {
    check_token("namespace", namespace)?;
    check_token("instance id", instance_id)?;
    Ok(format!("switchyard.{namespace}.events.{instance_id}"))
}

/// The subject on which routers ask a worker for a KV snapshot.
pub fn snapshot_request_subject(namespace: &str, instance_id: &str) -> Result<String> {
    check_token("namespace", namespace)?;
    check_token("instance id", instance_id)?;
    Ok(format!("switchyard.{namespace}.kv_snapshot.{instance_id}"))
}

/// The subject that matches the events of every worker of `namespace`.
pub fn namespace_events_subject(namespace: &str) -> Result<String> {
    check_token("namespace", namespace)?;
    Ok(format!("switchyard.{namespace}.events.*"))
}

/// Publishes one worker's events on its subject.
#[derive(Debug, Clone)]
pub struct NatsEventPublisher {
    client: Client,
    subject: Subject,
    snapshot_subject: Subject,
    instance_id: String,
}

impl NatsEventPublisher {
    pub fn new(client: Client, namespace: &str, instance_id: &str) -> Result<NatsEventPublisher> {
        let subject = Subject::from(events_subject(namespace, instance_id)?);
        let snapshot_subject = Subject::from(snapshot_request_subject(namespace, instance_id)?);
        Ok(NatsEventPublisher {
            client,
            subject,
            snapshot_subject,
            instance_id: instance_id.to_owned(),
        })
    }
}

#[async_trait]
impl EventPublisher for NatsEventPublisher {
    fn instance_id(&self) -> &str {
        &self.instance_id
    }

    async fn publish(&self, event: Event) -> Result<()> {
        let event = WorkerEvent { instance_id: self.instance_id.clone(), event: Some(event) };
        let payload = Bytes::from(event.encode_to_vec());
        publish(&self.client, self.subject.clone(), payload, "NATS event publish").await
    }

    async fn snapshot_requests(&self) -> Result<SnapshotRequests> {
        let requests = subscribe(&self.client, self.snapshot_subject.to_string()).await?;
        Ok(Box::pin(requests.map(|_| ())))
    }
}

/// Publishes `payload` on `subject`. While NATS is away, publishes queue up in the client until
/// it is full; bounded here so a caller is never stuck for the length of an outage.
async fn publish(
    client: &Client,
    subject: Subject,
    payload: Bytes,
    what: &'static str,
) -> Result<()> {
    match tokio::time::timeout(PUBLISH_TIMEOUT, client.publish(subject.clone(), payload)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::Transport(format!("cannot publish to {subject}: {e}"))),
        Err(_) => Err(Error::Timeout { what, after: PUBLISH_TIMEOUT }),
    }
}

/// Subscribes to `subject`, in place on the server when this returns.
async fn subscribe(client: &Client, subject: String) -> Result<async_nats::Subscriber> {
    let subscribed = client.subscribe(subject.clone());
    let subscriber = match tokio::time::timeout(PUBLISH_TIMEOUT, subscribed).await {
        Ok(Ok(subscriber)) => subscriber,
        Ok(Err(e)) => {
            return Err(Error::Transport(format!("cannot subscribe to {subject}: {e}")));
        }
        Err(_) => return Err(Error::Timeout { what: "NATS subscribe", after: PUBLISH_TIMEOUT }),
    };
    sync_with_server(client).await?;
    Ok(subscriber)
}

/// Reads the events of every worker of a namespace from one wildcard subscription.
#[derive(Debug, Clone)]
pub struct NatsEventSubscriber {
    client: Client,
    namespace: String,
    subject: String,
}

impl NatsEventSubscriber {
    pub fn new(client: Client, namespace: &str) -> Result<NatsEventSubscriber> {
        let subject = namespace_events_subject(namespace)?;
        Ok(NatsEventSubscriber { client, namespace: namespace.to_owned(), subject })
    }
}

#[async_trait]
impl EventSubscriber for NatsEventSubscriber {
    async fn request_snapshot(&self, instance_id: &str) -> Result<()> {
        let subject = Subject::from(snapshot_request_subject(&self.namespace, instance_id)?);
        publish(&self.client, subject, Bytes::new(), "NATS snapshot request").await
    }

    async fn subscribe(&self) -> Result<EventStream> {
        // Events published once this returns are delivered.
        let subscriber = subscribe(&self.client, self.subject.clone()).await?;
        let events = subscriber.filter_map(|message| async move {
            match WorkerEvent::decode(message.payload) {
                Ok(mut event) => {
                    if event.instance_id.is_empty() {
                        // The subject's last token names the worker.
                        let id = message.subject.as_str().rsplit('.').next().unwrap_or_default();
                        event.instance_id = id.to_owned();
                    }
                    Some(event)
                }
                Err(e) => {
                    warn!(subject = %message.subject, error = %e, "undecodable worker event; skipped");
                    None
                }
            }
        });
        Ok(Box::pin(events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_checked() {
        assert_eq!(events_subject("ns", "w1").ok().as_deref(), Some("switchyard.ns.events.w1"));
        assert_eq!(namespace_events_subject("ns").ok().as_deref(), Some("switchyard.ns.events.*"));
        assert!(events_subject("ns", "a.b").is_err());
        assert!(namespace_events_subject("*").is_err());
    }
}
