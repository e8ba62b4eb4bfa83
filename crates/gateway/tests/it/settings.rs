//! No setting the Admin API accepts can make the data plane panic: every numeric field of every
//! plugin (found in the plugin's published JSON Schema) and of upstreams is set to extreme
//! values — the edges of each type, and values proptest draws — and whatever is accepted then
//! serves a real request. A panic would drop that request's connection, or show up in the panic
//! hook from a background task (health checks, exporters).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axle_core::testing::Backends;
use futures::StreamExt;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Gateway, spawn_gateway, spawn_upstream};

/// A plugin configuration that is valid as it is, to set one field of at a time.
fn base(plugin: &str) -> Value {
    match plugin {
        "api-breaker" => json!({"break_response_code": 502}),
        "consumer-restriction" => json!({"whitelist": ["jack"]}),
        "fault-injection" => json!({"abort": {"http_status": 200, "body": "x"}}),
        "ip-restriction" => json!({"whitelist": ["127.0.0.0/8"]}),
        "limit-conn" => {
            json!({"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"})
        }
        "limit-count" => json!({"count": 2, "time_window": 60}),
        "limit-req" => json!({"rate": 1, "burst": 0, "key": "remote_addr"}),
        "proxy-mirror" => json!({"host": "http://127.0.0.1:9"}),
        "proxy-rewrite" => json!({"uri": "/rewritten"}),
        "response-rewrite" => json!({"status_code": 200}),
        "traffic-split" => json!({"rules": [{"weighted_upstreams": [{"weight": 1}]}]}),
        _ => json!({}),
    }
}

/// The JSON pointers of the numeric fields in `schema`, and whether each takes integers only.
fn numeric_fields(schema: &Value, at: &str, found: &mut Vec<(String, bool)>) {
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if types.contains(&"number") {
        found.push((at.to_string(), false));
    } else if types.contains(&"integer") {
        found.push((at.to_string(), true));
    }
    if let Some(properties) = schema["properties"].as_object() {
        for (name, field) in properties {
            numeric_fields(field, &format!("{at}/{name}"), found);
        }
    }
    if schema["items"].is_object() {
        numeric_fields(&schema["items"], &format!("{at}/0"), found);
    }
    for choice in ["anyOf", "oneOf", "allOf"] {
        for variant in schema[choice].as_array().into_iter().flatten() {
            numeric_fields(variant, at, found);
        }
    }
}

/// `config` with `value` at `pointer`, the objects and one-element arrays on the way made.
fn with(config: &Value, pointer: &str, value: Value) -> Value {
    let mut config = config.clone();
    let mut slot = &mut config;
    for segment in pointer.split('/').skip(1) {
        slot = match segment.parse::<usize>() {
            Ok(_) => {
                if !slot.is_array() || slot.as_array().is_some_and(Vec::is_empty) {
                    *slot = json!([{}]);
                }
                &mut slot[0]
            }
            Err(_) => {
                if !slot.is_object() {
                    *slot = json!({});
                }
                slot.as_object_mut()
                    .unwrap()
                    .entry(segment.to_string())
                    .or_insert(Value::Null)
            }
        };
    }
    *slot = value;
    config
}

/// The edges of a field's type.
fn extremes(integer: bool) -> Vec<Value> {
    let mut values = vec![
        json!(0),
        json!(-1),
        json!(1),
        json!(i64::MIN),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(9_007_199_254_740_993u64),
        json!(u32::MAX),
        json!(u16::MAX as u32 + 1),
    ];
    if !integer {
        values.extend([
            json!(-0.5),
            json!(1e-300),
            json!(5e-324),
            json!(0.000_000_1),
            json!(1e300),
            json!(f64::MAX),
            json!(-f64::MAX),
        ]);
    }
    values
}

/// What proptest draws for a field besides its edges.
fn drawn(integer: bool, runner: &mut TestRunner, n: usize) -> Vec<Value> {
    let strategy = if integer {
        proptest::num::i64::ANY.prop_map(|v| json!(v)).boxed()
    } else {
        proptest::num::f64::NORMAL
            .prop_union(proptest::num::f64::SUBNORMAL)
            .prop_map(|v| json!(v))
            .boxed()
    };
    (0..n)
        .map(|_| strategy.new_tree(runner).unwrap().current())
        .collect()
}

/// The upstream's numeric fields (upstreams have no published schema).
const UPSTREAM_FIELDS: [(&str, bool); 21] = [
    ("/retries", true),
    ("/retry_timeout", false),
    ("/timeout/connect", false),
    ("/timeout/send", false),
    ("/timeout/read", false),
    ("/keepalive_pool/size", true),
    ("/keepalive_pool/idle_timeout", false),
    ("/keepalive_pool/requests", true),
    ("/nodes/0/weight", true),
    ("/nodes/0/priority", true),
    ("/checks/active/timeout", false),
    ("/checks/active/concurrency", true),
    ("/checks/active/healthy/interval", true),
    ("/checks/active/healthy/successes", true),
    ("/checks/active/unhealthy/interval", true),
    ("/checks/active/unhealthy/http_failures", true),
    ("/checks/active/unhealthy/tcp_failures", true),
    ("/checks/active/unhealthy/timeouts", true),
    ("/checks/passive/healthy/successes", true),
    ("/checks/passive/unhealthy/http_failures", true),
    ("/checks/passive/unhealthy/timeouts", true),
];

