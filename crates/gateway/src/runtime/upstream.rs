//! Upstreams ready to serve: their nodes, their health, and the balancer that picks one.
//!
//! - `roundrobin`: smooth weighted round robin (nginx's): every pick adds each node's weight
//!   to its running score, takes the highest score and subtracts the total from it. Over any
//!   window of `sum(weights)` picks each node is chosen exactly `weight` times, spread out.
//! - `chash`: APISIX's consistent hash (lua-resty-balancer's `resty.chash`), so a fleet mixing
//!   APISIX and Axle sends each key to the same node: every node gets 160 points per unit of
//!   weight (weights divided by their greatest common divisor) on a ring of CRC-32 values, and
//!   a key (`hash_on`/`key`; the client address when the request has none) goes to the last
//!   point at or before its own CRC-32. A key stays on its node, and a node leaving moves only
//!   its own keys. A retry walks on along the ring to the next node not yet tried.
//! - `least_conn`: the fewest requests in flight per unit of weight.
//! - `ewma`: of two nodes drawn at random, the one with the lower decaying average latency
//!   times requests in flight, per unit of weight ("power of two choices").
//!
//! Nodes already tried by this request (retries) are skipped; weight 0 is never picked.
//! Unhealthy nodes are skipped too, unless none is healthy (then all are candidates). Of the
//! candidates, only those of the highest `priority` are picked from: lower priorities are
//! backups, used when every node above them is down or tried (APISIX's priority balancer).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::Authority;

use super::health::{Health, HealthChecks};
use crate::resource::{
    self, Balancer, HashKey, Invalid, POINTS_PER_WEIGHT, PassHost, ring_weights,
};
use crate::vars::Request;

/// How fast `ewma` forgets: a sample this old weighs 1/e.
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// APISIX's default for each of connect, send and read.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Target {
    pub host: Arc<str>,
    pub port: u16,
    pub authority: Authority,
    pub weight: u32,
    /// Lower priorities are backups.
    pub priority: i64,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub send: Duration,
    pub read: Duration,
}

impl Timeouts {
    /// How long a whole exchange with a node may take: connect, send and read.
    pub fn budget(&self) -> Duration {
        self.connect
            .saturating_add(self.send)
            .saturating_add(self.read)
    }

    pub fn from_config(t: Option<&resource::Timeout>) -> Timeouts {
        let secs = |s: f64| Duration::try_from_secs_f64(s).unwrap_or(DEFAULT_TIMEOUT);
        match t {
            Some(t) => Timeouts {
                connect: secs(t.connect),
                send: secs(t.send),
                read: secs(t.read),
            },
            None => Timeouts {
                connect: DEFAULT_TIMEOUT,
                send: DEFAULT_TIMEOUT,
                read: DEFAULT_TIMEOUT,
            },
        }
    }
}

/// The balancing algorithm with its state.
#[derive(Debug)]
enum Balance {
    RoundRobin {
        scores: Mutex<Vec<i64>>,
    },
    Chash {
        key: HashKey,
        /// One ring per priority, as APISIX builds one picker per priority.
        rings: Vec<(i64, Ring)>,
    },
    LeastConn,
    /// Each node's decaying average latency (µs, as f64 bits) and when it was last updated.
    Ewma {
        latency: Vec<AtomicU64>,
        updated: Vec<AtomicU64>,
        epoch: Instant,
    },
}

#[derive(Debug)]
pub struct Upstream {
    pub targets: Vec<Target>,
    balance: Balance,
    /// Requests in flight per node (kept for `least_conn` and `ewma`).
    in_flight: Vec<AtomicUsize>,
    /// Whether the nodes differ in `priority` (so some are backups).
    backups: bool,
    pub pass_host: PassHost,
    pub upstream_host: Option<String>,
    /// How many other nodes to try after a failed connection.
    pub retries: usize,
    /// A bound on the whole request, retries included (`retry_timeout`); none when 0.
    pub retry_timeout: Option<Duration>,
    pub timeouts: Timeouts,
    pub keepalive: resource::KeepalivePool,
    /// The client side of TLS, for `https` upstreams.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Present when the upstream has health checks.
    pub health: Option<Arc<Health>>,
}

