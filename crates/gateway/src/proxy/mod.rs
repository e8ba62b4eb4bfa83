//! The data plane: a server that matches each request against the current snapshot, runs
//! the plugin phases and forwards it to an upstream node over a keepalive pool.
//!
//! One request, top to bottom in [`DataPlane::handle`]: context → route match (404 when none)
//! → `rewrite` and `access` phases (global rules first; a plugin may answer) → pick a node
//! (the upstream's balancer) → forward over the worker's [`pool`](crate::client::pool) with `X-Forwarded-*` and
//! `X-Real-IP`, retrying other nodes when a connection fails and the request has no body →
//! response phases → stream the body back. WebSocket upgrades are proxied when the route
//! enables them. On the TLS listener the certificate is chosen by SNI from the snapshot's
//! `ssls`, and ALPN offers HTTP/2. Clients are served HTTP/1.1 by [`server`], which hands
//! what it does not take (bodies still arriving, upgrades, HTTP/2) to hyper's server.

pub mod path;
mod server;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::client::fields::Fields;
use crate::client::pool::{self, Failure, Pool};
pub use crate::client::{Body, BoxError};
use crate::client::{empty, full, http1};
use crate::plugins::Shared;
use crate::resource::PassHost;
use crate::runtime::Runtime;
use crate::runtime::Snapshot;
use crate::runtime::health::Outcome;
use crate::runtime::phases::{BodyRewrite, Chain, Ctx, Log, Mirror, Plugin, Reply, ResponseHead};
use crate::runtime::router::Route;
use crate::runtime::upstream::{Timeouts, Upstream};
use crate::vars::PostArgs;
use crate::warnings;

/// Limits the data plane enforces on clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body accepted (413 beyond it); 0 = no limit.
    pub max_body_bytes: u64,
    /// Largest request head accepted (431 beyond it).
    pub max_header_bytes: usize,
    /// How long a request head may take from its first byte (however slowly it trickles in),
    /// and how long a connection may idle between requests.
    pub head_timeout: Duration,
    /// Connections one client address may have open at once; 0 = no limit.
    pub max_connections_per_client: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 * 1024 * 1024,
            max_header_bytes: 32 * 1024,
            head_timeout: Duration::from_secs(60),
            max_connections_per_client: 0,
        }
    }
}

/// Headers that belong to one connection and are never forwarded (a response's are told by
/// `http1::Kind`).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// What the gateway tells an upstream about the authenticated consumer (APISIX's names, plus
/// the consumer's group); a client's own copies are dropped.
const CONSUMER_HEADERS: [&str; 4] = [
    "x-consumer-username",
    "x-credential-identifier",
    "x-consumer-custom-id",
    "x-consumer-group-id",
];

/// A listener of the data plane: plain HTTP (HTTP/1.1 and h2c) or TLS.
#[derive(Debug)]
pub struct Listener {
    pub tcp: TcpListener,
    pub tls: bool,
}

#[derive(Clone)]
pub struct DataPlane {
    runtime: Arc<Runtime>,
    /// The plugins' process-wide state: the gateway's metrics are among it.
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    limits: Limits,
    /// hyper's server, for the connections [`server`] hands over.
    hyper: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    /// The certificate's name for TLS clients that send no SNI (APISIX's `fallback_sni`).
    fallback_sni: Option<Arc<str>>,
    /// How long open requests may take to finish once the data plane is stopped.
    grace: Duration,
    /// Open connections per client address, when they are limited (shared by the workers).
    clients: Option<Clients>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Who is on the other end of a client connection.
#[derive(Debug, Clone, Copy)]
struct Peer {
    remote: SocketAddr,
    local_port: u16,
    scheme: &'static str,
}

impl DataPlane {
    pub fn new(
        runtime: Arc<Runtime>,
        shared: Arc<Shared>,
        limits: Limits,
        fallback_sni: Option<String>,
    ) -> DataPlane {
        let mut hyper = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        hyper
            .http1()
            .timer(TokioTimer::new())
            .max_buf_size(limits.max_header_bytes.max(8192))
            .header_read_timeout(limits.head_timeout);
        hyper.http2().timer(TokioTimer::new());
        DataPlane {
            runtime,
            shared,
            pool: Arc::default(),
            limits,
            hyper: Arc::new(hyper),
            fallback_sni: fallback_sni.map(Arc::from),
            grace: Duration::from_secs(30),
            clients: (limits.max_connections_per_client > 0).then(Arc::default),
        }
    }

    /// Whether the current configuration has a certificate for the TLS listener to serve.
    pub fn has_certificates(&self) -> bool {
        !self.runtime.snapshot().certificates.is_empty()
    }

    /// This data plane giving open requests `grace` to finish when it is stopped.
    pub fn with_grace(self, grace: Duration) -> DataPlane {
        DataPlane { grace, ..self }
    }

