//! The HTTP client of the load generator: HTTP/1.1 over kept-alive connections with
//! TCP_NODELAY, straight on hyper's connection API (no pooling layer beyond a list of idle
//! connections), timestamping each body frame once as it arrives.

pub(crate) mod body;
pub(crate) mod sse;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Error;
use crate::config::Endpoint;
use crate::record::{Failure, FailureKind, RequestRecord};
use sse::{Line, LineSplitter};

/// A TCP connect that takes longer than this fails the request as `connect`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Error bodies are read up to this many bytes, for the message.
const ERROR_BODY_LIMIT: usize = 4096;

type Sender = SendRequest<Full<Bytes>>;

/// One target server: where it is, and its idle connections.
pub(crate) struct HttpClient {
    addr: SocketAddr,
    host: HeaderValue,
    /// Path prefix of `--base-url` (e.g. a proxy's `/api`), without a trailing slash.
    prefix: String,
    auth: Option<HeaderValue>,
    /// `--header KEY=VALUE`s, sent with every request.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Connections whose last response was read to the end. Only the client thread touches
    /// it, one brief push or pop at a time.
    idle: Mutex<Vec<Sender>>,
    /// Owns the tasks that drive each connection.
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl HttpClient {
    /// Resolves `base_url` (`http://host:port[/prefix]`) once, up front.
    pub(crate) async fn new(base_url: &str, api_key: Option<&str>) -> Result<HttpClient, Error> {
        HttpClient::with_headers(base_url, api_key, &[]).await
    }

    /// [`HttpClient::new`], also sending `headers` with every request.
    pub(crate) async fn with_headers(
        base_url: &str,
        api_key: Option<&str>,
        headers: &[(String, String)],
    ) -> Result<HttpClient, Error> {
        let bad = |m: &str| Error::Config(format!("--base-url {base_url:?}: {m}"));
        let uri: Uri = base_url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// is spoken"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let lookup = tokio::net::lookup_host((authority.host(), port));
        let addr = tokio::time::timeout(CONNECT_TIMEOUT, lookup)
            .await
            .map_err(|_| bad("resolving the host timed out"))?
            .map_err(|e| bad(&format!("cannot resolve the host: {e}")))?
            .next()
            .ok_or_else(|| bad("the host resolves to no address"))?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| bad("bad host"))?;
        let auth = match api_key {
            Some(key) => Some(
                HeaderValue::from_str(&format!("Bearer {key}"))
                    .map_err(|_| Error::Config("the API key is not a valid header value".into()))?,
            ),
            None => None,
        };
        let headers = headers
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::try_from(k.as_str());
                let value = HeaderValue::from_str(v);
                match (name, value) {
                    (Ok(name), Ok(value)) => Ok((name, value)),
                    _ => Err(Error::Config(format!("--header {k}={v}: not a valid HTTP header"))),
                }
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(HttpClient {
            addr,
            host,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            auth,
            headers,
            idle: Mutex::new(Vec::new()),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        })
    }

    /// The request target for an endpoint path, parsed once per run.
    pub(crate) fn uri(&self, path: &str) -> Result<Uri, Error> {
        format!("{}{path}", self.prefix)
            .parse()
            .map_err(|_| Error::Config(format!("bad request path {}{path}", self.prefix)))
    }