impl Upstream {
    /// The upstream `owner` (its key, or the key of the route or service holding it inline)
    /// configures, with its health followed in `checks`.
    pub fn build(
        config: &resource::Upstream,
        owner: &str,
        checks: &HealthChecks,
    ) -> Result<Upstream, Invalid> {
        let mut upstream = Upstream::from_config(config)?;
        if let Some(c) = &config.checks {
            let nodes: Vec<(String, u16)> = upstream
                .targets
                .iter()
                .map(|t| (t.host.to_string(), t.port))
                .collect();
            upstream.health = checks.get(owner, c, &nodes);
        }
        Ok(upstream)
    }

    /// The upstream without health checks.
    pub fn from_config(config: &resource::Upstream) -> Result<Upstream, Invalid> {
        let nodes = config
            .nodes
            .as_ref()
            .ok_or_else(|| Invalid("nodes is required".into()))?
            .list(config.scheme)?;
        let mut targets = Vec::with_capacity(nodes.len());
        for (host, port, weight, priority) in nodes {
            let text = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let authority = text
                .parse()
                .map_err(|_| Invalid(format!("nodes: bad address {text:?}")))?;
            targets.push(Target {
                host: host.into(),
                port,
                authority,
                weight,
                priority,
            });
        }
        let retries = match config.retries {
            Some(n) => n as usize,
            None => targets.len().saturating_sub(1),
        };
        let n = targets.len();
        let balance = match config.balancer {
            Balancer::Roundrobin => Balance::RoundRobin {
                scores: Mutex::new(vec![0; n]),
            },
            Balancer::Chash => Balance::Chash {
                key: HashKey::parse(config.hash_on, config.key.as_deref())?,
                rings: Ring::per_priority(&targets)?,
            },
            Balancer::LeastConn => Balance::LeastConn,
            Balancer::Ewma => Balance::Ewma {
                latency: (0..n).map(|_| AtomicU64::new(0f64.to_bits())).collect(),
                updated: (0..n).map(|_| AtomicU64::new(0)).collect(),
                epoch: Instant::now(),
            },
        };
        let tls = match config.scheme {
            resource::Scheme::Https => {
                let settings = config.tls.as_ref();
                let client = settings.map(|t| t.client()).transpose()?.flatten();
                let verify = settings.is_some_and(|t| t.verify);
                Some(crate::tls::client_config(verify, client).map_err(Invalid)?)
            }
            _ => None,
        };
        let backups = targets.windows(2).any(|w| w[0].priority != w[1].priority);
        Ok(Upstream {
            backups,
            balance,
            in_flight: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            targets,
            pass_host: config.pass_host,
            upstream_host: config.upstream_host.clone(),
            retries,
            retry_timeout: config
                .retry_timeout
                .filter(|t| *t > 0.0)
                .and_then(|t| Duration::try_from_secs_f64(t).ok()),
            timeouts: Timeouts::from_config(config.timeout.as_ref()),
            keepalive: config.keepalive_pool.unwrap_or_default(),
            tls,
            health: None,
        })
    }

