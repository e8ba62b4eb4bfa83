//! Upstream connections, kept alive between requests as the upstream's `keepalive_pool` allows
//! (size per node, idle timeout, requests per connection), speaking HTTP/1.1 over TCP or TLS
//! through [`http1`](super::http1) in the task of the request that uses them.
//!
//! Each data-plane worker has its own pool. A connection goes back to the pool as soon as its
//! response body has been read to the end; one whose body was dropped half-read is closed, as
//! it cannot carry another request. A request without a body that finds its reused connection
//! closed by the node (the race every keepalive pool has) is sent again on another one.

use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use hyper::body::{Body as _, Frame, SizeHint};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::http1::{self, Connection, Framing, Lines, Stream};
use crate::resource::KeepalivePool;

/// Where a connection goes: a node, and the TLS identity it is reached with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub host: Arc<str>,
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
    Upstream(http1::Error),
}

/// A node's answer: its status, its header lines and the body, which holds the connection.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub lines: Lines,
    pub body: PooledBody,
}

#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<crate::FastMap<Key, Vec<Idle>>>,
}

#[derive(Debug)]
struct Idle {
    connection: Connection,
    expires: Instant,
    /// Requests this connection has carried.
    used: u64,
}

impl Pool {
    /// Sends `request` on an idle connection to `key`, else on a new one; the response's body
    /// gives the connection back once read.
    pub async fn send(
        self: &Arc<Self>,
        key: &Key,
        keepalive: &KeepalivePool,
        connect_timeout: Duration,
        request: http1::Request,
    ) -> Result<Response, Failure> {
        let http1::Request {
            method,
            head,
            body,
            chunked,
        } = request;
        let replayable = body.is_end_stream();
        let mut body = Some(body);
        loop {
            let (mut idle, reused) = match self.take(key) {
                Some(idle) => (idle, true),
                None => {
                    // Boxed: it is the rarer path, and the largest part of the request's future.
                    let connecting = Box::pin(connect(key));
                    let connection = tokio::time::timeout(connect_timeout, connecting)
                        .await
                        .map_err(|_| Failure::ConnectTimeout)??;
                    let idle = Idle {
                        connection,
                        expires: Instant::now(),
                        used: 0,
                    };
                    (idle, false)
                }
            };
            let sent = body.take().unwrap_or_else(super::empty);
            match idle
                .connection
                .exchange(&method, &head, sent, chunked)
                .await
            {
                Ok(answer) => return Ok(self.lend(key, keepalive, idle, answer)),
                Err(http1::Error::Closed) if reused && replayable => continue,
                Err(e) => return Err(Failure::Upstream(e)),
            }
        }
    }

    /// Drops the connections that were closed or idle too long.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, list| {
            list.retain(|c| c.expires > now && !c.connection.hung_up());
            !list.is_empty()
        });
    }

    /// The most recently used open connection to `key`.
    fn take(&self, key: &Key) -> Option<Idle> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        while let Some(c) = list.pop() {
            if c.expires > now && !c.connection.hung_up() {
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
        head: http1::Head,
    ) -> Response {
        idle.used += 1;
        // A connection past its request budget is not reused.
        let reusable = head.keep_alive && idle.used < keepalive.requests && keepalive.size > 0;
        let give_back = reusable.then(|| GiveBack {
            pool: Arc::downgrade(self),
            key: key.clone(),
            idle_timeout: Duration::try_from_secs_f64(keepalive.idle_timeout)
                .unwrap_or(Duration::from_secs(60)),
            size: keepalive.size,
        });
        let mut body = PooledBody {
            idle: Some(idle),
            framing: head.framing,
            give_back,
        };
        if body.framing == Framing::Empty {
            body.finish();
        }
        Response {
            status: head.status,
            lines: head.lines,
            body,
        }
    }

    fn put(&self, mut connection: Idle, give_back: GiveBack) {
        let now = Instant::now();
        connection.expires = now.checked_add(give_back.idle_timeout).unwrap_or(now);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(give_back.key).or_default();
        list.push(connection);
        if list.len() > give_back.size {
            list.remove(0); // the least recently used
        }
    }
}

/// Opens a connection to `key`.
async fn connect(key: &Key) -> Result<Connection, Failure> {
    let tcp = TcpStream::connect((&*key.host, key.port))
        .await
        .map_err(Failure::Connect)?;
    let _ = tcp.set_nodelay(true);
    let stream = match &key.tls {
        None => Stream::Tcp(tcp),
        Some(tls) => {
            let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
            let stream = connector
                .connect(tls.name.clone(), tcp)
                .await
                .map_err(Failure::Connect)?;
            Stream::Tls(Box::new(stream))
        }
    };
    Ok(Connection::new(stream))
}

/// A response body read straight from its connection, which goes back to the pool once the
/// body has been read to the end (and is closed if the body is dropped before).
#[derive(Debug)]
pub struct PooledBody {
    /// The connection, until the body's end.
    idle: Option<Idle>,
    framing: Framing,
    give_back: Option<GiveBack>,
}

#[derive(Debug)]
struct GiveBack {
    pool: Weak<Pool>,
    key: Key,
    idle_timeout: Duration,
    size: usize,
}

impl PooledBody {
    /// The connection of a switched protocol (101), for the tunnel.
    pub fn upgraded(&mut self) -> Option<Connection> {
        if self.framing != Framing::Upgrade {
            return None;
        }
        self.idle.take().map(|idle| idle.connection)
    }

    fn finish(&mut self) {
        let Some(idle) = self.idle.take() else { return };
        if let Some(give_back) = self.give_back.take()
            && let Some(pool) = give_back.pool.upgrade()
        {
            pool.put(idle, give_back);
        }
    }

    fn ended(&self) -> bool {
        matches!(self.framing, Framing::Empty | Framing::Length(0))
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = http1::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, http1::Error>>> {
        let this = self.get_mut();
        let Some(idle) = &mut this.idle else {
            return Poll::Ready(None);
        };
        let polled = idle.connection.poll_body(&mut this.framing, cx);
        match polled {
            Poll::Ready(Some(Err(_))) => this.idle = None,
            // The last bytes of a sized body: the connection is free before they are sent on.
            Poll::Ready(_) if this.ended() => this.finish(),
            _ => {}
        }
        polled.map_ok(Frame::data)
    }

    fn is_end_stream(&self) -> bool {
        self.idle.is_none() || self.ended() || self.framing == Framing::Upgrade
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            _ if self.idle.is_none() => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Empty | Framing::Upgrade => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
