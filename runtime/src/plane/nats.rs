//! The NATS request plane (core NATS, no JetStream): a worker subscribes to its instance's
//! subject; a client publishes a request there and reads the chunks back on a reply subject.
//!
//! The protocol, all on plain subjects:
//! - **Request**: a protobuf `GenerateRequest` published to the instance subject (e.g.
//!   `switchyard.<namespace>.instance.<id>.generate`) with a reply subject unique to the request.
//!   With no subscriber there, the NATS server answers on the reply subject with a 503 "no
//!   responders" status, which the client turns into [`Error::Connect`](crate::Error::Connect).
//! - **Accept**: the worker first answers with a control message (header
//!   [`CONTROL_HEADER`] = `accepted`), so the client learns within a connect-like timeout
//!   that a live worker took the request, however long the first token takes.
//! - **Chunks**: protobuf `GenerateChunk`s to the reply subject, each with its `seq`; the last one
//!   has a finish reason or an error. The client checks `seq` contiguity and the final chunk.
//! - **Heartbeats**: a control message (`heartbeat`) whenever no chunk went out for a while, so
//!   a client tells a slow worker (heartbeats, no chunks) from a dead one (silence).
//! - **Cancel**: the client publishes the reply subject to `<instance subject>.cancel`; the
//!   worker drops the handler's stream, which cancels the work.
//! - **Bounces**: every message to the reply subject carries a reply subject of the worker's
//!   own; when the client's inbox is gone (its process died), NATS bounces a 503 there and the
//!   worker cancels the request as if told to.

mod client;
mod early_cancels;
mod security;
mod server;

use std::time::Duration;

use async_nats::{ConnectOptions, HeaderMap, Message};

use crate::{Error, Result};

pub use client::{NatsClient, NatsClientConfig};
pub use security::{NatsSecurity, split_credentials};
pub use server::{NatsListener, NatsServerConfig, serve, serve_listener};

/// Header that marks a control message; chunks carry no headers.
pub const CONTROL_HEADER: &str = "Switchyard-Control";
/// Control value: the worker took the request.
const CONTROL_ACCEPTED: &str = "accepted";
/// Control value: the worker is alive and still working on the request.
const CONTROL_HEARTBEAT: &str = "heartbeat";

/// Longest wait for the first connection to NATS (TCP, handshake, first PONG).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one publish or flush: while NATS is away the client's command queue fills up and a
/// publish would wait for the reconnect.
pub(crate) const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between reconnect attempts. async-nats backs off up to 4 s by default; a
/// shorter cap brings a fleet back within a second or so of NATS returning, and attempts
/// against a local port that refuses are cheap.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Pings find a NATS server that vanished without closing the connection.
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// The subject a worker serves requests on.
pub fn generate_subject(namespace: &str, instance_id: &str) -> Result<String> {
    check_token("namespace", namespace)?;
    check_token("instance id", instance_id)?;
    Ok(format!("switchyard.{namespace}.instance.{instance_id}.generate"))
}

/// Where clients send cancellations for requests to `subject`.
fn cancel_subject(subject: &str) -> String {
    format!("{subject}.cancel")
}

/// Checks that `token` can be one token of a NATS subject: not empty, no dots, no wildcards,
/// no whitespace.
pub(crate) fn check_token(what: &str, token: &str) -> Result<()> {
    let bad = token.is_empty()
        || token.chars().any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace());
    if bad {
        return Err(Error::Config(format!(
            "{what} {token:?} cannot be part of a NATS subject (empty, or has '.', '*', '>' or \
             whitespace)"
        )));
    }
    Ok(())
}

/// Checks that `subject` is a literal subject: tokens as in [`check_token`], joined by dots.
fn check_subject(subject: &str) -> Result<()> {
    subject
        .split('.')
        .try_for_each(|token| check_token("subject token", token))
        .map_err(|_| Error::Config(format!("{subject:?} is not a literal NATS subject")))
}

