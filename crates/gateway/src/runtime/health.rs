//! Upstream health: which nodes the balancer may pick.
//!
//! Active checks probe every node on an interval (an HTTP `GET http_path`, or a TCP connect);
//! passive checks judge the responses real requests get. Either moves a node between healthy
//! and unhealthy when a counter of consecutive outcomes reaches its threshold, as
//! lua-resty-healthcheck (APISIX's) does. When no node is healthy the balancer picks among all
//! of them (fail-open): a guess beats a certain 502.
//!
//! Health outlives snapshots: [`HealthChecks`] hands the same [`Health`] to every recompile of
//! an unchanged upstream, and its prober stops once no snapshot uses it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::resource::{ActiveCheck, CheckType, Checks, PassiveCheck};

/// What happened when a node was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP answer with this status.
    Status(u16),
    /// A TCP probe connected.
    Connected,
    TcpFailure,
    Timeout,
}

/// How an outcome counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Success,
    HttpFailure,
    TcpFailure,
    Timeout,
    /// A status in neither list.
    Neither,
}

/// Consecutive outcomes of one node.
#[derive(Debug, Default)]
struct Counters {
    successes: u32,
    http_failures: u32,
    tcp_failures: u32,
    timeouts: u32,
}

/// Thresholds in force for one kind of check.
#[derive(Debug, Clone, Copy)]
struct Thresholds {
    successes: u32,
    http_failures: u32,
    tcp_failures: u32,
    timeouts: u32,
}

#[derive(Debug)]
struct Node {
    name: String,
    healthy: AtomicBool,
    counters: Mutex<Counters>,
}

/// The health of one upstream's nodes.
#[derive(Debug)]
pub struct Health {
    /// The upstream's key (`/apisix/upstreams/1`, or the route or service holding it inline).
    owner: String,
    active: ActiveCheck,
    passive: Option<PassiveCheck>,
    nodes: Vec<Node>,
}

impl Health {
    fn new(owner: &str, checks: &Checks, nodes: &[(String, u16)]) -> Option<Health> {
        Some(Health {
            owner: owner.to_string(),
            active: checks.active.clone()?,
            passive: checks.passive.clone(),
            nodes: nodes
                .iter()
                .map(|(host, port)| Node {
                    name: format!("{host}:{port}"),
                    healthy: AtomicBool::new(true),
                    counters: Mutex::default(),
                })
                .collect(),
        })
    }

    pub fn is_healthy(&self, node: usize) -> bool {
        self.nodes[node].healthy.load(Ordering::Relaxed)
    }

    /// A real request's outcome (counts only when passive checks are configured).
    pub fn report(&self, node: usize, outcome: Outcome) {
        let Some(passive) = &self.passive else { return };
        let u = &passive.unhealthy;
        let verdict = verdict(outcome, &passive.healthy.http_statuses, &u.http_statuses);
        let thresholds = Thresholds {
            successes: passive.healthy.successes,
            http_failures: u.http_failures,
            tcp_failures: u.tcp_failures,
            timeouts: u.timeouts,
        };
        self.record(node, verdict, thresholds, "passive");
    }

    pub(super) fn report_active(&self, node: usize, outcome: Outcome) {
        let (h, u) = (&self.active.healthy, &self.active.unhealthy);
        let verdict = verdict(outcome, &h.http_statuses, &u.http_statuses);
        let thresholds = Thresholds {
            successes: h.successes,
            http_failures: u.http_failures,
            tcp_failures: u.tcp_failures,
            timeouts: u.timeouts,
        };
        self.record(node, verdict, thresholds, "active");
    }

    fn record(&self, index: usize, verdict: Verdict, limits: Thresholds, check: &str) {
        let node = &self.nodes[index];
        let mut c = node.counters.lock().unwrap_or_else(|e| e.into_inner());
        let healthy = node.healthy.load(Ordering::Relaxed);
        let trips = |count: u32, limit: u32| limit > 0 && count >= limit;
        let flip = match verdict {
            Verdict::Neither => false,
            Verdict::Success => {
                *c = Counters {
                    successes: c.successes.saturating_add(1),
                    ..Counters::default()
                };
                !healthy && trips(c.successes, limits.successes)
            }
            failure => {
                c.successes = 0;
                let (count, limit) = match failure {
                    Verdict::HttpFailure => (&mut c.http_failures, limits.http_failures),
                    Verdict::TcpFailure => (&mut c.tcp_failures, limits.tcp_failures),
                    _ => (&mut c.timeouts, limits.timeouts),
                };
                *count = count.saturating_add(1);
                healthy && trips(*count, limit)
            }
        };
        if flip {
            *c = Counters::default();
            node.healthy.store(!healthy, Ordering::Relaxed);
            if healthy {
                tracing::warn!(node = node.name, check, "upstream node unhealthy; ejected");
            } else {
                tracing::info!(node = node.name, check, "upstream node healthy again");
            }
        }
    }
}

