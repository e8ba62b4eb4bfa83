//! `prometheus` (priority 500): APISIX's metrics, under APISIX's names and labels so its
//! Grafana dashboard works unchanged.
//!
//! Routes with the plugin (or a global rule with it) count, in their log phase,
//! `apisix_http_status`, `apisix_http_latency` (request, upstream and apisix time, in ms) and
//! `apisix_bandwidth`; every request counts in `apisix_http_requests_total`, every connection
//! in `apisix_nginx_http_current_connections`. The exporter (127.0.0.1:9091 by default) adds,
//! when scraped, `apisix_upstream_status` from the health checks, `apisix_etcd_reachable` and
//! `apisix_node_info`. Every label comes from configuration (route, its matched uri and host,
//! service, consumer, upstream node) or is a status code, so the number of series is bounded
//! by the configuration, never by what clients send; the series of a route that is gone from
//! the configuration are dropped at the next scrape.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{Shared, Site};
use crate::runtime::phases::{Log, Plugin};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Label routes by name rather than id (where they have one).
    #[serde(default)]
    prefer_name: bool,
}

#[derive(Debug)]
struct Prometheus {
    /// The process's plugin state: its metrics.
    shared: Arc<Shared>,
    prefer_name: bool,
    /// The series this instance has counted in, found again by comparing labels rather than
    /// by hashing them into each metric family. A snapshot's plugins are built anew with every
    /// configuration change, so these never outlive the routes they label.
    series: Mutex<Vec<Series>>,
}

/// The most series an instance keeps at hand; others are looked up each time.
const SERIES_KEPT: usize = 64;

pub(super) fn build(config: &Value, site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    Ok(Arc::new(Prometheus {
        shared: site.shared.clone(),
        prefer_name: c.prefer_name,
        series: Mutex::default(),
    }))
}

/// A request's labels (`status`, `route`, `matched_uri`, `matched_host`, `service`,
/// `consumer`, `node`) and the metrics they name.
#[derive(Debug)]
struct Series {
    status: u16,
    labels: [String; 6],
    requests: IntCounter,
    request_ms: Histogram,
    /// Upstream and gateway time: for requests a node answered (`node` is set).
    upstream_ms: Option<(Histogram, Histogram)>,
    ingress: IntCounter,
    egress: IntCounter,
}

impl Series {
    fn new(m: &Metrics, status: u16, labels: [&str; 6]) -> Series {
        let [route, uri, host, service, consumer, node] = labels;
        let status_text = status.to_string();
        let by = |kind: &'static str| [kind, route, service, consumer, node];
        Series {
            status,
            labels: labels.map(str::to_string),
            requests: m.status.with_label_values(&[
                status_text.as_str(),
                route,
                uri,
                host,
                service,
                consumer,
                node,
            ]),
            request_ms: m.latency.with_label_values(&by("request")),
            upstream_ms: (!node.is_empty()).then(|| {
                (
                    m.latency.with_label_values(&by("upstream")),
                    m.latency.with_label_values(&by("apisix")),
                )
            }),
            ingress: m.bandwidth.with_label_values(&by("ingress")),
            egress: m.bandwidth.with_label_values(&by("egress")),
        }
    }

    fn is(&self, status: u16, labels: &[&str; 6]) -> bool {
        self.status == status && self.labels.iter().zip(labels).all(|(a, b)| a == b)
    }

    fn count(&self, log: &Log) {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let request = ms(log.request_time);
        self.requests.inc();
        self.request_ms.observe(request);
        if let (Some((upstream_ms, apisix_ms)), Some(upstream)) =
            (&self.upstream_ms, log.upstream_time.map(ms))
        {
            upstream_ms.observe(upstream);
            apisix_ms.observe((request - upstream).max(0.0));
        }
        self.ingress.inc_by(log.request_bytes);
        self.egress.inc_by(log.response_bytes);
    }
}

impl Plugin for Prometheus {
    fn name(&self) -> &'static str {
        "prometheus"
    }

    fn priority(&self) -> i32 {
        500
    }

    fn logs(&self) -> bool {
        true
    }

    fn log(&self, log: &Log) {
        let route: &str = match (&log.route_name, self.prefer_name) {
            (Some(name), true) => name,
            _ => &log.route,
        };
        let labels = [
            route,
            &log.matched_uri,
            &log.matched_host,
            log.service.as_deref().unwrap_or_default(),
            log.consumer.as_ref().map_or("", |c| c.username.as_str()),
            log.node.as_deref().unwrap_or_default(),
        ];
        let mut kept = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(series) = kept.iter().find(|s| s.is(log.status, &labels)) {
            return series.count(log);
        }
        let series = Series::new(&self.shared.metrics, log.status, labels);
        series.count(log);
        if kept.len() < SERIES_KEPT {
            kept.push(series);
        }
    }
}

/// APISIX's default latency buckets, in milliseconds.
const BUCKETS: [f64; 15] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0,
    60000.0,
];

/// The gateway's metric families, registered once per process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    status: IntCounterVec,
    latency: HistogramVec,
    bandwidth: IntCounterVec,
    /// Every request the data plane received, routed or not.
    pub requests: IntCounter,
    /// Client connections open now, and accepted and handled since start
    /// (`apisix_nginx_http_current_connections{state}`).
    pub active: IntGauge,
    pub accepted: IntGauge,
    pub handled: IntGauge,
    upstream_status: IntGaugeVec,
    etcd_reachable: IntGauge,
}

