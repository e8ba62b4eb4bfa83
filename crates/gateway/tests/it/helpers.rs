//! `spawn_gateway`: the gateway on fresh storage; `spawn_upstream`: an echo server.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axle_core::config::Config;
use axle_core::platform::Platform;
use axle_core::testing::{Backends, TestPlatform, TestServer};
use axle_gateway::Listener;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::Service;

pub const KEY: &str = "edd1c9f034335f136f87ad84b625c8f1";

pub struct Gateway {
    pub admin: TestServer,
    pub proxy: SocketAddr,
    /// The data plane's TLS listener.
    pub tls_proxy: SocketAddr,
    /// The Prometheus exporter.
    pub metrics: SocketAddr,
    pub client: reqwest::Client,
    /// What it runs with (to start another gateway on the same store).
    pub config: Arc<Config>,
    /// Stops the data plane and the platform's tasks (the store follower).
    stop: Vec<CancellationToken>,
    pub _platform: Option<TestPlatform>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.iter().for_each(CancellationToken::cancel);
    }
}

/// The gateway on fresh storage, the Admin API key set to [`KEY`].
pub async fn spawn_gateway(backends: Backends) -> Gateway {
    let platform = TestPlatform::start(backends).await;
    let mut gateway = start_gateway(&platform.platform).await;
    gateway._platform = Some(platform);
    gateway
}

/// The gateway on `config` (its data directory is the caller's to keep or drop).
pub async fn spawn_gateway_with(config: Config) -> Gateway {
    let platform = Platform::start(config, CancellationToken::new())
        .await
        .unwrap();
    start_gateway(&platform).await
}

/// The gateway on SQLite with its configuration in the etcd at `endpoint`, under a prefix of
/// its own; the returned directory holds its data.
pub async fn spawn_gateway_on_etcd(endpoint: &str) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("t{}", axle_core::id::new_id().simple());
    let mut config = TestPlatform::config(&Backends::embedded(), &tag, dir.path());
    let gateway = &mut config.services.gateway;
    gateway.config_provider = axle_core::config::ConfigProvider::Etcd;
    gateway.etcd.endpoints = vec![endpoint.to_string()];
    gateway.etcd.prefix = format!("/{tag}");
    (spawn_gateway_with(config).await, dir)
}

async fn start_gateway(platform: &Platform) -> Gateway {
    let key_file = platform.config.data_dir.join("gateway/admin_key");
    std::fs::create_dir_all(key_file.parent().unwrap()).unwrap();
    std::fs::write(&key_file, KEY).unwrap();
    let gateway = axle_gateway::build(platform, &[]).await.unwrap();
    let admin = TestServer::spawn(&gateway.admin).await;
    let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
    let (plain, tls) = (bind().await.unwrap(), bind().await.unwrap());
    let (proxy, tls_proxy) = (plain.local_addr().unwrap(), tls.local_addr().unwrap());
    let stop = CancellationToken::new();
    let exporter = bind().await.unwrap();
    let metrics = exporter.local_addr().unwrap();
    if let Some(router) = gateway.exporter {
        tokio::spawn(axle_core::http::serve(exporter, router, stop.clone()));
    }
    if let Some(plane) = gateway.data_plane {
        let listeners = vec![
            Listener {
                tcp: plain,
                tls: false,
            },
            Listener {
                tcp: tls,
                tls: true,
            },
        ];
        tokio::spawn(plane.serve(listeners, stop.clone()));
    }
    Gateway {
        admin,
        proxy,
        tls_proxy,
        metrics,
        client: reqwest::Client::new(),
        config: platform.config.clone(),
        stop: vec![stop, platform.shutdown.clone()],
        _platform: None,
    }
}