/// `plugin_metadata` numeric fields.
const METADATA_FIELDS: [(&str, &str, bool); 5] = [
    ("opentelemetry", "/collector/request_timeout", false),
    (
        "opentelemetry",
        "/batch_span_processor/max_queue_size",
        true,
    ),
    (
        "opentelemetry",
        "/batch_span_processor/batch_timeout",
        false,
    ),
    (
        "opentelemetry",
        "/batch_span_processor/inactive_timeout",
        false,
    ),
    (
        "opentelemetry",
        "/batch_span_processor/max_export_batch_size",
        true,
    ),
];

/// Panics in the gateway's own code (tasks included) while this test runs.
fn count_gateway_panics() -> Arc<AtomicUsize> {
    let panics = Arc::new(AtomicUsize::new(0));
    let counted = panics.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let ours = info
            .location()
            .is_some_and(|l| l.file().contains("gateway/src") || l.file().contains("/rustc/"));
        if ours {
            counted.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
    panics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accepted_setting_makes_the_data_plane_panic() {
    let panics = count_gateway_panics();
    let gw = Arc::new(spawn_gateway(Backends::embedded()).await);
    let node = spawn_upstream("a").await;
    let mut runner = TestRunner::deterministic();
    let upstream = json!({"nodes": [{"host": "127.0.0.1", "port": node.port(), "weight": 1}]});

    // Every route that the Admin API accepted, by its path.
    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut case = 0;
    let mut try_route = async |gw: &Gateway, plugins: Value, upstream: Value| {
        case += 1;
        let uri = format!("/case/{case}");
        let route = json!({"uri": uri, "plugins": plugins, "upstream": upstream});
        let what = route.to_string();
        let (status, body) = gw
            .admin(
                Method::PUT,
                &format!("/apisix/admin/routes/{case}"),
                Some(route),
            )
            .await;
        assert!(
            [200, 201, 400].contains(&status),
            "case {case}: {status} {body}"
        );
        if status == 400 {
            refused += 1;
        } else {
            accepted.push((uri, what));
        }
    };

    let plugins: Vec<String> = gw
        .admin(Method::GET, "/apisix/admin/plugins/list", None)
        .await
        .1
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    for plugin in &plugins {
        let path = format!("/apisix/admin/schema/plugins/{plugin}");
        let schema = gw.admin(Method::GET, &path, None).await.1;
        let mut fields = Vec::new();
        numeric_fields(&schema, "", &mut fields);
        for (pointer, integer) in fields {
            let mut values = extremes(integer);
            values.extend(drawn(integer, &mut runner, 8));
            for value in values {
                let config = with(&base(plugin), &pointer, value);
                try_route(&gw, json!({ plugin: config }), upstream.clone()).await;
            }
        }
    }
    for (pointer, integer) in UPSTREAM_FIELDS {
        let mut values = extremes(integer);
        values.extend(drawn(integer, &mut runner, 8));
        for value in values {
            try_route(&gw, json!({}), with(&upstream, pointer, value)).await;
        }
    }
    for (plugin, pointer, integer) in METADATA_FIELDS {
        for value in extremes(integer) {
            let metadata = with(&json!({}), pointer, value);
            let path = format!("/apisix/admin/plugin_metadata/{plugin}");
            let (status, body) = gw.admin(Method::PUT, &path, Some(metadata)).await;
            assert!([200, 201, 400].contains(&status), "{status} {body}");
            if status != 400 {
                let config = json!({"sampler": {"name": "always_on"}});
                try_route(&gw, json!({ plugin: config }), upstream.clone()).await;
            }
        }
    }
    assert!(
        refused > 0 && !accepted.is_empty(),
        "{refused} refused, {} accepted",
        accepted.len()
    );

    // Every accepted route serves (once the last one is in the snapshot), or is still waiting
    // on a delay it was given; none drops its connection.
    let last = accepted.last().unwrap().0.clone();
    axle_core::testing::eventually(10, "the last route", || async {
        let r = gw.client.get(gw.url(&last)).send().await.ok()?;
        (r.status() != 404).then_some(())
    })
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let answers = futures::stream::iter(accepted.clone())
        .map(|(uri, what)| {
            let (client, url) = (client.clone(), gw.url(&uri));
            async move { (what, client.get(url).send().await) }
        })
        .buffer_unordered(32);
    let dropped: Vec<String> = answers
        .filter_map(|(what, answer)| async move {
            match answer {
                Ok(_) => None,
                Err(e) if e.is_timeout() => None,
                Err(e) => Some(format!("{what}: {e}")),
            }
        })
        .collect()
        .await;
    assert!(dropped.is_empty(), "connections dropped: {dropped:?}");
    // Background tasks (health checks, exporters) had a moment to run too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(panics.load(Ordering::SeqCst), 0, "the gateway panicked");
    let r = gw.client.get(gw.url(&last)).send().await.unwrap();
    assert_ne!(r.status(), 500);
}