    /// The next node for request `r`, skipping `tried` and unhealthy ones; None when no node
    /// is left.
    pub fn pick(&self, tried: &[usize], r: &Request<'_>) -> Option<usize> {
        let healthy = |i: usize| self.health.as_ref().is_none_or(|h| h.is_healthy(i));
        let open = |i: usize| self.targets[i].weight > 0 && !tried.contains(&i);
        let all = 0..self.targets.len();
        // Fail-open: with no healthy node left, every node is a candidate.
        let healthy_only = all.clone().any(|i| open(i) && healthy(i));
        let usable = |i: usize| open(i) && (!healthy_only || healthy(i));
        // Backups wait until every node of a higher priority is down or tried.
        let top = match self.backups {
            true => all
                .clone()
                .filter(|&i| usable(i))
                .map(|i| self.targets[i].priority)
                .max()?,
            false => self.targets.first()?.priority,
        };
        let candidate = |i: usize| usable(i) && self.targets[i].priority == top;
        let mut nodes = all.filter(|&i| candidate(i));
        let first = nodes.clone().next()?;
        let weight = |i: usize| f64::from(self.targets[i].weight);
        let busy = |i: usize| self.in_flight[i].load(Ordering::Relaxed) as f64;
        match &self.balance {
            Balance::RoundRobin { scores } => {
                let mut scores = scores.lock().unwrap_or_else(|e| e.into_inner());
                let weighted = nodes.map(|i| (i, i64::from(self.targets[i].weight)));
                smooth_weighted(&mut scores, weighted)
            }
            Balance::Chash { key, rings } => {
                let value = key.value(r).unwrap_or_else(|| r.remote_addr.to_string());
                let ring = rings.iter().find(|(priority, _)| *priority == top)?;
                ring.1.find(value.as_bytes(), !tried.is_empty(), candidate)
            }
            Balance::LeastConn => {
                let load = |i: usize| (busy(i) + 1.0) / weight(i);
                nodes.min_by(|&a, &b| load(a).total_cmp(&load(b)))
            }
            Balance::Ewma { latency, .. } => {
                let cost = |i: usize| {
                    f64::from_bits(latency[i].load(Ordering::Relaxed)) * (busy(i) + 1.0) / weight(i)
                };
                let count = nodes.clone().count();
                let a = nodes
                    .clone()
                    .nth(rand::random_range(0..count))
                    .unwrap_or(first);
                let b = nodes.nth(rand::random_range(0..count)).unwrap_or(first);
                Some(if cost(b) < cost(a) { b } else { a })
            }
        }
    }

    /// Counts a request to `node` as in flight until the returned guard is dropped (when its
    /// response has been read); None when the balancer does not need it.
    pub fn start(self: &Arc<Self>, node: usize) -> Option<InFlight> {
        if matches!(
            self.balance,
            Balance::RoundRobin { .. } | Balance::Chash { .. }
        ) {
            return None;
        }
        self.in_flight[node].fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            upstream: self.clone(),
            node,
            started: Instant::now(),
        })
    }
}

/// IEEE CRC-32, as `ngx.crc32_short` computes it.
const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// A `chash` ring: `(hash, node)` points sorted by hash.
#[derive(Debug)]
struct Ring(Vec<(u32, usize)>);

impl Ring {
    /// One ring for each priority the targets have, highest first.
    fn per_priority(targets: &[Target]) -> Result<Vec<(i64, Ring)>, Invalid> {
        let mut priorities: Vec<i64> = targets.iter().map(|t| t.priority).collect();
        priorities.sort_unstable_by(|a, b| b.cmp(a));
        priorities.dedup();
        priorities
            .into_iter()
            .map(|p| Ok((p, Ring::new(targets, p)?)))
            .collect()
    }

    /// The ring of the targets of `priority`: each node's points follow from the CRC-32 of
    /// its `host:port` with every `:` a NUL (`resty.chash`'s `chash_point_init`).
    fn new(targets: &[Target], priority: i64) -> Result<Ring, Invalid> {
        let ours = || {
            targets
                .iter()
                .enumerate()
                .filter(|(_, t)| t.priority == priority)
        };
        let (divisor, total) = ring_weights(ours().map(|(_, t)| t.weight))?;
        let mut points = Vec::with_capacity((total * POINTS_PER_WEIGHT) as usize);
        for (node, target) in ours() {
            let id = target.authority.as_str().replace(':', "\0");
            let base = CRC32.checksum(id.as_bytes());
            let mut previous = 0u32;
            for _ in 0..u64::from(target.weight) / divisor * POINTS_PER_WEIGHT {
                // The CRC-32 register continued from `base` over the previous point's bytes.
                let mut digest = CRC32.digest_with_initial(base.reverse_bits());
                digest.update(&previous.to_le_bytes());
                previous = digest.finalize();
                points.push((previous, node));
            }
        }
        points.sort_by_key(|&(hash, _)| hash);
        Ok(Ring(points))
    }

    /// The node for `key`: the one owning the last point at or before the key's CRC-32 (the
    /// first point when there is none) — if it is `usable`. Else, on a first pick, the one
    /// a ring without the unusable nodes would give (the last usable point before, else the
    /// first usable one); on a retry, the next usable point along the ring.
    fn find(&self, key: &[u8], retry: bool, usable: impl Fn(usize) -> bool) -> Option<usize> {
        if self.0.is_empty() {
            return None;
        }
        let hash = CRC32.checksum(key);
        let at = self
            .0
            .partition_point(|&(h, _)| h <= hash)
            .saturating_sub(1);
        let node = |i: &usize| self.0[*i].1;
        if retry {
            return (at..self.0.len())
                .chain(0..at)
                .map(|i| node(&i))
                .find(|&n| usable(n));
        }
        let before = (0..=at).rev().map(|i| node(&i)).find(|&n| usable(n));
        before.or_else(|| (at..self.0.len()).map(|i| node(&i)).find(|&n| usable(n)))
    }
}