    /// Accepts connections on every listener until `shutdown`, then lets open requests finish
    /// (up to the grace period); idle connections are closed at once. Each call is one worker,
    /// with its own upstream connection pool.
    pub async fn serve(self, listeners: Vec<Listener>, shutdown: CancellationToken) {
        let plane = DataPlane {
            pool: Arc::default(),
            ..self
        };
        let pool = Arc::downgrade(&plane.pool);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                match pool.upgrade() {
                    Some(pool) => pool.sweep(),
                    None => return,
                }
                warnings::flush();
            }
        });
        let connections = tokio_util::task::TaskTracker::new();
        let accepting = listeners.into_iter().map(|listener| {
            let (plane, connections, shutdown) =
                (plane.clone(), connections.clone(), shutdown.clone());
            async move { plane.accept(listener, &connections, shutdown).await }
        });
        futures::future::join_all(accepting).await;
        let grace = plane.grace;
        drop(plane);
        connections.close();
        let _ = tokio::time::timeout(grace, connections.wait()).await;
    }

    async fn accept(
        &self,
        listener: Listener,
        connections: &tokio_util::task::TaskTracker,
        shutdown: CancellationToken,
    ) {
        let local_port = listener.tcp.local_addr().map(|a| a.port()).unwrap_or(0);
        loop {
            let (stream, remote) = tokio::select! {
                accepted = listener.tcp.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        if let Some(suppressed) = warnings::ACCEPT_FAILED.admit() {
                            tracing::warn!(error = %e, suppressed, "gateway: accept failed");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            let Some(place) = self.admit(remote.ip()) else {
                continue; // closed at once: this client has all the connections it may
            };
            let _ = stream.set_nodelay(true);
            let peer = Peer {
                remote,
                local_port,
                scheme: if listener.tls { "https" } else { "http" },
            };
            let plane = self.clone();
            let shutdown = shutdown.clone();
            let metrics = &self.shared.metrics;
            metrics.accepted.inc();
            metrics.handled.inc();
            metrics.active.inc();
            connections.spawn(async move {
                let _place = place;
                if peer.scheme == "https" {
                    match plane.handshake(stream, remote).await {
                        // HTTP/2 chosen by ALPN: hyper's from the start.
                        Some(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                            server::hand_over(&plane, tls, Bytes::new(), peer, &shutdown).await;
                        }
                        Some(tls) => server::serve(plane.clone(), tls, peer, shutdown).await,
                        None => {}
                    }
                } else {
                    server::serve(plane.clone(), stream, peer, shutdown).await;
                }
                plane.shared.metrics.active.dec();
            });
        }
    }

    /// A place for one more connection from `client`, given back when dropped; none when the
    /// client has as many open as it may.
    fn admit(&self, client: std::net::IpAddr) -> Option<ClientPlace> {
        let Some(clients) = &self.clients else {
            return Some(ClientPlace(None));
        };
        let mut open = clients.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(client).or_default();
        if *count >= self.limits.max_connections_per_client {
            drop(open);
            if let Some(suppressed) = warnings::CLIENT_CONNECTIONS.admit() {
                tracing::warn!(%client, suppressed, "gateway: a client has all the connections it may; refused");
            }
            return None;
        }
        *count += 1;
        Some(ClientPlace(Some((clients.clone(), client))))
    }

    /// The TLS handshake with the certificate for the client's SNI (else `fallback_sni`);
    /// none when no certificate matches or the handshake fails.
    async fn handshake(
        &self,
        stream: TcpStream,
        remote: SocketAddr,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let acceptor = tokio_rustls::LazyConfigAcceptor::new(Default::default(), stream);
        let start = tokio::time::timeout(Duration::from_secs(60), acceptor)
            .await
            .ok()?
            .ok()?;
        let hello = start.client_hello();
        let sni = hello.server_name().or(self.fallback_sni.as_deref());
        let Some(config) = sni.and_then(|n| self.runtime.snapshot().certificates.find(n)) else {
            tracing::debug!(%remote, sni, "tls: no certificate for this server name");
            return None;
        };
        match tokio::time::timeout(Duration::from_secs(60), start.into_stream(config)).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "tls: handshake failed");
                None
            }
            Err(_) => None,
        }
    }

    /// One request, top to bottom, in the phases of APISIX: its head checked into a context,
    /// the route matched, the request phases (rewrite, access), the upstream (balance,
    /// forward) unless a plugin answered, the response phases, and the log phase once the
    /// body is sent. `arrived` is its size on the wire when the server knows it.
    ///
    /// Only the phases that wait are futures of their own (`request_phases`, `forward`): a
    /// nested future costs every request tens of instructions to set up, poll and drop
    /// (docs/benchmarks.md), so the steps that do not wait are plain functions.
    async fn handle(&self, mut req: Request<Body>, peer: Peer, arrived: Option<u64>) -> Outgoing {
        let started = Instant::now();
        self.shared.metrics.requests.inc();
        let client_upgrade = is_websocket(req.headers()).then(|| hyper::upgrade::on(&mut req));
        let (parts, mut body) = req.into_parts();
        let snapshot = arc_swap::Guard::into_inner(self.runtime.snapshot());
        let mut ctx = match self.context(parts, &peer, &snapshot) {
            Ok(ctx) => ctx,
            // A head refused with the connection closed: its body is left unread.
            Err((status, true)) => return Outgoing::of(closing(error_page(status))),
            Err((status, false)) => return Outgoing::of(error_page(status)),
        };

        // Match. `post_arg_*` in a `vars` expression or a plugin: the body is read first
        // (boxed: the reading is rare, and would otherwise grow every request's future).
        let read_first = snapshot.router.reads_body();
        if read_first {
            body = match Box::pin(self.read_post(&mut ctx, body)).await {
                Ok(body) => body,
                Err(refused) => return refused,
            };
        }
        let Some(route) = route(&mut ctx, &snapshot) else {
            return Outgoing::of(json_error(StatusCode::NOT_FOUND, "404 Route Not Found"));
        };
        if !read_first && (route.plugins.reads_body() || snapshot.global.reads_body()) {
            body = match Box::pin(self.read_post(&mut ctx, body)).await {
                Ok(body) => body,
                Err(refused) => return refused,
            };
        }

        // Rewrite, access: skipped when there are no plugins (awaiting would still build and
        // move a future).
        let global = &snapshot.global;
        let (reply, plugins) = match global.is_empty() && route.plugins.is_empty() {
            true => (None, Cow::Borrowed(&route.plugins)),
            false => request_phases(&mut ctx, global, route).await,
        };

        // Balance, forward: unless a plugin answered.
        let (out, upstream) = match reply {
            Some(reply) => (Outgoing::of(reply_response(reply)), Upstreamed::default()),
            None => match self.outbound(&mut ctx, route, body, client_upgrade) {
                None => {
                    let missing = json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "missing upstream configuration in Route or Service",
                    );
                    (Outgoing::of(missing), Upstreamed::default())
                }
                Some(Outbound {
                    upstream,
                    body,
                    sending,
                    websocket,
                }) => {
                    let upgrade = websocket.is_some();
                    let sent = (body, sending.as_deref());
                    let forwarded = self.forward(route, &upstream, &ctx, sent, upgrade).await;
                    answered(&mut ctx, &upstream, websocket, forwarded)
                }
            },
        };

        // Header and body filters, then the log phase once the body has been sent.
        let out = response_phases(&mut ctx, [global, &plugins], out);
        let loggers: Vec<_> = global.loggers().chain(plugins.loggers()).cloned().collect();
        if loggers.is_empty() && ctx.held.is_empty() {
            return out;
        }
        let log = log_of(&mut ctx, route, upstream, &out, arrived);
        let finish = Finish {
            log,
            loggers,
            started,
            _held: std::mem::take(&mut ctx.held),
        };
        Outgoing {
            body: finish.after(out.body),
            ..out
        }
    }

    /// What the request is sent upstream with: the upstream a plugin chose (traffic-split)
    /// or the route's, the body as the client sends it (with a copy to proxy-mirror's mirror),
    /// and the client's side of a WebSocket the route lets through; none when there is no
    /// upstream.
    fn outbound(
        &self,
        ctx: &mut Ctx,
        route: &Route,
        body: Body,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Option<Outbound> {
        let upstream = ctx.upstream.clone().or_else(|| route.upstream.clone())?;
        let replayable = hyper::body::Body::is_end_stream(&body);
        let (mut body, sending) = self.client_body(body);
        if let Some(mirror) = ctx.mirror.take() {
            body = self.mirror(mirror, ctx, body, replayable);
        }
        Some(Outbound {
            upstream,
            body,
            sending,
            websocket: client_upgrade.filter(|_| route.enable_websocket),
        })
    }

    /// A request's head checked and turned into its context: the host it is for (RFC 9112
    /// §3.2), its declared size within `max_body_bytes`, no consumer headers from the client,
    /// the path's one normal form. Refused: the status, and whether the connection must close.
    /// (Inlined: built elsewhere, the context is a few hundred bytes moved into the request's
    /// future, ~250 instructions a request.)
    #[inline(always)]
    fn context(
        &self,
        mut parts: http::request::Parts,
        peer: &Peer,
        snapshot: &Arc<Snapshot>,
    ) -> Result<Ctx, (StatusCode, bool)> {
        // The host a request is for, once (RFC 9112 §3.2): an absolute-form target's authority
        // (HTTP/2's `:authority`) is it, whatever `Host` says; else HTTP/1.1 needs one `Host`.
        let host = if let Some(authority) = parts.uri.authority() {
            let host = authority.as_str().rsplit('@').next().unwrap_or_default();
            match HeaderValue::from_str(host) {
                Ok(value) => drop(parts.headers.insert(header::HOST, value)),
                Err(_) => return Err((StatusCode::BAD_REQUEST, true)),
            }
            strip_port(host).to_string()
        } else {
            let mut hosts = parts.headers.get_all(header::HOST).iter();
            let host = hosts.next();
            let missing = host.is_none() && parts.version == http::Version::HTTP_11;
            if missing || hosts.next().is_some() {
                return Err((StatusCode::BAD_REQUEST, true));
            }
            let host = host.and_then(|h| h.to_str().ok()).map(strip_port);
            host.unwrap_or_default().to_string()
        };
        if let Ok(Some(length)) = declared_length(&parts.headers)
            && self.limits.max_body_bytes > 0
            && length > self.limits.max_body_bytes
        {
            // The body stays unread, so the connection cannot carry another request.
            return Err((StatusCode::PAYLOAD_TOO_LARGE, true));
        }
        // Who the consumer is, only the gateway says.
        for name in CONSUMER_HEADERS {
            parts.headers.remove(name);
        }
        // Routes match, and upstreams get, the path in its one normal form.
        let (path, raw_path) = match path::normalize(parts.uri.path()) {
            Ok(std::borrow::Cow::Borrowed(path)) => (path.to_string(), None),
            Ok(std::borrow::Cow::Owned(path)) => (path, Some(parts.uri.path().to_string())),
            Err(_) => return Err((StatusCode::BAD_REQUEST, false)),
        };
        Ok(Ctx {
            method: parts.method,
            original_path: path.clone(),
            path,
            query: parts.uri.query().map(str::to_string),
            headers: parts.headers,
            host,
            upstream_host: None,
            remote_addr: peer.remote.ip(),
            server_port: peer.local_port,
            scheme: peer.scheme,
            route_id: Arc::default(),
            service_id: None,
            snapshot: snapshot.clone(),
            upstream: None,
            consumer: None,
            response_headers: Vec::new(),
            held: Vec::new(),
            mirror: None,
            trace: None,
            jwt_payload: None,
            raw_path,
            uri_params: Vec::new(),
            answered_by: None,
            post: None,
        })
    }

    /// Sends the request to a node of `upstream`; on a failed connection, to another one while
    /// retries and `retry_timeout` allow and the request has no body to replay. `body` comes
    /// with what it tells of the client's sending, when it is one the client still sends.
    async fn forward(
        &self,
        route: &Route,
        upstream: &Arc<Upstream>,
        ctx: &Ctx,
        (body, sending): (Body, Option<&Sending>),
        upgrade: bool,
    ) -> Result<Answer, Failed> {
        let replayable = sending.is_none();
        let timeouts = route
            .timeout
            .map(|t| Timeouts::from_config(Some(&t)))
            .unwrap_or(upstream.timeouts);
        let deadline = upstream
            .retry_timeout
            .and_then(|t| Instant::now().checked_add(t));
        let target = match &ctx.query {
            Some(query) => std::borrow::Cow::Owned(format!("{}?{query}", ctx.path)),
            None => std::borrow::Cow::Borrowed(ctx.path.as_str()),
        };
        let mut body = Some(body);
        // The nodes that failed, not to be picked again.
        let mut tried = Vec::new();
        loop {
            let Some(node) = upstream.pick(&tried, &ctx.vars()) else {
                return Err(Failed::Upstream(StatusCode::BAD_GATEWAY));
            };
            let in_flight = upstream.start(node);
            let body = body.take().unwrap_or_else(empty);
            let (key, request) = upstream_request(ctx, upstream, node, &target, body, upgrade)
                .map_err(Failed::Client)?;
            let budget = timeouts.budget();
            let sent = self
                .pool
                .send(&key, &upstream.keepalive, timeouts.connect, request);
            let sent_at = Instant::now();
            let outcome = tokio::time::timeout(budget, sent)
                .await
                .unwrap_or(Err(Failure::ConnectTimeout));
            // A body the client failed to send is no fault of the node's: it is not counted
            // against the node's health, nor logged as the upstream's failure.
            if let Some(status) = sending.and_then(|s| s.fault(&outcome)) {
                tracing::debug!(
                    route = &*route.id,
                    status = status.as_u16(),
                    "the client's request body failed"
                );
                return Err(Failed::Client(status));
            }
            if let Some(health) = &upstream.health {
                health.report(
                    node,
                    match &outcome {
                        Ok(response) => Outcome::Status(response.status.as_u16()),
                        Err(Failure::ConnectTimeout) => Outcome::Timeout,
                        Err(_) => Outcome::TcpFailure,
                    },
                );
            }
            let failure = match outcome {
                Ok(mut answer) => {
                    let took = sent_at.elapsed();
                    let upgraded = answer.body.upgraded();
                    let body = answer.body.map_err(BoxError::from);
                    let body = match in_flight {
                        // In flight until the body has been read (or dropped).
                        Some(guard) => body
                            .map_frame(move |f| {
                                let _ = &guard;
                                f
                            })
                            .boxed(),
                        None => body.boxed(),
                    };
                    return Ok(Answer {
                        status: answer.status,
                        lines: answer.lines,
                        body,
                        node,
                        took,
                        upgraded,
                    });
                }
                Err(failure) => failure,
            };
            tried.push(node);
            let again = matches!(failure, Failure::Connect(_) | Failure::ConnectTimeout)
                && replayable
                && tried.len() <= upstream.retries
                && deadline.is_none_or(|d| Instant::now() < d);
            if let Some(suppressed) = warnings::UPSTREAM_FAILED.admit() {
                tracing::warn!(route = &*route.id, node = %upstream.targets[node].authority,
                    error = %failure, retrying = again, suppressed, "upstream request failed");
            }
            if !again {
                return Err(Failed::Upstream(match failure {
                    Failure::ConnectTimeout => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::BAD_GATEWAY,
                }));
            }
        }
    }

    /// Reads a body whose type has fields (a form, JSON) into `ctx.post`, within the body
    /// limit, and gives it back to be sent on; a client failing to send it is answered here
    /// (400, 408, 413), on a connection that then closes.
    async fn read_post(&self, ctx: &mut Ctx, body: Body) -> Result<Body, Outgoing> {
        if hyper::body::Body::is_end_stream(&body) || !PostArgs::readable(&ctx.headers) {
            return Ok(body);
        }
        let body = match self.limits.max_body_bytes {
            0 => body,
            max => http_body_util::Limited::new(body, max as usize).boxed(),
        };
        match body.collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                ctx.post = PostArgs::parse(&ctx.headers, &bytes).map(Box::new);
                Ok(full(bytes))
            }
            Err(e) => Err(Outgoing::of(closing(error_page(client_fault(&e))))),
        }
    }

    /// A request body the client is still sending, limited to `max_body_bytes`, with what it
    /// tells of the sending; a body already all here, as it is.
    fn client_body(&self, body: Body) -> (Body, Option<Arc<Sending>>) {
        if hyper::body::Body::is_end_stream(&body) {
            return (body, None);
        }
        let body = match self.limits.max_body_bytes {
            0 => body,
            max => http_body_util::Limited::new(body, max as usize).boxed(),
        };
        let sending = Arc::new(Sending::default());
        let watched = Watched {
            body,
            sending: sending.clone(),
        };
        (watched.boxed(), Some(sending))
    }

    /// Sends a copy of the request to `mirror` in the background (proxy-mirror), and returns
    /// the body to send upstream, which feeds the copy as it is read. The copy gets what it
    /// can: it is dropped when the mirror falls behind, and its answer is thrown away.
    fn mirror(&self, mirror: Mirror, ctx: &Ctx, body: Body, bodiless: bool) -> Body {
        let Some(node) = mirror.upstream.pick(&[], &ctx.vars()) else {
            return body;
        };
        let (copy, body) = if bodiless { (empty(), body) } else { tee(body) };
        let target = &mirror.path_and_query;
        let Ok((key, request)) = upstream_request(ctx, &mirror.upstream, node, target, copy, false)
        else {
            return body;
        };
        let pool = self.pool.clone();
        let upstream = mirror.upstream;
        let timeouts = upstream.timeouts;
        tokio::spawn(async move {
            let budget = timeouts.budget();
            let sent = pool.send(&key, &upstream.keepalive, timeouts.connect, request);
            let answered = tokio::time::timeout(budget, async {
                // Read to the end, so the connection goes back to the pool.
                let response = sent.await.map_err(|e| e.to_string())?;
                response.body.collect().await.map_err(|e| e.to_string())
            })
            .await;
            if let Err(error) = answered.unwrap_or_else(|_| Err("timed out".into())) {
                tracing::debug!(mirror = %upstream.targets[node].authority, error, "proxy-mirror: the copy failed");
            }
        });
        body
    }
}

