//! traffic-split through the real data plane, with APISIX's documentation examples: canary by
//! weight (over 10,000 requests), blue-green by header, A/B by cookie and by consumer.

use std::collections::HashMap;

use axle_core::testing::{Backends, eventually};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::helpers::{Gateway, get, spawn_gateway, spawn_upstream};

/// Which upstream answered `path` with `headers`.
async fn served_by(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> String {
    let (status, seen, _) = get(gw, path, headers).await;
    assert_eq!(status, 200, "{seen}");
    seen["upstream"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn traffic_split_canary_blue_green_and_ab() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let (blue, green, canary) = (
        spawn_upstream("blue").await,
        spawn_upstream("green").await,
        spawn_upstream("canary").await,
    );
    gw.put(
        "/apisix/admin/upstreams/green",
        json!({"type": "roundrobin", "nodes": {green.to_string(): 1}}),
    )
    .await;

    // Canary: 30 % to an inline upstream, 70 % to the route's own.
    gw.put(
        "/apisix/admin/routes/canary",
        json!({"uri": "/canary", "upstream": {"type": "roundrobin", "nodes": {blue.to_string(): 1}},
               "plugins": {"traffic-split": {"rules": [{"weighted_upstreams": [
                   {"upstream": {"name": "canary", "type": "roundrobin", "nodes": {canary.to_string(): 1}}, "weight": 3},
                   {"weight": 7}]}]}}}),
    )
    .await;
    gw.wait_for("/canary", 200).await;
    let total = 10_000;
    let counts: HashMap<String, usize> = futures::stream::iter(0..total)
        .map(|_| served_by(&gw, "/canary", &[]))
        .buffer_unordered(32)
        .fold(HashMap::new(), |mut counts, name| async move {
            *counts.entry(name).or_default() += 1;
            counts
        })
        .await;
    let share = |name: &str| counts.get(name).copied().unwrap_or(0) as f64 / total as f64;
    // Binomial σ at p = 0.3 over 10k is 0.46 %; ±2 % is over 4σ (the split is in fact exact).
    assert!((share("canary") - 0.3).abs() < 0.02, "{counts:?}");
    assert!((share("blue") - 0.7).abs() < 0.02, "{counts:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");

    // Blue-green: a header sends the request to green, everything else stays on blue.
    gw.put(
        "/apisix/admin/routes/release",
        json!({"uri": "/release", "upstream": {"nodes": {blue.to_string(): 1}},
               "plugins": {"traffic-split": {"rules": [{
                   "match": [{"vars": [["http_release", "==", "new_release"]]}],
                   "weighted_upstreams": [{"upstream_id": "green"}]}]}}}),
    )
    .await;
    gw.wait_for("/release", 200).await;
    assert_eq!(
        served_by(&gw, "/release", &[("release", "new_release")]).await,
        "green"
    );
    assert_eq!(
        served_by(&gw, "/release", &[("release", "old")]).await,
        "blue"
    );
    assert_eq!(served_by(&gw, "/release", &[]).await, "blue");

    // A/B: either match entry (cookie, or an argument with a header) sends to green; the first
    // rule that holds wins, and a consumer can be routed by name.
    gw.put(
        "/apisix/admin/consumers",
        json!({"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/ab",
        json!({"uri": "/ab", "upstream": {"nodes": {blue.to_string(): 1}},
               "plugins": {
                   "key-auth": {},
                   "traffic-split": {"rules": [
                       {"match": [{"vars": [["cookie_group", "==", "b"]]},
                                  {"vars": [["arg_name", "==", "jack"], ["http_user-id", ">", "23"]]}],
                        "weighted_upstreams": [{"upstream_id": "green", "weight": 1}]},
                       {"match": [{"vars": [["consumer_name", "==", "jack"]]}],
                        "weighted_upstreams": [{"upstream": {"nodes": {canary.to_string(): 1}}}]}]}}}),
    )
    .await;
    gw.wait_for("/ab", 401).await;
    let key = ("apikey", "jack-key");
    assert_eq!(
        served_by(&gw, "/ab", &[key, ("Cookie", "group=b")]).await,
        "green"
    );
    assert_eq!(
        served_by(&gw, "/ab?name=jack", &[key, ("user-id", "30")]).await,
        "green"
    );
    // One of the two rules of the second entry fails: not green, then the consumer rule.
    assert_eq!(
        served_by(&gw, "/ab?name=jack", &[key, ("user-id", "3")]).await,
        "canary"
    );

    // An upstream_id that does not exist: a clear error, not a hang or a panic.
    gw.put(
        "/apisix/admin/routes/gone",
        json!({"uri": "/gone", "upstream": {"nodes": {blue.to_string(): 1}},
               "plugins": {"traffic-split": {"rules": [{"weighted_upstreams": [{"upstream_id": "nope"}]}]}}}),
    )
    .await;
    let body: Value = gw.wait_for("/gone", 503).await.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("does not exist"),
        "{body}"
    );

    // Bad rules are refused on write, naming the place.
    let route = json!({"uri": "/bad", "upstream": {"nodes": {blue.to_string(): 1}},
        "plugins": {"traffic-split": {"rules": [{"match": [{"vars": [["arg_x", "like", "y"]]}],
                                                 "weighted_upstreams": [{"weight": 1}]}]}}});
    gw.refused_naming("/apisix/admin/routes/bad", route, "rules[0].match[0].vars")
        .await;
}

/// `POST path` with `content_type` and `body`: the status, and the upstream and body it saw.
async fn post(gw: &Gateway, path: &str, content_type: &str, body: &str) -> (u16, Value) {
    let response = gw
        .client
        .post(gw.url(path))
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// APISIX's examples of routing by the request body (router-radixtree.md, traffic-split.md):
/// a form field in a route's `vars` and in traffic-split's `match`, a JSON field, and a JSONPath
/// with `has`. The body still reaches the upstream whole.
#[tokio::test]
async fn routes_and_traffic_split_match_on_body_fields() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let (form, json, other) = (
        spawn_upstream("form").await,
        spawn_upstream("json").await,
        spawn_upstream("other").await,
    );
    let form_type = "application/x-www-form-urlencoded";
    gw.put(
        "/apisix/admin/routes/1",
        json!({"methods": ["POST", "GET"], "uri": "/_post",
               "vars": [["post_arg_name", "==", "json"]],
               "upstream": {"type": "roundrobin", "nodes": {form.to_string(): 1}}}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/2",
        json!({"methods": ["POST"], "uri": "/_post", "vars": [["post_arg.name", "==", "xyz"]],
               "upstream": {"type": "roundrobin", "nodes": {json.to_string(): 1}}}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/3",
        json!({"methods": ["POST"], "uri": "/_post",
               "vars": [["post_arg.messages[*].content[*].type", "has", "image_url"]],
               "upstream": {"type": "roundrobin", "nodes": {other.to_string(): 1}}}),
    )
    .await;
    // Routes apply in write order: once the last answers, all do.
    let images = r#"{"model": "deepseek", "messages": [{"role": "system", "content": [
        {"text": "You are a mathematician", "type": "text"},
        {"text": "You are a mathematician", "type": "image_url"}]}]}"#;
    let seen = eventually(10, "the routes to apply", || async {
        let (status, seen) = post(&gw, "/_post", "application/json", images).await;
        (status == 200).then_some(seen)
    })
    .await;
    assert_eq!(seen["upstream"], "other");
    let (status, _) = post(
        &gw,
        "/_post",
        "application/json",
        &images.replace("image_url", "audio"),
    )
    .await;
    assert_eq!(status, 404, "no image: no route");
    let (status, seen) = post(&gw, "/_post", form_type, "name=json&age=3").await;
    assert_eq!(
        (status, seen["upstream"].as_str()),
        (200, Some("form")),
        "{seen}"
    );
    assert_eq!(
        seen["body"], "name=json&age=3",
        "the body is forwarded whole"
    );
    let (status, seen) = post(&gw, "/_post", "application/json", r#"{"name":"xyz"}"#).await;
    assert_eq!((status, seen["upstream"].as_str()), (200, Some("json")));
    assert_eq!(seen["body"], r#"{"name":"xyz"}"#);
    let (status, _) = post(&gw, "/_post", form_type, "name=xml").await;
    assert_eq!(status, 404, "no route's vars hold");
    let (status, _) = post(&gw, "/_post", "text/plain", "name=json").await;
    assert_eq!(status, 404, "only a form has post_arg_<name>");

    // traffic-split.md: a form field sends the request to another upstream.
    gw.put(
        "/apisix/admin/routes/traffic-split-route",
        json!({"uri": "/post", "methods": ["POST"],
               "plugins": {"traffic-split": {"rules": [{
                   "match": [{"vars": [["post_arg_id", "==", "1"]]}],
                   "weighted_upstreams": [{"upstream": {"type": "roundrobin",
                                                        "nodes": {json.to_string(): 1}}}]}]}},
               "upstream": {"type": "roundrobin", "nodes": {form.to_string(): 1}}}),
    )
    .await;
    let seen = eventually(10, "the route to apply", || async {
        let (status, seen) = post(&gw, "/post", form_type, "id=1").await;
        (status == 200).then_some(seen)
    })
    .await;
    assert_eq!(seen["upstream"], "json", "{seen}");
    assert_eq!(seen["body"], "id=1");
    let (_, seen) = post(&gw, "/post", form_type, "id=2").await;
    assert_eq!(seen["upstream"], "form");
}