/// Smooth weighted round robin (nginx's): each candidate `(index, weight)` gains its weight,
/// the highest score wins and pays back the total. Weights interleave (3:1 gives a a b a), and
/// over any run each candidate's share is its weight's. None when there is no candidate.
pub fn smooth_weighted(
    scores: &mut [i64],
    candidates: impl Iterator<Item = (usize, i64)>,
) -> Option<usize> {
    let mut total = 0;
    let mut best: Option<usize> = None;
    for (i, weight) in candidates {
        scores[i] += weight;
        total += weight;
        if best.is_none_or(|b| scores[i] > scores[b]) {
            best = Some(i);
        }
    }
    let best = best?;
    scores[best] -= total;
    Some(best)
}

/// A request in flight to a node (see [`Upstream::start`]).
#[derive(Debug)]
pub struct InFlight {
    upstream: Arc<Upstream>,
    node: usize,
    started: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let u = &self.upstream;
        u.in_flight[self.node].fetch_sub(1, Ordering::Relaxed);
        if let Balance::Ewma {
            latency,
            updated,
            epoch,
        } = &u.balance
        {
            let now = epoch.elapsed();
            let sample = self.started.elapsed().as_secs_f64() * 1e6;
            let last = Duration::from_nanos(
                updated[self.node].swap(now.as_nanos() as u64, Ordering::Relaxed),
            );
            let old = f64::from_bits(latency[self.node].load(Ordering::Relaxed));
            // Exponential decay by the time since the last sample; the first sample is taken whole.
            let keep = if old == 0.0 {
                0.0
            } else {
                (-(now.saturating_sub(last)).as_secs_f64() / EWMA_DECAY.as_secs_f64()).exp()
            };
            let average = old * keep + sample * (1.0 - keep);
            latency[self.node].store(average.to_bits(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::health::Outcome;
    use http::HeaderMap;
    use serde_json::json;

    fn upstream(nodes: serde_json::Value) -> Upstream {
        balanced(json!({"type": "roundrobin", "nodes": nodes}))
    }

    fn balanced(config: serde_json::Value) -> Upstream {
        let config: resource::Upstream = resource::parse(&config).unwrap();
        Upstream::from_config(&config).unwrap()
    }

    /// A request from `remote` with `headers`.
    fn request(remote: [u8; 4], headers: &HeaderMap) -> Request<'_> {
        Request {
            method: "GET",
            path: "/p",
            query: None,
            host: "h",
            headers,
            remote_addr: std::net::IpAddr::from(remote),
            scheme: "http",
            server_port: 80,
            consumer_name: None,
            jwt_payload: None,
            uri_params: &[],
            post: None,
            response: None,
        }
    }

    fn any() -> Request<'static> {
        static NONE: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);
        request([127, 0, 0, 1], &NONE)
    }

    #[test]
    fn picks_follow_the_weights_exactly_per_cycle() {
        let u = upstream(json!({"a:1": 5, "b:1": 1, "c:1": 1, "z:1": 0}));
        let mut counts = [0; 4];
        for _ in 0..7 * 100 {
            counts[u.pick(&[], &any()).unwrap()] += 1;
        }
        assert_eq!(counts, [500, 100, 100, 0]);
    }