/// Why a request got no upstream answer: the upstream's failure (502, 504), or the client's
/// (a request the gateway cannot send, a body it failed to send: 400, 408, 413).
enum Failed {
    Upstream(StatusCode),
    Client(StatusCode),
}

/// How the client's sending of a request body went, as the body was read.
#[derive(Debug, Default)]
struct Sending {
    /// Whether the body last waited for the client.
    waiting: std::sync::atomic::AtomicBool,
    /// The status of the client's fault, once the body failed (0: none).
    failed: std::sync::atomic::AtomicU16,
}

impl Sending {
    /// The client's fault in `outcome`, if it is one: the body failed (malformed or cut
    /// short: 400; over the limit: 413), or the request timed out waiting for the client's
    /// body (408).
    fn fault<T>(&self, outcome: &Result<T, Failure>) -> Option<StatusCode> {
        use std::sync::atomic::Ordering::Relaxed;
        match outcome {
            Err(Failure::Upstream(http1::Error::Body(_))) => {
                StatusCode::from_u16(self.failed.load(Relaxed)).ok()
            }
            Err(Failure::ConnectTimeout) if self.waiting.load(Relaxed) => {
                Some(StatusCode::REQUEST_TIMEOUT)
            }
            _ => None,
        }
    }
}

/// The route `ctx` matches in `snapshot`, noted in `ctx` (its id, service, `:name` segments).
fn route<'s>(ctx: &mut Ctx, snapshot: &'s Snapshot) -> Option<&'s Route> {
    let route = snapshot.router.find(&ctx.vars())?;
    ctx.route_id = route.id.clone();
    ctx.uri_params = route.uri_params(&ctx.original_path);
    ctx.service_id = route.service_id.clone();
    Some(route)
}

