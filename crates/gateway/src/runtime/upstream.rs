//! Upstreams ready to serve: their nodes, their health, and the smooth weighted round robin
//! that picks one.
//!
//! Smooth weighted round robin (nginx's): every pick adds each node's weight to its running
//! score, takes the highest score and subtracts the total from it. Over any window of
//! `sum(weights)` picks each node is chosen exactly `weight` times, spread out rather than in
//! bursts. Nodes already tried by this request (retries) are skipped; weight 0 is never picked.
//! Unhealthy nodes are skipped too, unless none is healthy (then all are candidates).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;

use super::health::{Health, HealthChecks};
use crate::resource::{self, Invalid, PassHost};

/// APISIX's default for each of connect, send and read.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub authority: Authority,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub send: Duration,
    pub read: Duration,
}

impl Timeouts {
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

#[derive(Debug)]
pub struct Upstream {
    pub targets: Vec<Target>,
    scores: Mutex<Vec<i64>>,
    pub pass_host: PassHost,
    pub upstream_host: Option<String>,
    /// How many other nodes to try after a failed connection.
    pub retries: usize,
    /// A bound on the whole request, retries included (`retry_timeout`); none when 0.
    pub retry_timeout: Option<Duration>,
    pub timeouts: Timeouts,
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
                .map(|t| (t.host.clone(), t.port))
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
        for (host, port, weight) in nodes {
            let text = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let authority = text
                .parse()
                .map_err(|_| Invalid(format!("nodes: bad address {text:?}")))?;
            targets.push(Target {
                host,
                port,
                authority,
                weight,
            });
        }
        let retries = match config.retries {
            Some(n) => n as usize,
            None => targets.len().saturating_sub(1),
        };
        Ok(Upstream {
            scores: Mutex::new(vec![0; targets.len()]),
            targets,
            pass_host: config.pass_host,
            upstream_host: config.upstream_host.clone(),
            retries,
            retry_timeout: config
                .retry_timeout
                .filter(|t| *t > 0.0)
                .and_then(|t| Duration::try_from_secs_f64(t).ok()),
            timeouts: Timeouts::from_config(config.timeout.as_ref()),
            health: None,
        })
    }

    /// The next node, skipping `tried` and unhealthy ones; None when no node is left.
    pub fn pick(&self, tried: &[usize]) -> Option<usize> {
        let healthy = |i: usize| self.health.as_ref().is_none_or(|h| h.is_healthy(i));
        self.pick_among(tried, healthy)
            .or_else(|| self.pick_among(tried, |_| true)) // fail-open
    }

    fn pick_among(&self, tried: &[usize], eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let mut scores = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, target) in self.targets.iter().enumerate() {
            if target.weight == 0 || tried.contains(&i) || !eligible(i) {
                continue;
            }
            let weight = i64::from(target.weight);
            scores[i] += weight;
            total += weight;
            if best.is_none_or(|b| scores[i] > scores[b]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        scores[chosen] -= total;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::health::Outcome;
    use serde_json::json;

    fn upstream(nodes: serde_json::Value) -> Upstream {
        let config: resource::Upstream =
            resource::parse(&json!({"type": "roundrobin", "nodes": nodes})).unwrap();
        Upstream::from_config(&config).unwrap()
    }

    #[test]
    fn picks_follow_the_weights_exactly_per_cycle() {
        let u = upstream(json!({"a:1": 5, "b:1": 1, "c:1": 1, "z:1": 0}));
        let mut counts = [0; 4];
        for _ in 0..7 * 100 {
            counts[u.pick(&[]).unwrap()] += 1;
        }
        assert_eq!(counts, [500, 100, 100, 0]);
    }

    #[test]
    fn picks_are_spread_not_bursty() {
        let u = upstream(json!({"a:1": 5, "b:1": 1, "c:1": 1}));
        let picks: Vec<usize> = (0..7).map(|_| u.pick(&[]).unwrap()).collect();
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
        assert!((0..10).all(|_| u.pick(&[]) == Some(0)), "b is ejected");
        health.report_active(0, Outcome::TcpFailure);
        let picks: std::collections::HashSet<_> = (0..10).map(|_| u.pick(&[]).unwrap()).collect();
        assert_eq!(picks.len(), 2, "none healthy: all are candidates again");
    }

    #[test]
    fn retries_skip_tried_nodes_and_default_to_the_others() {
        let u = upstream(json!({"a:1": 1, "b:1": 1, "c:1": 1}));
        assert_eq!(u.retries, 2);
        let first = u.pick(&[]).unwrap();
        let second = u.pick(&[first]).unwrap();
        assert_ne!(first, second);
        let third = u.pick(&[first, second]).unwrap();
        assert!(third != first && third != second);
        assert_eq!(u.pick(&[0, 1, 2]), None);
    }
}