fn verdict(outcome: Outcome, healthy: &[u16], unhealthy: &[u16]) -> Verdict {
    match outcome {
        Outcome::Connected => Verdict::Success,
        Outcome::TcpFailure => Verdict::TcpFailure,
        Outcome::Timeout => Verdict::Timeout,
        Outcome::Status(s) if healthy.contains(&s) => Verdict::Success,
        Outcome::Status(s) if unhealthy.contains(&s) => Verdict::HttpFailure,
        Outcome::Status(_) => Verdict::Neither,
    }
}

/// Every upstream's health, kept across snapshots.
#[derive(Debug, Default)]
pub struct HealthChecks {
    known: Mutex<HashMap<String, Weak<Health>>>,
}

impl HealthChecks {
    /// Every checked node: (upstream key, `host:port`, healthy), for `apisix_upstream_status`.
    pub fn statuses(&self) -> Vec<(String, String, bool)> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known
            .values()
            .filter_map(Weak::upgrade)
            .flat_map(|health| {
                health
                    .nodes
                    .iter()
                    .map(|n| {
                        let healthy = n.healthy.load(Ordering::Relaxed);
                        (health.owner.clone(), n.name.clone(), healthy)
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The health of the upstream `owner` names (`/apisix/upstreams/1`, or the route or
    /// service holding it inline) with these checks and nodes: the one already followed, or a
    /// new one with its prober started. None when there are no active checks.
    pub fn get(
        &self,
        owner: &str,
        checks: &Checks,
        nodes: &[(String, u16)],
    ) -> Option<Arc<Health>> {
        let identity = format!("{owner} {} {nodes:?}", serde_json::json!(checks));
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|_, health| health.strong_count() > 0);
        if let Some(health) = known.get(&identity).and_then(Weak::upgrade) {
            return Some(health);
        }
        let health = Arc::new(Health::new(owner, checks, nodes)?);
        known.insert(identity, Arc::downgrade(&health));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let targets = nodes.to_vec();
            runtime.spawn(probe_forever(Arc::downgrade(&health), targets));
        }
        Some(health)
    }
}

/// Probes each node at its state's interval until no snapshot uses `health`.
async fn probe_forever(health: Weak<Health>, targets: Vec<(String, u16)>) {
    let Some(active) = health.upgrade().map(|h| h.active.clone()) else {
        return;
    };
    let interval = |healthy: bool| {
        let secs = if healthy {
            active.healthy.interval
        } else {
            active.unhealthy.interval
        };
        (secs > 0).then(|| Duration::from_secs(secs))
    };
    let mut due: Vec<Option<Instant>> = vec![Some(Instant::now()); targets.len()];
    loop {
        let now = Instant::now();
        let ready: Vec<usize> = (0..targets.len())
            .filter(|&i| due[i].is_some_and(|at| at <= now))
            .collect();
        for batch in ready.chunks(active.concurrency.max(1)) {
            let probes = batch
                .iter()
                .map(|&i| probe(&active, &targets[i].0, targets[i].1));
            let outcomes = futures::future::join_all(probes).await;
            let Some(health) = health.upgrade() else {
                return;
            };
            for (&i, outcome) in batch.iter().zip(outcomes) {
                health.report_active(i, outcome);
                due[i] = interval(health.is_healthy(i)).and_then(|d| Instant::now().checked_add(d));
            }
        }
        let Some(next) = due.iter().flatten().min().copied() else {
            return; // no state is probed
        };
        tokio::time::sleep_until(next).await;
        if health.strong_count() == 0 {
            return;
        }
    }
}

/// One probe: a TCP connect, or an HTTP/1.0 `GET http_path` (over TLS for `https`) read up to
/// its status line.
async fn probe(active: &ActiveCheck, host: &str, port: u16) -> Outcome {
    let port = active.port.unwrap_or(port);
    let host_header = active.host.as_deref().unwrap_or(host);
    let exchange = async {
        let Ok(stream) = TcpStream::connect((host, port)).await else {
            return Outcome::TcpFailure;
        };
        match active.kind {
            CheckType::Tcp => Outcome::Connected,
            CheckType::Http => http_status(active, host_header, stream).await,
            CheckType::Https => {
                let tls = crate::tls::client_config(active.https_verify_certificate, None);
                let (Ok(config), Some(name)) = (tls, crate::tls::server_name(host_header)) else {
                    return Outcome::TcpFailure;
                };
                let connector = tokio_rustls::TlsConnector::from(config);
                match connector.connect(name, stream).await {
                    Ok(stream) => http_status(active, host_header, stream).await,
                    Err(_) => Outcome::TcpFailure,
                }
            }
        }
    };
    let limit = Duration::try_from_secs_f64(active.timeout).unwrap_or(Duration::from_secs(1));
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or(Outcome::Timeout)
}

async fn http_status<S>(active: &ActiveCheck, host: &str, mut stream: S) -> Outcome
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut request = format!(
        "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: axle-healthcheck\r\n",
        active.http_path
    );
    for header in &active.req_headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return Outcome::TcpFailure;
    }
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    while !head.contains(&b'\n') && head.len() < 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return Outcome::TcpFailure,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    // "HTTP/1.1 200 OK": the second word.
    let status = std::str::from_utf8(&head)
        .ok()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok());
    match status {
        Some(status) => Outcome::Status(status),
        None => Outcome::Status(0), // not HTTP: in neither list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn health(checks: serde_json::Value) -> Health {
        let checks: Checks = serde_json::from_value(checks).unwrap();
        Health::new("u", &checks, &[("a".into(), 1), ("b".into(), 1)]).unwrap()
    }