/// The upstream's answer (or the gateway's 502 or 504) as the response, with a WebSocket
/// tunnelled once the upstream agreed, and what the log phase needs of it.
fn answered(
    ctx: &mut Ctx,
    upstream: &Upstream,
    websocket: Option<hyper::upgrade::OnUpgrade>,
    forwarded: Result<Answer, Failed>,
) -> (Outgoing, Upstreamed) {
    match forwarded {
        Ok(answer) => {
            let target = &upstream.targets[answer.node];
            ctx.answered_by = Some((target.host.clone(), target.port));
            if let (Some(client), Some(upgraded)) = (websocket, answer.upgraded) {
                tunnel(client, upgraded);
            }
            let upstreamed = Upstreamed {
                node: Some((target.host.clone(), answer.took)),
                status: Some(answer.status.as_u16()),
            };
            let out = Outgoing {
                status: answer.status,
                fields: Fields {
                    lines: answer.lines,
                    ..Fields::default()
                },
                body: answer.body,
            };
            (out, upstreamed)
        }
        Err(Failed::Upstream(status)) => {
            let upstreamed = Upstreamed {
                node: None,
                status: Some(status.as_u16()),
            };
            (Outgoing::of(error_page(status)), upstreamed)
        }
        // The body is not all read: the connection cannot carry another request.
        Err(Failed::Client(status)) => (
            Outgoing::of(closing(error_page(status))),
            Upstreamed::default(),
        ),
    }
}