/// The options Switchyard connects with: bounded first connect, quick reconnects (forever),
/// pings to find a dead server.
pub fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .connection_timeout(DEFAULT_CONNECT_TIMEOUT)
        .ping_interval(PING_INTERVAL)
        .reconnect_delay_callback(reconnect_delay)
}

/// Pause before reconnect attempt `attempts` (from 1): none, then 200 ms more per attempt up
/// to [`MAX_RECONNECT_DELAY`].
fn reconnect_delay(attempts: usize) -> Duration {
    let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
    Duration::from_millis(200).saturating_mul(attempts.saturating_sub(1)).min(MAX_RECONNECT_DELAY)
}

/// Connects to the NATS server(s) at `url` (comma-separated URLs are tried in turn). Fails with
/// [`Error::Connect`] when none answers; once connected, the client reconnects by itself.
pub async fn connect(url: &str) -> Result<async_nats::Client> {
    connect_secure(url, &NatsSecurity::default()).await
}

/// [`connect`] with credentials and TLS settings; errors show the URL without user info.
pub async fn connect_secure(url: &str, security: &NatsSecurity) -> Result<async_nats::Client> {
    let (clean, options) = security.apply(url, connect_options()).await?;
    connect_with(&clean, options).await
}

/// [`connect`] with the caller's options.
pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<async_nats::Client> {
    let shown = split_credentials(url).0;
    let connect_error = |reason: String| Error::Connect { address: shown.clone(), reason };
    // async-nats bounds each attempt; this bounds the whole of it, whatever the options say.
    let limit = DEFAULT_CONNECT_TIMEOUT * 2;
    match tokio::time::timeout(limit, options.connect(url)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => {
            Err(connect_error(format!("{e}; is nats-server running and reachable there?")))
        }
        Err(_) => Err(connect_error(format!(
            "no NATS handshake within {limit:?}; is nats-server running and reachable there?"
        ))),
    }
}

/// Waits until the NATS server has processed everything this client sent before, e.g. its
/// subscriptions. async-nats's `flush` only writes the socket; a request to a subject nobody
/// serves is a true round trip, since the server answers "no responders" after handling what
/// came before it on this connection.
pub(crate) async fn sync_with_server(client: &async_nats::Client) -> Result<()> {
    let probe = format!("{}.sync", client.new_inbox());
    let request = async_nats::Request::new().timeout(Some(PUBLISH_TIMEOUT));
    let answer = client.send_request(probe, request);
    match tokio::time::timeout(PUBLISH_TIMEOUT * 2, answer).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
            Err(Error::Timeout { what: "NATS round trip", after: PUBLISH_TIMEOUT })
        }
        Ok(Err(e)) => Err(Error::Transport(format!("NATS round trip failed: {e}"))),
        Err(_) => Err(Error::Timeout { what: "NATS round trip", after: PUBLISH_TIMEOUT * 2 }),
    }
}

/// The control value of `message`, if it is a control message.
fn control(message: &Message) -> Option<&str> {
    message.headers.as_ref()?.get(CONTROL_HEADER).map(async_nats::HeaderValue::as_str)
}

/// Headers of a control message saying `value`.
fn control_headers(value: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTROL_HEADER, value);
    headers
}

pub(crate) use super::error_chunk;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_checked() {
        assert_eq!(
            generate_subject("ns", "abc123").ok().as_deref(),
            Some("switchyard.ns.instance.abc123.generate")
        );
        for bad in ["", "a.b", "a*", "a>", "a b"] {
            assert!(generate_subject("ns", bad).is_err(), "{bad:?}");
            assert!(generate_subject(bad, "id").is_err(), "{bad:?}");
        }
        assert!(check_subject("a.b.c").is_ok());
        assert!(check_subject("a..c").is_err());
        assert!(check_subject("a.*.c").is_err());
    }

    #[test]
    fn reconnects_back_off_to_a_second() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(200));
        assert_eq!(reconnect_delay(usize::MAX), MAX_RECONNECT_DELAY);
    }
}