    #[test]
    fn consecutive_failures_eject_and_consecutive_successes_restore() {
        let h = health(json!({"active": {
            "healthy": {"successes": 2},
            "unhealthy": {"http_failures": 3, "tcp_failures": 1}
        }}));
        h.report_active(0, Outcome::Status(500));
        h.report_active(0, Outcome::Status(500));
        h.report_active(0, Outcome::Status(200)); // the streak is broken
        h.report_active(0, Outcome::Status(500));
        h.report_active(0, Outcome::Status(500));
        assert!(h.is_healthy(0));
        h.report_active(0, Outcome::Status(500));
        assert!(!h.is_healthy(0), "three failures in a row eject");
        assert!(h.is_healthy(1), "only that node");
        h.report_active(0, Outcome::Status(200));
        assert!(!h.is_healthy(0));
        h.report_active(0, Outcome::Status(302));
        assert!(h.is_healthy(0), "two successes restore");
        h.report_active(0, Outcome::TcpFailure);
        assert!(!h.is_healthy(0), "tcp_failures: 1");
    }

    #[test]
    fn passive_reports_count_only_with_passive_checks_and_by_their_lists() {
        let active_only = health(json!({"active": {"unhealthy": {"http_failures": 1}}}));
        active_only.report(0, Outcome::Status(500));
        assert!(active_only.is_healthy(0));

        let h = health(json!({"active": {}, "passive": {"unhealthy": {"http_failures": 2}}}));
        h.report(1, Outcome::Status(404)); // in neither list: no effect
        h.report(1, Outcome::Status(503));
        h.report(1, Outcome::Status(404));
        assert!(h.is_healthy(1));
        h.report(1, Outcome::Status(500));
        assert!(!h.is_healthy(1));
    }

    #[test]
    fn unchanged_upstreams_keep_their_health_across_snapshots() {
        let checks: Checks = serde_json::from_value(json!({"active": {}})).unwrap();
        let nodes = [("a".to_string(), 1)];
        let registry = HealthChecks::default();
        let first = registry
            .get("/apisix/upstreams/1", &checks, &nodes)
            .unwrap();
        let again = registry
            .get("/apisix/upstreams/1", &checks, &nodes)
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let moved = registry
            .get("/apisix/upstreams/1", &checks, &[("b".into(), 1)])
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &moved), "new nodes, new health");
    }
}