impl Default for Metrics {
    // The names and labels are constants; `metrics_register` checks them.
    #[allow(clippy::expect_used)]
    fn default() -> Metrics {
        Metrics::new().expect("the gateway's metric names and labels are valid and distinct")
    }
}

impl Metrics {
    fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let route_labels = ["route", "service", "consumer", "node"];
        let typed = |first: &'static str| {
            let mut labels = vec![first];
            labels.extend(route_labels);
            labels
        };
        let status = IntCounterVec::new(
            Opts::new(
                "apisix_http_status",
                "HTTP status codes per service in APISIX",
            ),
            &[
                "code",
                "route",
                "matched_uri",
                "matched_host",
                "service",
                "consumer",
                "node",
            ],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "apisix_http_latency",
                "HTTP request latency in milliseconds per service in APISIX",
            )
            .buckets(BUCKETS.to_vec()),
            &typed("type"),
        )?;
        let bandwidth = IntCounterVec::new(
            Opts::new(
                "apisix_bandwidth",
                "Total bandwidth in bytes consumed per service in APISIX",
            ),
            &typed("type"),
        )?;
        let requests = IntCounter::new(
            "apisix_http_requests_total",
            "The total number of client requests since APISIX started",
        )?;
        let connections = IntGaugeVec::new(
            Opts::new(
                "apisix_nginx_http_current_connections",
                "Number of HTTP connections",
            ),
            &["state"],
        )?;
        let upstream_status = IntGaugeVec::new(
            Opts::new(
                "apisix_upstream_status",
                "Upstream status from health check",
            ),
            &["name", "ip", "port"],
        )?;
        let etcd_reachable = IntGauge::new(
            "apisix_etcd_reachable",
            "Config server etcd reachable from APISIX, 0 is unreachable",
        )?;
        let node_info = IntGaugeVec::new(
            Opts::new("apisix_node_info", "Info of APISIX node"),
            &["hostname", "version"],
        )?;
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        node_info
            .with_label_values(&[hostname.as_str(), env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(status.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(bandwidth.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(upstream_status.clone()))?;
        registry.register(Box::new(node_info))?;
        let state = |s: &str| connections.with_label_values(&[s]);
        Ok(Metrics {
            registry,
            status,
            latency,
            bandwidth,
            requests,
            active: state("active"),
            accepted: state("accepted"),
            handled: state("handled"),
            upstream_status,
            etcd_reachable,
        })
    }

    /// The Prometheus text exposition, with the health of `upstreams` (key, `host:port`,
    /// healthy) and, for an etcd store, whether etcd is reachable. Series of routes for which
    /// `configured` (given the `route` label: an id, or a name) is false are dropped first.
    pub fn render(
        &self,
        upstreams: &[(String, String, bool)],
        etcd: Option<bool>,
        configured: &dyn Fn(&str) -> bool,
    ) -> String {
        forget_routes(&self.status, configured);
        forget_routes(&self.latency, configured);
        forget_routes(&self.bandwidth, configured);
        self.upstream_status.reset();
        for (name, node, healthy) in upstreams {
            let (ip, port) = node.rsplit_once(':').unwrap_or((node, ""));
            self.upstream_status
                .with_label_values(&[name.as_str(), ip, port])
                .set(i64::from(*healthy));
        }
        let mut families = self.registry.gather();
        if let Some(reachable) = etcd {
            self.etcd_reachable.set(i64::from(reachable));
            families.extend(prometheus::core::Collector::collect(&self.etcd_reachable));
        }
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_default();
        // APISIX's counters apisix_http_status and apisix_bandwidth lack the `_total` suffix the
        // exposition format wants of counters: they are declared untyped under APISIX's names,
        // so its dashboards keep working and `promtool check metrics` has nothing to fault.
        families
            .iter()
            .filter(|f| {
                f.get_field_type() == prometheus::proto::MetricType::COUNTER
                    && !f.name().ends_with("_total")
            })
            .fold(text, |text, f| {
                let name = f.name();
                text.replace(
                    &format!("# TYPE {name} counter\n"),
                    &format!("# TYPE {name} untyped\n"),
                )
            })
    }
}

/// Removes the series of `metrics` whose `route` is no longer `configured`.
fn forget_routes<T: MetricVecBuilder>(metrics: &MetricVec<T>, configured: &dyn Fn(&str) -> bool) {
    for family in metrics.collect() {
        for metric in family.get_metric() {
            let labels: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name(), pair.value()))
                .collect();
            if labels.get("route").is_some_and(|route| !configured(route)) {
                let _ = metrics.remove(&labels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register() {
        let metrics = Metrics::new().unwrap();
        let text = metrics.render(
            &[("/apisix/upstreams/1".into(), "10.0.0.1:80".into(), false)],
            Some(true),
            &|_| true,
        );
        assert!(
            text.contains(
                r#"apisix_upstream_status{ip="10.0.0.1",name="/apisix/upstreams/1",port="80"} 0"#
            ),
            "{text}"
        );
        assert!(text.contains("apisix_etcd_reachable 1"), "{text}");
        assert!(
            !metrics
                .render(&[], None, &|_| true)
                .contains("apisix_etcd_reachable")
        );
    }
}
