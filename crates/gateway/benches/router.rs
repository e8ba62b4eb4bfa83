//! Route matching and snapshot compilation at 100, 10k and 100k routes.
//!
//! The tables mix APISIX's uri kinds in thirds: exact (`/api/s7/items`), prefix (`/p7/*`) and
//! path parameters (`/api/s7/items/:id`); lookups hit the last route of each kind, or miss.
//! Run: `cargo bench -p axle-gateway --bench router`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use axle_gateway::plugins::Factory;
use axle_gateway::runtime::health::HealthChecks;
use axle_gateway::runtime::{Snapshot, compile};
use axle_gateway::vars::Request;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use serde_json::{Value, json};

const SIZES: [usize; 3] = [100, 10_000, 100_000];

/// `n` routes, a third of each uri kind.
fn table(n: usize) -> BTreeMap<String, Value> {
    (0..n)
        .map(|i| {
            let s = i / 3;
            let uri = match i % 3 {
                0 => format!("/api/s{s}/items"),
                1 => format!("/p{s}/*"),
                _ => format!("/api/s{s}/items/:id"),
            };
            let route = json!({"uri": uri, "upstream": {"nodes": {"127.0.0.1:1980": 1}}});
            (format!("/apisix/routes/{i}"), route)
        })
        .collect()
}

fn lookup(snapshot: &Snapshot, headers: &HeaderMap, path: &str) -> bool {
    let request = Request {
        method: "GET",
        path,
        query: None,
        host: "example.com",
        headers,
        remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        scheme: "http",
        server_port: 9080,
        consumer_name: None,
        jwt_payload: None,
        uri_params: &[],
        post: None,
        response: None,
    };
    snapshot.router.find(&request).is_some()
}

fn matching(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let mut group = c.benchmark_group("route_match");
    for n in SIZES {
        let snapshot = compile(1, &table(n), &HealthChecks::default(), &Factory::default());
        let last = n / 3 - 1;
        let cases = [
            ("exact", format!("/api/s{last}/items"), true),
            ("prefix", format!("/p{last}/x/y"), true),
            ("params", format!("/api/s{last}/items/42"), true),
            ("miss", "/nowhere/at/all".to_string(), false),
        ];
        for (kind, path, found) in cases {
            assert_eq!(lookup(&snapshot, &headers, &path), found, "{kind} at {n}");
            group.bench_with_input(BenchmarkId::new(kind, n), &path, |b, path| {
                b.iter(|| lookup(&snapshot, &headers, black_box(path)))
            });
        }
    }
    group.finish();
}

fn compiling(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_compile");
    group.sample_size(10);
    for n in SIZES {
        let config = table(n);
        let checks = HealthChecks::default();
        let plugins = Factory::default();
        group.bench_with_input(BenchmarkId::from_parameter(n), &config, |b, config| {
            b.iter(|| compile(1, config, &checks, &plugins))
        });
    }
    group.finish();
}

criterion_group!(benches, matching, compiling);
criterion_main!(benches);