/// The request phases: `rewrite`, then `access`, of the global rules' plugins and then the
/// route's, up to the first plugin that answers. An authenticated consumer's plugins join the
/// route's, theirs winning, and get their rewrite phase once the consumer is known. The reply,
/// and the chain the response and log phases run (the route's, or it with the consumer's).
/// An empty chain is skipped (awaiting it would still build and move its future).
async fn request_phases<'r>(
    ctx: &mut Ctx,
    global: &Chain,
    route: &'r Route,
) -> (Option<Reply>, Cow<'r, Chain>) {
    let mut reply = None;
    for chain in [global, &route.plugins] {
        if reply.is_none() && !chain.is_empty() {
            reply = chain.rewrite(ctx).await;
        }
    }
    let consumer = ctx.consumer.as_ref().map(|(c, _)| c.clone());
    let plugins = match &consumer {
        Some(consumer) if !consumer.plugins.is_empty() => {
            if reply.is_none() {
                reply = consumer.plugins.rewrite(ctx).await;
            }
            Cow::Owned(route.plugins.overlaid(&consumer.plugins))
        }
        _ => Cow::Borrowed(&route.plugins),
    };
    for chain in [global, &plugins] {
        if reply.is_none() && !chain.is_empty() {
            reply = chain.access(ctx).await;
        }
    }
    (reply, plugins)
}