    async fn connect(&self) -> Result<Sender, Failure> {
        let failure = |message: String| Failure { kind: FailureKind::Connect, message };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| failure(format!("connecting to {} timed out", self.addr)))?
            .map_err(|e| failure(format!("connecting to {}: {e}", self.addr)))?;
        // Without it, a streamed response can stall ~40 ms on Nagle + delayed ACK.
        stream.set_nodelay(true).map_err(|e| failure(format!("TCP_NODELAY: {e}")))?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failure(format!("HTTP handshake: {e}")))?;
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = connection => {}
                () = stop.cancelled() => {}
            }
        });
        Ok(sender)
    }

    /// An idle connection that is still open (and `true`), else a new one.
    async fn checkout(&self) -> Result<(Sender, bool), Failure> {
        loop {
            let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            let Some(mut sender) = idle else {
                return Ok((self.connect().await?, false));
            };
            if sender.ready().await.is_ok() {
                return Ok((sender, true));
            }
        }
    }

    fn checkin(&self, sender: Sender) {
        if !sender.is_closed()
            && let Ok(mut idle) = self.idle.lock()
        {
            idle.push(sender);
        }
    }

    /// Sends one request and reads its response into `record`, timestamping from `t0`.
    /// `record.sent` is set by the caller; `record.end` is set here on success.
    pub(crate) async fn generate(
        &self,
        uri: &Uri,
        body: Bytes,
        endpoint: Endpoint,
        stream: bool,
        t0: Instant,
        record: &mut RequestRecord,
    ) -> Result<(), Failure> {
        let build = || {
            let mut request = Request::builder()
                .method(Method::POST)
                .uri(uri.clone())
                .header(HOST, self.host.clone())
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Some(auth) = &self.auth {
                request = request.header(AUTHORIZATION, auth.clone());
            }
            for (name, value) in &self.headers {
                request = request.header(name, value);
            }
            request.body(Full::new(body.clone())).map_err(|e| io_failure(&e))
        };
        let (mut sender, reused) = self.checkout().await?;
        let response = match sender.send_request(build()?).await {
            Ok(response) => response,
            // A kept-alive connection the server closed as the request went out, before any
            // answer (llama.cpp's server closes one after every streamed response without
            // saying so): the server never read the request, so it goes out again, once, on a
            // new connection. bench_serving opens a connection per request and never meets it.
            Err(e) if reused && (e.is_incomplete_message() || e.is_canceled()) => {
                sender = self.connect().await?;
                sender.send_request(build()?).await.map_err(|e| io_failure(&e))?
            }
            Err(e) => return Err(io_failure(&e)),
        };
        if response.status() != StatusCode::OK {
            return Err(status_failure(response).await);
        }
        let mut body = response.into_body();
        if stream {
            read_stream(&mut body, endpoint, t0, record).await?;
        } else {
            let bytes = body.collect().await.map_err(|e| io_failure(&e))?.to_bytes();
            let now = t0.elapsed();
            sse::on_json(&bytes, endpoint, true, now, record)?;
            record.end = now;
        }
        // The body was read to its end: the connection can carry the next request.
        self.checkin(sender);
        Ok(())
    }

    /// `GET path` as JSON (e.g. `/v1/models`), within `limit`.
    pub(crate) async fn get_json(
        &self,
        path: &str,
        limit: Duration,
    ) -> Result<serde_json::Value, Error> {
        let bytes = self.get(path, limit).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Server(format!("GET {path}: {e}")))
    }

    /// `GET path`'s body, within `limit`; any status but 200 is an error.
    pub(crate) async fn get(&self, path: &str, limit: Duration) -> Result<Bytes, Error> {
        self.call(Method::GET, path, limit).await
    }

    /// `POST path` with an empty body (e.g. `/flush_cache`), within `limit`.
    pub(crate) async fn post_empty(&self, path: &str, limit: Duration) -> Result<Bytes, Error> {
        self.call(Method::POST, path, limit).await
    }

    async fn call(&self, method: Method, path: &str, limit: Duration) -> Result<Bytes, Error> {
        let uri = self.uri(path)?;
        let fetch = async {
            let mut sender = self.connect().await.map_err(|f| f.message)?;
            let mut request =
                Request::builder().method(method.clone()).uri(uri).header(HOST, self.host.clone());
            if let Some(auth) = &self.auth {
                request = request.header(AUTHORIZATION, auth.clone());
            }
            for (name, value) in &self.headers {
                request = request.header(name, value);
            }
            let request = request.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
            let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let bytes = response.into_body().collect().await.map_err(|e| e.to_string())?;
            if status != StatusCode::OK {
                return Err(format!("{status}"));
            }
            Ok(bytes.to_bytes())
        };
        match tokio::time::timeout(limit, fetch).await {
            Ok(result) => result.map_err(|e| Error::Server(format!("{method} {path}: {e}"))),
            Err(_) => Err(Error::Server(format!("{method} {path}: no answer within {limit:?}"))),
        }
    }

    /// Closes every connection and waits (briefly) for their tasks.
    pub(crate) async fn close(&self) {
        self.stop.cancel();
        self.tasks.close();
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
    }
}

/// Reads an SSE body to its end; the response ends at `[DONE]` (else at the end of the body).
async fn read_stream(
    body: &mut Incoming,
    endpoint: Endpoint,
    t0: Instant,
    record: &mut RequestRecord,
) -> Result<(), Failure> {
    let mut lines = LineSplitter::default();
    let mut done_at = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| io_failure(&e))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        // One clock read per frame: the chunks of one frame arrived together.
        let now = t0.elapsed();
        lines.feed(data, |line| {
            if sse::on_sse_line(line, endpoint, now, record)? == Line::Done && done_at.is_none() {
                done_at = Some(now);
            }
            Ok::<(), Failure>(())
        })?;
    }
    let now = t0.elapsed();
    if !lines.rest().is_empty()
        && sse::on_sse_line(lines.rest(), endpoint, now, record)? == Line::Done
    {
        done_at.get_or_insert(now);
    }
    record.end = done_at.unwrap_or(now);
    Ok(())
}

async fn status_failure(response: http::Response<Incoming>) -> Failure {
    let status = response.status();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while text.len() < ERROR_BODY_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    text.extend_from_slice(data);
                }
            }
            _ => break,
        }
    }
    text.truncate(ERROR_BODY_LIMIT);
    Failure {
        kind: FailureKind::Status(status.as_u16()),
        message: format!("{status}: {}", String::from_utf8_lossy(&text)),
    }
}

fn io_failure(e: &dyn std::fmt::Display) -> Failure {
    Failure { kind: FailureKind::Io, message: e.to_string() }
}