impl Gateway {
    /// An Admin API call with the key; returns (status, body).
    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, self.admin.url(path))
            .header("X-API-KEY", KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// An Admin API call that must be refused with a 400; returns its `error_msg`.
    pub async fn refused(&self, method: Method, path: &str, body: Value) -> String {
        let (status, body) = self.admin(method, path, Some(body)).await;
        assert_eq!(status, 400, "{path}: {body}");
        body["error_msg"].as_str().unwrap_or_default().to_string()
    }

    /// A PUT that must be refused with a 400 whose `error_msg` names `field`.
    pub async fn refused_naming(&self, path: &str, body: Value, field: &str) {
        let message = self.refused(Method::PUT, path, body).await;
        assert!(message.contains(field), "{field}: {message}");
    }

    pub async fn put(&self, path: &str, body: Value) -> Value {
        let (status, body) = self.admin(Method::PUT, path, Some(body)).await;
        assert!(
            status == 200 || status == 201,
            "PUT {path}: {status} {body}"
        );
        body
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    /// GET through the data plane until it answers `status` (config changes apply within
    /// milliseconds, not synchronously).
    pub async fn wait_for(&self, path: &str, status: u16) -> reqwest::Response {
        axle_core::testing::eventually(10, &format!("{path} to answer {status}"), || async {
            let r = self.client.get(self.url(path)).send().await.ok()?;
            (r.status().as_u16() == status).then_some(r)
        })
        .await
    }
}

/// An upstream answering every request with what it saw, as JSON, tagged with `name`.
pub async fn spawn_upstream(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = echo(name, StatusCode::OK);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// The echo upstream answering `status`, on `addr` (or a free port), whose connections all
/// close when the returned task is aborted: a node that can go down and come back.
pub async fn spawn_node(
    name: &'static str,
    addr: Option<SocketAddr>,
    status: StatusCode,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(addr.unwrap_or(([127, 0, 0, 1], 0).into()))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = echo(name, status);
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new(); // aborted with this task
        while let Ok((stream, _)) = listener.accept().await {
            let app = app.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |r| app.clone().call(r));
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// Answers `status` with a JSON echo of the request and the upstream's name. The query may
/// ask for a slow upstream: `sleep_ms` before the answer, `drip_ms` between the head and the
/// body (a whitespace chunk, then the echo).
fn echo(name: &'static str, status: StatusCode) -> axum::Router {
    axum::Router::new().fallback(move |request: Request| async move {
        let (parts, body) = request.into_parts();
        let asked = |what: &str| {
            let mut pairs = parts.uri.query().into_iter().flat_map(|q| q.split('&'));
            pairs
                .find_map(|p| p.strip_prefix(what)?.strip_prefix('='))
                .map(|ms| std::time::Duration::from_millis(ms.parse().unwrap()))
        };
        if let Some(sleep) = asked("sleep_ms") {
            tokio::time::sleep(sleep).await;
        }
        let headers: serde_json::Map<String, Value> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
            .collect();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        let echoed = json!({
            "upstream": name,
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        });
        let Some(drip) = asked("drip_ms") else {
            return (status, axum::Json(echoed)).into_response();
        };
        let chunks = futures::stream::iter([" ".to_string(), echoed.to_string()]).then(
            move |chunk| async move {
                if chunk != " " {
                    tokio::time::sleep(drip).await;
                }
                Ok::<_, std::convert::Infallible>(chunk)
            },
        );
        (status, axum::body::Body::from_stream(chunks)).into_response()
    })
}

/// An upstream that accepts WebSocket upgrades and then echoes every byte back.
pub async fn spawn_ws_echo() -> SocketAddr {
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service =
                hyper::service::service_fn(|mut req: hyper::Request<Incoming>| async move {
                    let upgraded = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(io) = upgraded.await {
                            let (mut r, mut w) = tokio::io::split(TokioIo::new(io));
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        }
                    });
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .status(101)
                            .header("connection", "upgrade")
                            .header("upgrade", "websocket")
                            .body(http_body_util::Empty::<bytes::Bytes>::new())
                            .unwrap(),
                    )
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Requests looping through the data plane on one path while the configuration changes;
/// every one must succeed.
pub struct Load {
    done: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<HashSet<String>>>,
}

impl Load {
    /// Four clients GETting `path` as fast as they can.
    pub fn start(gw: &Arc<Gateway>, path: &'static str) -> Load {
        let done = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let tasks = (0..4)
            .map(|_| {
                let (gw, done, served) = (gw.clone(), done.clone(), served.clone());
                tokio::spawn(async move {
                    let mut seen = HashSet::new();
                    while !done.load(Ordering::SeqCst) {
                        let r = gw.client.get(gw.url(path)).send().await.unwrap();
                        assert_eq!(r.status(), 200, "no request fails while the config changes");
                        let body: Value = r.json().await.unwrap();
                        seen.insert(body["upstream"].as_str().unwrap().to_string());
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    seen
                })
            })
            .collect();
        Load {
            done,
            served,
            tasks,
        }
    }

    /// Stops the clients; returns how many requests were served and which upstreams answered.
    pub async fn finish(self) -> (usize, HashSet<String>) {
        self.done.store(true, Ordering::SeqCst);
        let mut seen = HashSet::new();
        for task in self.tasks {
            seen.extend(task.await.unwrap());
        }
        (self.served.load(Ordering::SeqCst), seen)
    }
}

/// GET `path` with `headers`; (status, body as JSON or text, response headers).
pub async fn get(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Value, reqwest::header::HeaderMap) {
    call(gw, Method::GET, path, headers).await
}

pub async fn call(
    gw: &Gateway,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = gw.client.request(method, gw.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let response_headers = r.headers().clone();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        response_headers,
    )
}

/// The exporter's exposition, as text and as samples.
/// One sample of the exposition: name, labels, value.
pub type Sample = (String, BTreeMap<String, String>, f64);

pub async fn scrape(gw: &Gateway) -> (String, Vec<Sample>) {
    let url = format!("http://{}/apisix/prometheus/metrics", gw.metrics);
    let text = gw
        .client
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap();
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            (name.to_string(), labels, value.parse().unwrap())
        })
        .collect();
    (text, samples)
}

/// The value of the one sample named `name` whose labels include `labels`; None when there
/// is none.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} names {found:?}");
    found.first().copied()
}

/// One request off `stream` (head, and its body by `Content-Length` or chunked); `read` keeps
/// what came after it.
pub async fn read_request(
    stream: &mut tokio::net::TcpStream,
    read: &mut Vec<u8>,
) -> Option<(String, Vec<u8>)> {
    let mut fill = async |read: &mut Vec<u8>| {
        let mut buf = [0u8; 8192];
        let n = tokio::io::AsyncReadExt::read(stream, &mut buf)
            .await
            .ok()
            .filter(|&n| n > 0)?;
        read.extend_from_slice(&buf[..n]);
        Some(())
    };
    let end = loop {
        if let Some(i) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(read).await?;
    };
    let head = String::from_utf8_lossy(&read[..end]).to_lowercase();
    read.drain(..end);
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|n| n.trim().parse::<usize>().unwrap());
    let body = if head.contains("transfer-encoding: chunked") {
        let mut body = Vec::new();
        loop {
            while !read.windows(2).any(|w| w == b"\r\n") {
                fill(read).await?;
            }
            let line = read.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&read[..line]).unwrap(), 16).unwrap();
            while read.len() < line + 2 + size + 2 {
                fill(read).await?;
            }
            body.extend_from_slice(&read[line + 2..line + 2 + size]);
            read.drain(..line + 2 + size + 2);
            if size == 0 {
                break body;
            }
        }
    } else {
        let length = length.unwrap_or(0);
        while read.len() < length {
            fill(read).await?;
        }
        read.drain(..length).collect()
    };
    Some((head, body))
}

/// A node that answers each request with the head it received.
pub async fn spawn_recorder() -> std::net::SocketAddr {
    let node = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = node.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = node.accept().await {
            tokio::spawn(async move {
                let mut read = Vec::new();
                while let Some((head, _)) = read_request(&mut stream, &mut read).await {
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{head}",
                        head.len()
                    );
                    if tokio::io::AsyncWriteExt::write_all(&mut stream, answer.as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}