    #[test]
    fn picks_are_spread_not_bursty() {
        let u = upstream(json!({"a:1": 5, "b:1": 1, "c:1": 1}));
        let picks: Vec<usize> = (0..7).map(|_| u.pick(&[], &any()).unwrap()).collect();
        // nginx's classic example: a a b a c a a
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn unhealthy_nodes_are_skipped_unless_none_is_healthy() {
        let config: resource::Upstream = resource::parse(&json!({
            "nodes": {"a:1": 1, "b:1": 1},
            "checks": {"active": {"unhealthy": {"tcp_failures": 1}}},
        }))
        .unwrap();
        let u = Upstream::build(&config, "/apisix/upstreams/1", &HealthChecks::default()).unwrap();
        let health = u.health.clone().unwrap();
        health.report_active(1, Outcome::TcpFailure);
        assert!(
            (0..10).all(|_| u.pick(&[], &any()) == Some(0)),
            "b is ejected"
        );
        health.report_active(0, Outcome::TcpFailure);
        let picks: std::collections::HashSet<_> =
            (0..10).map(|_| u.pick(&[], &any()).unwrap()).collect();
        assert_eq!(picks.len(), 2, "none healthy: all are candidates again");
    }

    #[test]
    fn chash_keeps_a_key_on_its_node_and_spreads_keys_by_weight() {
        let u = balanced(json!({
            "type": "chash", "hash_on": "header", "key": "x-user",
            "nodes": {"a:1": 1, "b:1": 1, "c:1": 2}
        }));
        let mut counts = [0usize; 3];
        let mut homes = Vec::new();
        for user in 0..4000 {
            let mut headers = HeaderMap::new();
            headers.insert("x-user", user.to_string().parse().unwrap());
            let node = u.pick(&[], &request([10, 0, 0, 1], &headers)).unwrap();
            assert_eq!(
                u.pick(&[], &request([10, 0, 0, 2], &headers)),
                Some(node),
                "sticky"
            );
            counts[node] += 1;
            homes.push(node);
        }
        // Expected 1000 / 1000 / 2000; binomial sd ≈ 27-32.
        for (count, expected) in counts.iter().zip([1000, 1000, 2000]) {
            assert!(count.abs_diff(expected) < 150, "{counts:?}");
        }
        // Without c, only c's keys move.
        let smaller = balanced(json!({
            "type": "chash", "hash_on": "header", "key": "x-user",
            "nodes": {"a:1": 1, "b:1": 1}
        }));
        for (user, home) in homes.iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert("x-user", user.to_string().parse().unwrap());
            let now = smaller
                .pick(&[], &request([10, 0, 0, 1], &headers))
                .unwrap();
            if *home != 2 {
                assert_eq!(now, *home, "user {user} moved though its node stayed");
            }
        }
        // No header: the client address decides.
        let none = HeaderMap::new();
        let by_addr = u.pick(&[], &request([10, 0, 0, 9], &none));
        assert_eq!(u.pick(&[], &request([10, 0, 0, 9], &none)), by_addr);
    }

    /// The node APISIX's `resty.chash` gives each key, computed with lua-resty-balancer's own
    /// `chash.c` for these nodes: the same keys must land on the same nodes here, with the
    /// weights as given or multiplied (they are divided by their greatest common divisor).
    #[test]
    fn chash_sends_keys_where_apisix_does() {
        for scale in [1, 3] {
            let u = balanced(json!({
                "type": "chash", "hash_on": "header", "key": "x-user",
                "nodes": [
                    {"host": "127.0.0.1", "port": 1980, "weight": scale},
                    {"host": "127.0.0.1", "port": 1981, "weight": 2 * scale},
                    {"host": "10.0.0.7", "port": 80, "weight": scale},
                ]
            }));
            let Balance::Chash { rings, .. } = &u.balance else {
                panic!("a chash upstream")
            };
            let first: Vec<(u32, usize)> = rings[0].1.0[..3].to_vec();
            assert_eq!(first, [(2008094, 1), (10395350, 2), (10822036, 1)]);
            for (key, node) in [
                ("user-1", 1),
                ("user-2", 1),
                ("user-3", 1),
                ("user-4", 2),
                ("user-5", 1),
                ("user-6", 1),
                ("user-7", 2),
                ("user-8", 1),
                ("127.0.0.1", 0),
                ("10.1.2.3", 0),
                ("vin:LSVAU033512345678", 0),
            ] {
                let mut headers = HeaderMap::new();
                headers.insert("x-user", key.parse().unwrap());
                assert_eq!(
                    u.pick(&[], &request([9, 9, 9, 9], &headers)),
                    Some(node),
                    "{key}"
                );
            }
        }
        // Rings too fine-grained to build are refused.
        let config: resource::Upstream = resource::parse(&json!({
            "type": "chash", "key": "remote_addr",
            "nodes": {"a:1": 10_000, "b:1": 1}
        }))
        .unwrap();
        assert!(Upstream::from_config(&config).is_err());
    }

