//! opentelemetry through the data plane: spans exported over OTLP/HTTP (protobuf) to a
//! collector, continuing the caller's trace and handed on to the upstream; samplers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axle_core::testing::{Backends, eventually};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;
use serde_json::json;

use crate::helpers::{get, spawn_gateway, spawn_upstream};

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    attributes: BTreeMap<String, String>,
    service: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

/// An OTLP/HTTP collector keeping the spans it receives.
async fn spawn_collector() -> (std::net::SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    assert_eq!(headers["content-type"], "application/x-protobuf");
                    let request = ExportTraceServiceRequest::decode(body).unwrap();
                    for resource in request.resource_spans {
                        let service = resource
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|a| a.key == "service.name")
                            .map(|a| text(a.value.as_ref()))
                            .unwrap_or_default();
                        for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                            sink.lock().unwrap().push(Received {
                                trace_id: hex(&span.trace_id),
                                span_id: hex(&span.span_id),
                                parent_span_id: hex(&span.parent_span_id),
                                name: span.name,
                                attributes: span
                                    .attributes
                                    .iter()
                                    .map(|a| (a.key.clone(), text(a.value.as_ref())))
                                    .collect(),
                                service: service.clone(),
                            });
                        }
                    }
                    ""
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, spans)
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opentelemetry_exports_spans_that_continue_the_callers_trace() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    let (collector, spans) = spawn_collector().await;
    gw.put(
        "/apisix/admin/plugin_metadata/opentelemetry",
        json!({"resource": {"service.name": "gateway-test"},
               "collector": {"address": collector.to_string(), "request_timeout": 3},
               "batch_span_processor": {"batch_timeout": 0.2}}),
    )
    .await;
    let routes = [
        (
            "on",
            json!({"sampler": {"name": "always_on"},
            "additional_attributes": ["http_x_tenant"],
            "additional_header_prefix_attributes": ["X-Custom-"]}),
        ),
        ("off", json!({"sampler": {"name": "always_off"}})),
        (
            "parent",
            json!({"sampler": {"name": "parent_base",
            "options": {"root": {"name": "always_off"}}}}),
        ),
    ];
    for (id, config) in &routes {
        gw.put(
            &format!("/apisix/admin/routes/{id}"),
            json!({"uri": format!("/{id}"), "plugins": {"opentelemetry": config},
                   "upstream": {"nodes": {up.to_string(): 1}}}),
        )
        .await;
    }
    gw.wait_for("/parent", 200).await;

    let sampled = format!("00-{TRACE}-{CALLER}-01");
    let (status, echoed, _) = get(
        &gw,
        "/on?x=1",
        &[
            ("traceparent", &sampled),
            ("x-tenant", "t1"),
            ("x-custom-a", "b"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    // The upstream continues the caller's trace from the gateway's span.
    let handed_on = echoed["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    let parts: Vec<&str> = handed_on.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE, "01"));
    let gateway_span = parts[2].to_string();
    assert_ne!(gateway_span, CALLER);

    // A new trace when the caller sent none.
    let (_, echoed, _) = get(&gw, "/on", &[]).await;
    let new_trace = echoed["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .split('-')
        .nth(1)
        .unwrap()
        .to_string();
    assert_ne!(new_trace, TRACE);

    // Not sampled: the caller's traceparent passes untouched, or none is made up.
    let unsampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let (_, echoed, _) = get(
        &gw,
        "/off",
        &[("traceparent", &format!("00-{unsampled_trace}-{CALLER}-01"))],
    )
    .await;
    assert_eq!(
        echoed["headers"]["traceparent"],
        format!("00-{unsampled_trace}-{CALLER}-01")
    );
    let (_, echoed, _) = get(&gw, "/parent", &[]).await;
    assert_eq!(echoed["headers"]["traceparent"], json!(null));
    let declined = "11111111111111111111111111111111";
    get(
        &gw,
        "/parent",
        &[("traceparent", &format!("00-{declined}-{CALLER}-00"))],
    )
    .await;
    // parent_base follows a sampled caller.
    let followed = "22222222222222222222222222222222";
    get(
        &gw,
        "/parent",
        &[("traceparent", &format!("00-{followed}-{CALLER}-01"))],
    )
    .await;

    let mut received = Vec::new();
    for _ in 0..200 {
        received = spans.lock().unwrap().clone();
        let traces: Vec<&str> = received.iter().map(|s| s.trace_id.as_str()).collect();
        if [TRACE, new_trace.as_str(), followed]
            .iter()
            .all(|t| traces.contains(t))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let span = received
        .iter()
        .find(|s| s.trace_id == TRACE)
        .expect("the span is exported");
    assert_eq!(
        (span.span_id.as_str(), span.parent_span_id.as_str()),
        (gateway_span.as_str(), CALLER)
    );
    assert_eq!(span.name, "GET /on");
    assert_eq!(span.service, "gateway-test");
    for (key, value) in [
        ("apisix.route_id", "on"),
        ("http.method", "GET"),
        ("http.target", "/on?x=1"),
        ("http.status_code", "200"),
        ("http_x_tenant", "t1"),
        ("x-custom-a", "b"),
    ] {
        assert_eq!(
            span.attributes.get(key).map(String::as_str),
            Some(value),
            "{key}: {span:?}"
        );
    }
    let fresh = received
        .iter()
        .find(|s| s.trace_id == new_trace)
        .expect("a new trace is exported");
    assert_eq!(fresh.parent_span_id, "");
    assert!(received.iter().any(|s| s.trace_id == followed));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = spans.lock().unwrap().clone();
    for absent in [unsampled_trace, declined] {
        assert!(
            received.iter().all(|s| s.trace_id != absent),
            "{absent} was not sampled"
        );
    }
    assert_eq!(
        received.len(),
        3,
        "one span per sampled request: {received:?}"
    );

    // Bad settings are refused when written.
    for (path, body, field) in [
        (
            "/apisix/admin/plugin_metadata/opentelemetry",
            json!({"collector": {"address": "a b"}}),
            "collector.address",
        ),
        (
            "/apisix/admin/routes/bad",
            json!({"uri": "/bad", "upstream": {"nodes": {up.to_string(): 1}},
            "plugins": {"opentelemetry": {"sampler": {"name": "trace_id_ratio", "options": {"fraction": 2}}}}}),
            "fraction",
        ),
    ] {
        gw.refused_naming(path, body, field).await;
    }
}

/// `trace_id_source: x-request-id`: a trace the request starts takes the request's id, when
/// that is 32 hexadecimal digits; a caller's trace is still continued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_can_take_the_request_id_as_their_id() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    let (collector, spans) = spawn_collector().await;
    gw.put(
        "/apisix/admin/plugin_metadata/opentelemetry",
        json!({"trace_id_source": "x-request-id",
               "collector": {"address": collector.to_string(), "request_timeout": 3},
               "batch_span_processor": {"batch_timeout": 0.2}}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/on",
        json!({"uri": "/on", "plugins": {"opentelemetry": {"sampler": {"name": "always_on"}}},
               "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/on", 200).await;
    let request_id = "0AF7651916CD43DD8448EB211C80319C";
    get(&gw, "/on", &[("x-request-id", request_id)]).await;
    let uuid = "0af76519-16cd-43dd-8448-eb211c80319c";
    get(&gw, "/on", &[("x-request-id", uuid)]).await;
    let caller = format!("00-{TRACE}-{CALLER}-01");
    get(
        &gw,
        "/on",
        &[("x-request-id", request_id), ("traceparent", &caller)],
    )
    .await;
    let received = eventually(10, "the spans", || async {
        let received = spans.lock().unwrap().clone();
        (received.len() >= 3).then_some(received)
    })
    .await;
    let traces: Vec<&str> = received.iter().map(|s| s.trace_id.as_str()).collect();
    assert!(
        traces.contains(&"0af7651916cd43dd8448eb211c80319c"),
        "{traces:?}"
    );
    assert!(
        traces.contains(&TRACE),
        "the caller's trace goes on: {traces:?}"
    );
    let others = traces
        .iter()
        .filter(|t| **t != TRACE && !t.starts_with("0af76519"))
        .count();
    assert!(others >= 1, "a UUID is no trace id: {traces:?}");
}