/// The response phases (APISIX's `header_filter` and `body_filter`), for upstream and plugin
/// responses alike: the headers request plugins set (rate-limit quotas), then `chains`' response
/// hooks; a body they replace or rewrite loses its length headers.
fn response_phases(ctx: &mut Ctx, chains: [&Chain; 2], out: Outgoing) -> Outgoing {
    let mut fields = out.fields;
    fields.set = std::mem::take(&mut ctx.response_headers);
    let mut head = ResponseHead {
        status: out.status,
        fields,
        body: None,
        rewrite: None,
    };
    for chain in chains {
        chain.response(ctx, &mut head);
    }
    let body = match (head.body.take(), head.rewrite.take()) {
        (None, None) => out.body,
        (replaced, rewrite) => {
            let headers = head.headers();
            headers.remove(header::CONTENT_LENGTH);
            headers.remove(header::TRANSFER_ENCODING);
            match (replaced, rewrite) {
                (Some(replaced), _) => full(replaced),
                (None, Some(rewrite)) => rewritten(out.body, rewrite),
                (None, None) => out.body,
            }
        }
    };
    Outgoing {
        status: head.status,
        fields: head.fields,
        body,
    }
}

/// What the log phase knows of the request `ctx` on `route`, answered with `out`.
fn log_of(
    ctx: &mut Ctx,
    route: &Route,
    upstream: Upstreamed,
    out: &Outgoing,
    arrived: Option<u64>,
) -> Log {
    let (matched_uri, matched_host) = route.matched(&ctx.original_path, &ctx.host);
    let (node, upstream_time) = upstream.node.unzip();
    Log {
        route: route.id.clone(),
        route_name: route.labels.name.clone(),
        service: route.service_id.clone(),
        consumer: ctx.consumer.as_ref().map(|(c, _)| c.clone()),
        host: std::mem::take(&mut ctx.host),
        uri: std::mem::take(&mut ctx.original_path),
        matched_uri,
        matched_host,
        node,
        upstream_status: upstream.status,
        upstream_time,
        status: out.status.as_u16(),
        request_time: Duration::ZERO,
        request_bytes: arrived.unwrap_or_else(|| request_size(ctx)),
        response_bytes: ("HTTP/1.1 200 OK\r\n".len() + out.fields.size() + 2) as u64,
        trace: ctx.trace.take(),
    }
}

/// The status for a client body that failed: over the limit (413), too slow (408), malformed
/// or cut short (400).
fn client_fault(e: &BoxError) -> StatusCode {
    if e.is::<http_body_util::LengthLimitError>() {
        StatusCode::PAYLOAD_TOO_LARGE
    } else if e
        .downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout)
    {
        StatusCode::REQUEST_TIMEOUT
    } else {
        StatusCode::BAD_REQUEST
    }
}

/// A client's body, telling [`Sending`] how its reading goes.
struct Watched {
    body: Body,
    sending: Arc<Sending>,
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        use std::sync::atomic::Ordering::Relaxed;
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        self.sending.waiting.store(polled.is_pending(), Relaxed);
        if let std::task::Poll::Ready(Some(Err(e))) = &polled {
            let status = client_fault(e);
            self.sending.failed.store(status.as_u16(), Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection's place in its client's count (`max_connections_per_client`).
struct ClientPlace(Option<(Clients, std::net::IpAddr)>);

/// Open connections per client address.
type Clients = Arc<std::sync::Mutex<crate::FastMap<std::net::IpAddr, u32>>>;

impl Drop for ClientPlace {
    fn drop(&mut self) {
        let Some((clients, client)) = self.0.take() else {
            return;
        };
        let mut open = clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&client);
            }
        }
    }
}

/// A request on its way upstream (see [`DataPlane::outbound`]).
struct Outbound {
    upstream: Arc<Upstream>,
    body: Body,
    /// What the body tells of the client's sending, when the client still sends it.
    sending: Option<Arc<Sending>>,
    websocket: Option<hyper::upgrade::OnUpgrade>,
}

/// What the log phase needs of the upstream's part: the node that answered and how long it
/// took, and the status as nginx's `$upstream_status` (the gateway's 502 or 504 when no node
/// answered).
#[derive(Default)]
struct Upstreamed {
    node: Option<(Arc<str>, Duration)>,
    status: Option<u16>,
}

