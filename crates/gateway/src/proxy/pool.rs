//! Upstream connections: HTTP/1.1 over TCP or TLS, kept alive between requests as the
//! upstream's `keepalive_pool` allows (size per node, idle timeout, requests per connection).
//!
//! Each data-plane worker has its own pool, so a connection is driven by the thread that
//! uses it. A connection goes back to the pool when its response body has been read to the
//! end; one whose body was dropped half-read is closed, as it cannot carry another request.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::Body;
use crate::resource::KeepalivePool;

/// Where a connection goes: a node, and the TLS identity it is reached with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub host: String,
    pub port: u16,
    pub tls: Option<Tls>,
}

/// The client side of a TLS connection: its configuration and the server name (SNI) sent.
#[derive(Debug, Clone)]
pub struct Tls {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

impl PartialEq for Tls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.name == other.name
    }
}

impl Eq for Tls {}

impl Hash for Tls {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.config).hash(state);
        self.name.hash(state);
    }
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No connection (refused, unreachable, TLS handshake failed): another node may be tried.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect: timed out")]
    ConnectTimeout,
    /// The connection failed while the request or response was on it.
    #[error("{0}")]
    Upstream(hyper::Error),
}

#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<HashMap<Key, Vec<Idle>>>,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Body>,
    expires: Instant,
    /// Requests this connection has carried.
    used: u64,
}

impl Pool {
    /// Sends `request` (origin-form, with its `Host`) on an idle connection to `key`, else on a
    /// new one; the response's body returns the connection to the pool once read.
    pub async fn send(
        self: &Arc<Self>,
        key: &Key,
        keepalive: &KeepalivePool,
        connect_timeout: Duration,
        mut request: Request<Body>,
    ) -> Result<Response<PooledBody>, Failure> {
        while let Some(mut idle) = self.take(key) {
            if idle.sender.ready().await.is_err() {
                continue; // closed by the node while idle
            }
            match idle.sender.try_send_request(request).await {
                Ok(response) => return Ok(self.lend(key, keepalive, idle, response)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(Failure::Upstream(e.into_error())),
                },
            }
        }
        let mut sender = tokio::time::timeout(connect_timeout, connect(key))
            .await
            .map_err(|_| Failure::ConnectTimeout)??;
        let response = sender
            .send_request(request)
            .await
            .map_err(Failure::Upstream)?;
        let idle = Idle {
            sender,
            expires: Instant::now(),
            used: 0,
        };
        Ok(self.lend(key, keepalive, idle, response))
    }

    /// Drops the connections that were closed or idle too long.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, list| {
            list.retain(|c| c.expires > now && !c.sender.is_closed());
            !list.is_empty()
        });
    }

    /// The most recently used open connection to `key`.
    fn take(&self, key: &Key) -> Option<Idle> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        while let Some(c) = list.pop() {
            if c.expires > now && !c.sender.is_closed() {
                return Some(c);
            }
        }
        None
    }

    fn lend(
        self: &Arc<Self>,
        key: &Key,
        keepalive: &KeepalivePool,
        mut idle: Idle,
        response: Response<Incoming>,
    ) -> Response<PooledBody> {
        idle.used += 1;
        // A switched protocol takes the connection over; a connection past its request
        // budget is not reused.
        let reusable = response.status() != http::StatusCode::SWITCHING_PROTOCOLS
            && idle.used < keepalive.requests
            && keepalive.size > 0;
        let give_back = reusable.then(|| GiveBack {
            pool: Arc::downgrade(self),
            key: key.clone(),
            idle,
            idle_timeout: Duration::try_from_secs_f64(keepalive.idle_timeout)
                .unwrap_or(Duration::from_secs(60)),
            size: keepalive.size,
        });
        response.map(|body| PooledBody {
            body,
            done: false,
            give_back,
        })
    }

    fn put(&self, mut give_back: GiveBack) {
        give_back.idle.expires = Instant::now() + give_back.idle_timeout;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(give_back.key).or_default();
        list.push(give_back.idle);
        if list.len() > give_back.size {
            list.remove(0); // the least recently used
        }
    }
}

/// Opens a connection to `key` and spawns the task that drives it.
async fn connect(key: &Key) -> Result<SendRequest<Body>, Failure> {
    let tcp = TcpStream::connect((key.host.as_str(), key.port))
        .await
        .map_err(Failure::Connect)?;
    let _ = tcp.set_nodelay(true);
    match &key.tls {
        None => handshake(TokioIo::new(tcp)).await,
        Some(tls) => {
            let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
            let stream = connector
                .connect(tls.name.clone(), tcp)
                .await
                .map_err(Failure::Connect)?;
            handshake(TokioIo::new(stream)).await
        }
    }
}

async fn handshake<I>(io: I) -> Result<SendRequest<Body>, Failure>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Failure::Connect(std::io::Error::other(e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection closed");
        }
    });
    Ok(sender)
}

/// A response body that gives its connection back to the pool once read to the end.
#[derive(Debug)]
pub struct PooledBody {
    body: Incoming,
    done: bool,
    give_back: Option<GiveBack>,
}

#[derive(Debug)]
struct GiveBack {
    pool: Weak<Pool>,
    key: Key,
    idle: Idle,
    idle_timeout: Duration,
    size: usize,
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.done = true,
            Poll::Ready(Some(Err(_))) => self.give_back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if !(self.done || self.body.is_end_stream()) {
            return;
        }
        if let Some(give_back) = self.give_back.take()
            && let Some(pool) = give_back.pool.upgrade()
        {
            pool.put(give_back);
        }
    }
}