    #[test]
    fn backups_serve_only_when_every_node_above_them_is_down_or_tried() {
        for balancer in ["roundrobin", "chash", "least_conn", "ewma"] {
            let config: resource::Upstream = resource::parse(&json!({
                "type": balancer, "key": "remote_addr",
                "nodes": [
                    {"host": "a", "port": 1, "weight": 1, "priority": 10},
                    {"host": "b", "port": 1, "weight": 1, "priority": 10},
                    {"host": "backup", "port": 1, "weight": 5, "priority": -1},
                ],
                "checks": {"active": {"unhealthy": {"tcp_failures": 1}}},
            }))
            .unwrap();
            let u =
                Upstream::build(&config, "/apisix/upstreams/1", &HealthChecks::default()).unwrap();
            assert!(
                (0..20).all(|_| u.pick(&[], &any()).is_some_and(|n| n < 2)),
                "{balancer}: the backup waits"
            );
            let first = u.pick(&[], &any()).unwrap();
            let retried = u.pick(&[first], &any()).unwrap();
            assert!(
                retried < 2 && retried != first,
                "{balancer}: the other primary first"
            );
            assert_eq!(u.pick(&[0, 1], &any()), Some(2), "{balancer}: both tried");
            let health = u.health.clone().unwrap();
            health.report_active(0, Outcome::TcpFailure);
            health.report_active(1, Outcome::TcpFailure);
            assert!(
                (0..20).all(|_| u.pick(&[], &any()) == Some(2)),
                "{balancer}: both down"
            );
        }
    }

    #[test]
    fn least_conn_picks_the_least_busy_per_weight() {
        let u = Arc::new(balanced(
            json!({"type": "least_conn", "nodes": {"a:1": 1, "b:1": 2}}),
        ));
        let first = u.start(u.pick(&[], &any()).unwrap()).unwrap();
        assert_eq!(first.node, 1, "b has twice the capacity");
        let second = u.start(u.pick(&[], &any()).unwrap()).unwrap(); // a: 1/1, b: 2/2
        assert_eq!(second.node, 0);
        let third = u.start(u.pick(&[], &any()).unwrap()).unwrap(); // a: 2/1, b: 2/2
        assert_eq!(third.node, 1);
        drop((first, third));
        assert_eq!(
            u.pick(&[], &any()),
            Some(1),
            "finished requests no longer count"
        );
    }

    #[test]
    fn ewma_prefers_the_faster_node() {
        let u = Arc::new(balanced(
            json!({"type": "ewma", "nodes": {"slow:1": 1, "fast:1": 1}}),
        ));
        let slow = u.start(0).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        drop(slow);
        drop(u.start(1).unwrap());
        let fast = (0..1000).filter(|_| u.pick(&[], &any()) == Some(1)).count();
        // Two draws per pick: the slow node wins only when both draws are it (about 1/4).
        assert!(fast > 650, "{fast} of 1000 went to the fast node");
    }

    #[test]
    fn chash_needs_a_usable_key() {
        for (config, error) in [
            (
                json!({"type": "chash", "nodes": {"a:1": 1}}),
                "key is required",
            ),
            (
                json!({"type": "chash", "key": "nope", "nodes": {"a:1": 1}}),
                "unknown variable",
            ),
        ] {
            let config: resource::Upstream = resource::parse(&config).unwrap();
            let e = Upstream::from_config(&config).unwrap_err();
            assert!(e.0.contains(error), "{e:?}");
        }
    }

    #[test]
    fn retries_skip_tried_nodes_and_default_to_the_others() {
        let u = upstream(json!({"a:1": 1, "b:1": 1, "c:1": 1}));
        assert_eq!(u.retries, 2);
        let first = u.pick(&[], &any()).unwrap();
        let second = u.pick(&[first], &any()).unwrap();
        assert_ne!(first, second);
        let third = u.pick(&[first, second], &any()).unwrap();
        assert!(third != first && third != second);
        assert_eq!(u.pick(&[0, 1, 2], &any()), None);
    }
}