/// An upstream's answer: its status, header lines and body, the node that gave it and how long
/// it took, and the connection itself when it switched protocols (101).
struct Answer {
    status: StatusCode,
    lines: http1::Lines,
    body: Body,
    node: usize,
    took: Duration,
    upgraded: Option<http1::Connection>,
}

/// A response on its way to the client.
pub(super) struct Outgoing {
    pub status: StatusCode,
    pub fields: Fields,
    pub body: Body,
}

impl Outgoing {
    fn of(response: Response<Body>) -> Outgoing {
        let (parts, body) = response.into_parts();
        Outgoing {
            status: parts.status,
            fields: Fields::of(parts.headers),
            body,
        }
    }

    /// As hyper's server takes it.
    pub(super) fn into_response(self) -> Response<Body> {
        let mut response = Response::new(self.body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.fields.into_map();
        response
    }
}

/// What happens once a response body has been sent, or the client has gone away: the log
/// phase of `loggers`, and giving back what the request `held`.
struct Finish {
    log: Log,
    loggers: Vec<Arc<dyn Plugin>>,
    started: Instant,
    _held: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.log.request_time = self.started.elapsed();
        for plugin in &self.loggers {
            plugin.log(&self.log);
        }
    }
}

impl Finish {
    /// `body`, counting its bytes on the way; dropping it (at its end, or when the client goes
    /// away) finishes the request.
    fn after(mut self, body: Body) -> Body {
        // A method call, so the closure owns all of `self` (not just the field it changes).
        body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                self.sent(data.len());
            }
            frame
        })
        .boxed()
    }

    fn sent(&mut self, bytes: usize) {
        self.log.response_bytes += bytes as u64;
    }
}

/// The request's size as it arrived, from what is left of it: request line, headers and the
/// declared body.
fn request_size(ctx: &Ctx) -> u64 {
    let line = ctx.method.as_str().len()
        + ctx.original_path.len()
        + ctx.query.as_ref().map_or(0, |q| q.len() + 1)
        + " HTTP/1.1\r\n".len();
    let body = declared_length(&ctx.headers).ok().flatten().unwrap_or(0);
    (line + headers_size(&ctx.headers)) as u64 + body
}

/// Header lines (`name: value\r\n`) and the blank line after them.
fn headers_size(headers: &HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    lines + 2
}

/// The request as the upstream node sees it — origin-form `target`, the client's headers but
/// the connection's own, the `Host` `pass_host` says, `X-Forwarded-*`, `X-Real-IP` and the
/// consumer's headers — written straight into its head; and the pool key of the connection it
/// goes on.
fn upstream_request(
    ctx: &Ctx,
    upstream: &Upstream,
    node: usize,
    target: &str,
    body: Body,
    upgrade: bool,
) -> Result<(pool::Key, http1::Request), StatusCode> {
    // Spaces or control characters would end the request line early: a smuggled request.
    if target.is_empty() || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(StatusCode::BAD_REQUEST);
    }
    let target_node = &upstream.targets[node];
    let node_host = || {
        let default_port = if upstream.tls.is_some() { 443 } else { 80 };
        if target_node.port == default_port {
            target_node.host.to_string()
        } else {
            target_node.authority.to_string()
        }
    };
    let chosen = match (&ctx.upstream_host, upstream.pass_host) {
        (Some(host), _) => Some(host.clone()),
        (None, PassHost::Pass) => None,
        (None, PassHost::Node) => Some(node_host()),
        (None, PassHost::Rewrite) => upstream.upstream_host.clone(),
    };
    let client_host = ctx.headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let host = match (chosen, client_host) {
        (Some(host), _) => std::borrow::Cow::Owned(host),
        (None, Some(host)) => std::borrow::Cow::Borrowed(host),
        (None, None) => std::borrow::Cow::Owned(node_host()),
    };
    // TLS names the host the request is for, as APISIX's `proxy_ssl_name $upstream_host`.
    let tls = match &upstream.tls {
        Some(config) => {
            let name = crate::tls::server_name(strip_port(&host))
                .or_else(|| crate::tls::server_name(&target_node.host))
                .ok_or(StatusCode::BAD_REQUEST)?;
            Some(pool::Tls {
                config: config.clone(),
                name,
            })
        }
        None => None,
    };
    let key = pool::Key {
        host: target_node.host.clone(),
        port: target_node.port,
        tls,
    };

    let mut request = http1::Request::start(ctx.method.clone(), target, body);
    request.header("host", host.as_bytes());
    let named = connection_tokens(&ctx.headers);
    let consumer = ctx.consumer.as_ref().map(|(consumer, credential)| {
        [
            Some(consumer.username.as_str()),
            credential.as_deref(),
            consumer.custom_id.as_deref(),
            consumer.group_id.as_deref(),
        ]
    });
    let (mut earlier, mut declared) = (None, None);
    for (name, value) in &ctx.headers {
        if *name == X_FORWARDED_FOR {
            earlier.get_or_insert(value);
            continue;
        }
        if *name == header::CONTENT_LENGTH {
            // Repeated (or listed) lengths agree, or the server refused the request: one line.
            declared = http1::content_length(declared, value.as_bytes()).unwrap_or(declared);
            continue;
        }
        let set_here = *name == header::HOST
            || SET_HERE.contains(name)
            || (consumer.is_some() && CONSUMER_HEADERS.contains(&name.as_str()));
        if set_here || HOP_BY_HOP.contains(name) || named.contains(name) {
            continue;
        }
        request.field(name, value);
    }
    let mut remote = [0; 64];
    let remote = ip_text(ctx.remote_addr, &mut remote);
    match earlier {
        Some(earlier) => {
            let mut forwarded = earlier.as_bytes().to_vec();
            forwarded.extend_from_slice(b", ");
            forwarded.extend_from_slice(remote);
            request.header("x-forwarded-for", &forwarded);
        }
        None => request.header("x-forwarded-for", remote),
    }
    request.header("x-real-ip", remote);
    request.header("x-forwarded-proto", ctx.scheme.as_bytes());
    request.header("x-forwarded-host", ctx.host.as_bytes());
    let mut port = itoa::Buffer::new();
    request.header("x-forwarded-port", port.format(ctx.server_port).as_bytes());
    for (name, value) in CONSUMER_HEADERS
        .into_iter()
        .zip(consumer.into_iter().flatten())
    {
        if let Some(value) = value {
            request.header(name, value.as_bytes());
        }
    }
    if let Some(length) = declared {
        let mut digits = itoa::Buffer::new();
        request.header("content-length", digits.format(length).as_bytes());
    }
    if upgrade {
        request.header("connection", b"upgrade");
        request.header("upgrade", b"websocket");
    }
    Ok((key, request.end(declared.is_some())))
}

