//! The HTTP/1 server under the API, with the limits that keep slow or idle clients from
//! starving the rest: a cap on open connections (past it new ones are closed at once), and a
//! time limit on reading each request's headers, which also closes a kept-alive connection
//! idle that long. Every connection gets TCP_NODELAY (streamed responses on kept-alive
//! connections must not wait on Nagle and delayed ACKs). On shutdown it stops accepting and
//! lets open requests finish. With [`HttpTls`] it speaks HTTPS; the TLS handshake has the
//! header-read limit too.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::https::HttpTls;
use crate::metrics::CONNECTIONS_REFUSED_TOTAL;

/// The server's limits.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Open connections at most; past it new ones are closed unanswered.
    pub max_connections: usize,
    /// Longest wait for a request's headers, and for the next request on a kept-alive
    /// connection.
    pub header_timeout: Duration,
    /// Longest wait for open requests after shutdown.
    pub drain_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(600),
        }
    }
}

/// Pause after a failed accept (out of file descriptors, say) before the next one.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// Serves `app` on `listener` until `shutdown`, then drains open connections.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    tls: Option<HttpTls>,
    shutdown: CancellationToken,
) {
    let places = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            metrics::counter!(CONNECTIONS_REFUSED_TOTAL).increment(1);
            drop(stream);
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let (app, http, watcher, tls) =
            (app.clone(), http.clone(), graceful.watcher(), tls.clone());
        connections.spawn(async move {
            match tls {
                None => serve_connection(stream, app, &http, watcher).await,
                Some(tls) => {
                    let handshake = tls.acceptor().accept(stream);
                    match tokio::time::timeout(limits.header_timeout, handshake).await {
                        Ok(Ok(stream)) => serve_connection(stream, app, &http, watcher).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            drop(place);
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
}

/// Serves HTTP/1 requests on one accepted connection until it closes (or shutdown ends it).
async fn serve_connection<I>(
    io: I,
    app: Router,
    http: &hyper::server::conn::http1::Builder,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |request: Request<Incoming>| app.clone().oneshot(request));
    if let Err(e) = watcher.watch(http.serve_connection(TokioIo::new(io), service)).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