/// Joins the client's upgraded connection, once the 101 has reached it, to the upstream's.
fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: http1::Connection) {
    let mut upstream = upstream.into_stream();
    tokio::spawn(async move {
        let client = match client.await {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The headers the gateway writes itself (with `Host` and `X-Forwarded-For`).
const SET_HERE: [HeaderName; 4] = [
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-port"),
];

/// `ip` as text in `buf`: an IPv4 address's digits written directly (the standard formatter,
/// which supports padding, costs more than the rest of the request's head).
fn ip_text(ip: std::net::IpAddr, buf: &mut [u8; 64]) -> &[u8] {
    use std::io::Write;
    let mut at = 0;
    let mut digits = itoa::Buffer::new();
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[at] = b'.';
                    at += 1;
                }
                let digits = digits.format(octet).as_bytes();
                buf[at..at + digits.len()].copy_from_slice(digits);
                at += digits.len();
            }
        }
        std::net::IpAddr::V6(_) => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{ip}");
            at = cursor.position() as usize;
        }
    }
    &buf[..at]
}

/// The headers `Connection` names as the connection's own.
fn connection_tokens(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| http1::tokens(value.as_bytes()))
        .filter_map(|name| HeaderName::from_bytes(name).ok())
        .collect()
}

fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The body length a message with `headers` declares, as [`http1::content_length`] reads it.
fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, http1::Error> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).into_iter();
    values.try_fold(None, |declared, value| {
        http1::content_length(declared, value.as_bytes())
    })
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// `body` and a copy of it: the copy gets each chunk as `body` is read, and ends early
/// (failing a declared length) when it falls more than a few chunks behind.
fn tee(body: Body) -> (Body, Body) {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(16);
    let mut sender = Some(sender);
    let body = body
        .map_frame(move |frame| {
            if let (Some(data), Some(to)) = (frame.data_ref(), &sender)
                && to.try_send(data.clone()).is_err()
            {
                sender = None;
            }
            frame
        })
        .boxed();
    let chunks = futures::stream::unfold(receiver, |mut receiver| async move {
        let chunk = receiver.recv().await?;
        Some((Ok::<_, BoxError>(hyper::body::Frame::data(chunk)), receiver))
    });
    (http_body_util::StreamBody::new(chunks).boxed(), body)
}

/// `body` read whole (up to the rewrite's limit; the rest is cut off) and rewritten, sent as
/// one piece once it is.
fn rewritten(body: Body, rewrite: BodyRewrite) -> Body {
    let whole = async move {
        let mut body = body;
        let mut read = bytes::BytesMut::new();
        while read.len() < rewrite.limit {
            let Some(frame) = body.frame().await else {
                break;
            };
            if let Ok(data) = frame?.into_data() {
                let room = rewrite.limit - read.len();
                read.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
        Ok::<_, BoxError>(hyper::body::Frame::data((rewrite.apply)(read.freeze())))
    };
    http_body_util::StreamBody::new(futures::stream::once(whole)).boxed()
}

fn reply_response(reply: Reply) -> Response<Body> {
    let mut response = Response::new(full(reply.body));
    *response.status_mut() = reply.status;
    *response.headers_mut() = reply.headers;
    response
}

/// APISIX's JSON error body: `{"error_msg": "..."}`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error_msg": message }).to_string();
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `response` closing its connection (a request the connection cannot be trusted after).
fn closing(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The HTML error page nginx (and so APISIX) answers 400/413/502/503/504 with.
fn error_page(status: StatusCode) -> Response<Body> {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let body = format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n\
         <center><h1>{title}</h1></center>\r\n<hr><center>axle</center>\r\n\
         </body>\r\n</html>\r\n"
    );
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_the_standard_formatter_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "203.0.113.255",
            "::1",
            "2001:db8::ff00:42:8329",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip, &mut [0; 64]), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(strip_port("a.com:8080"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
