//! What the Admin API refuses, and what it never shows: configuration that cannot work or would
//! open a hole (header injection, a key two consumers share, ids that name a parent
//! directory), references left dangling by racing writes, and private keys.

use std::sync::Arc;

use axle_core::on_every_backend;
use axle_core::testing::Backends;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Gateway, KEY, spawn_gateway, spawn_gateway_on_etcd, spawn_gateway_with};

on_every_backend!(racing_writes, racing_writes_leave_no_dangling_reference);
async fn racing_writes_leave_no_dangling_reference(backends: Backends) {
    let gw = spawn_gateway(backends).await;
    let other = spawn_gateway_with((*gw.config).clone()).await;
    race(Arc::new(gw), Arc::new(other)).await;
}

#[tokio::test]
async fn racing_writes_on_etcd_leave_no_dangling_reference() {
    let Some(endpoint) = axle_core::testing::etcd_endpoints() else {
        return;
    };
    let (gw, _dir) = spawn_gateway_on_etcd(&endpoint).await;
    let other = spawn_gateway_with((*gw.config).clone()).await;
    race(Arc::new(gw), Arc::new(other)).await;
}

/// Twenty pairs each of a write naming a resource and the delete of that resource, sent at
/// once — to one gateway, and through another on the same store, as two control planes do:
/// whichever wins, nothing may end up naming what is gone.
async fn race(gw: Arc<Gateway>, other: Arc<Gateway>) {
    const PAIRS: usize = 20;
    for i in 0..PAIRS {
        gw.put(
            &format!("/apisix/admin/upstreams/u{i}"),
            json!({"nodes": {"127.0.0.1:1": 1}}),
        )
        .await;
        gw.put(&format!("/apisix/admin/consumers/c{i}"), json!({}))
            .await;
    }
    let mut pairs = Vec::new();
    for i in 0..PAIRS {
        let (a, b, c, d) = (gw.clone(), other.clone(), gw.clone(), other.clone());
        pairs.push(tokio::spawn(async move {
            let route = json!({"uri": format!("/r{i}"), "upstream_id": format!("u{i}")});
            let path = format!("/apisix/admin/routes/r{i}");
            a.admin(Method::PUT, &path, Some(route)).await.0
        }));
        pairs.push(tokio::spawn(async move {
            let path = format!("/apisix/admin/upstreams/u{i}");
            b.admin(Method::DELETE, &path, None).await.0
        }));
        pairs.push(tokio::spawn(async move {
            let credential = json!({"plugins": {"key-auth": {"key": format!("key-{i}")}}});
            let path = format!("/apisix/admin/consumers/c{i}/credentials/k");
            c.admin(Method::PUT, &path, Some(credential)).await.0
        }));
        pairs.push(tokio::spawn(async move {
            let path = format!("/apisix/admin/consumers/c{i}");
            d.admin(Method::DELETE, &path, None).await.0
        }));
    }
    for pair in pairs {
        let status = pair.await.unwrap();
        assert!([200, 201, 400, 404].contains(&status), "{status}");
    }
    let exists = async |path: String| gw.admin(Method::GET, &path, None).await.0 == 200;
    let mut dangling = Vec::new();
    for i in 0..PAIRS {
        let route = exists(format!("/apisix/admin/routes/r{i}")).await;
        let upstream = exists(format!("/apisix/admin/upstreams/u{i}")).await;
        if route && !upstream {
            dangling.push(format!("route r{i} names the deleted upstream u{i}"));
        }
        let credential = exists(format!("/apisix/admin/consumers/c{i}/credentials/k")).await;
        let consumer = exists(format!("/apisix/admin/consumers/c{i}")).await;
        if credential && !consumer {
            dangling.push(format!("credential k outlived consumer c{i}"));
        }
    }
    assert!(dangling.is_empty(), "{dangling:#?}");
}

on_every_backend!(
    refusals,
    configuration_that_cannot_work_is_refused_in_apisix_shape
);
async fn configuration_that_cannot_work_is_refused_in_apisix_shape(backends: Backends) {
    let gw = spawn_gateway(backends).await;
    let node = json!({"127.0.0.1:1": 1});
    let route =
        |plugins: Value| json!({"uri": "/a", "plugins": plugins, "upstream": {"nodes": node}});
    let cases = [
        // A CR or LF would end a header line early: an injected header, a smuggled request.
        (
            "routes/1",
            route(json!({"proxy-rewrite": {"headers": {"set": {"x-a": "1\r\nx-b: 2"}}}})),
            "headers.set.x-a: control character 0x0d",
        ),
        (
            "routes/1",
            route(json!({"proxy-rewrite": {"headers": {"X-Old": "a\nb"}}})),
            "control character 0x0a",
        ),
        (
            "routes/1",
            route(json!({"proxy-rewrite": {"headers": {"add": {"x\r\ny": "1"}}}})),
            "not a header name",
        ),
        (
            "routes/1",
            route(json!({"proxy-rewrite": {"host": "a.com\r\nx-injected: 1"}})),
            "host: control character",
        ),
        (
            "routes/1",
            route(json!({"proxy-rewrite": {"uri": "/x HTTP/1.1\r\nHost: evil\r\n\r\nGET /y"}})),
            "uri: control character",
        ),
        (
            "routes/1",
            route(json!({"proxy-rewrite": {"uri": "/a b"}})),
            "uri: a space",
        ),
        (
            "routes/1",
            route(json!({"proxy-rewrite": {"regex_uri": ["^/(.*)", "/$1\r\n"]}})),
            "regex_uri: control character",
        ),
        (
            "routes/1",
            route(json!({"response-rewrite": {"headers": {"set": {"x-a": "\u{7f}"}}}})),
            "control character 0x7f",
        ),
        (
            "routes/1",
            route(json!({"fault-injection": {"abort": {"http_status": 200,
                "headers": {"x-a": "1\r\n"}}}})),
            "abort.headers.x-a",
        ),
        // A route matching nothing, an upstream with nothing to send to.
        (
            "routes/1",
            json!({"uris": [], "upstream": {"nodes": node}}),
            "uris: at least one",
        ),
        (
            "routes/1",
            json!({"uri": "/a", "upstream": {"nodes": {}}}),
            "upstream.nodes: at least one node",
        ),
        (
            "services/1",
            json!({"upstream": {"nodes": []}}),
            "upstream.nodes: at least one node",
        ),
        // Absurd numbers.
        (
            "upstreams/1",
            json!({"nodes": node, "timeout": {"connect": 1e300, "send": 1, "read": 1}}),
            "timeout.connect: seconds",
        ),
        (
            "upstreams/1",
            json!({"nodes": node, "retry_timeout": 1e19}),
            "retry_timeout: seconds",
        ),
        (
            "upstreams/1",
            json!({"nodes": node, "keepalive_pool": {"idle_timeout": 1e12}}),
            "keepalive_pool.idle_timeout",
        ),
        (
            "upstreams/1",
            json!({"nodes": node, "checks": {"active": {"healthy": {"interval": 1e15}}}}),
            "checks.active.healthy.interval",
        ),
        (
            "upstreams/1",
            json!({"type": "chash", "key": "remote_addr",
                   "nodes": {"127.0.0.1:1": 100000, "127.0.0.1:2": 1}}),
            "chash weights",
        ),
        (
            "routes/1",
            route(json!({"limit-req": {"rate": 1e300, "burst": 0, "key": "remote_addr"}})),
            "rate: above 0",
        ),
        (
            "routes/1",
            route(
                json!({"limit-conn": {"conn": 1, "burst": 0, "default_conn_delay": 1e300,
                "key": "remote_addr"}}),
            ),
            "default_conn_delay",
        ),
        (
            "routes/1",
            route(json!({"limit-count": {"count": 1, "time_window": 9007199254740993u64}})),
            "time_window",
        ),
        (
            "plugin_metadata/opentelemetry",
            json!({"batch_span_processor": {"max_queue_size": 9007199254740993u64}}),
            "max_queue_size",
        ),
        // Ids that would name the directory itself or its parent.
        (
            "routes",
            json!({"id": "..", "uri": "/a", "upstream": {"nodes": node}}),
            "1-64 characters",
        ),
        (
            "upstreams",
            json!({"id": ".", "nodes": node}),
            "1-64 characters",
        ),
    ];
    for (path, body, expected) in cases {
        let path = format!("/apisix/admin/{path}");
        let message = gw.refused(Method::PUT, &path, body.clone()).await;
        assert!(message.contains(expected), "{body}: {message}");
    }

    // A key-auth key or basic-auth username identifies one consumer only, whether it sits on
    // the consumer or on one of its credentials.
    gw.put(
        "/apisix/admin/consumers",
        json!({"username": "jack", "plugins": {"key-auth": {"key": "shared"}}}),
    )
    .await;
    gw.put(
        "/apisix/admin/consumers/jack/credentials/b",
        json!({"plugins": {"basic-auth": {"username": "jack", "password": "p"}}}),
    )
    .await;
    let message = gw
        .refused(
            Method::PUT,
            "/apisix/admin/consumers",
            json!({"username": "rose", "plugins": {"key-auth": {"key": "shared"}}}),
        )
        .await;
    assert!(
        message.contains("plugins.key-auth.key: already used by consumer [jack]"),
        "{message}"
    );
    gw.put("/apisix/admin/consumers/rose", json!({})).await;
    let message = gw
        .refused(
            Method::PUT,
            "/apisix/admin/consumers/rose/credentials/1",
            json!({"plugins": {"basic-auth": {"username": "jack", "password": "q"}}}),
        )
        .await;
    assert!(
        message.contains("already used by credential [jack/credentials/b]"),
        "{message}"
    );
    // Writing a consumer again with its own key is no conflict.
    gw.put(
        "/apisix/admin/consumers",
        json!({"username": "jack", "desc": "again", "plugins": {"key-auth": {"key": "shared"}}}),
    )
    .await;

    // Every refusal keeps APISIX's shape, those of the framework included.
    let bad_json = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert!(body["error_msg"].is_string(), "{status}: {body}");
        status
    };
    let huge = vec![b' '; 3 * 1024 * 1024];
    // A client of its own: the refused body's connection is not one to reuse.
    let too_large = reqwest::Client::new()
        .put(gw.admin.url("/apisix/admin/routes/1"))
        .header("X-API-KEY", KEY)
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json(too_large).await, 413);
    for query in [
        "page_size=ten",
        "page=-1",
        "page_size=5",
        "page=0&page_size=10",
    ] {
        let listed = gw
            .client
            .get(gw.admin.url(&format!("/apisix/admin/routes?{query}")))
            .header("X-API-KEY", KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(bad_json(listed).await, 400, "{query}");
    }
}

on_every_backend!(private_keys, private_keys_are_never_returned);
async fn private_keys_are_never_returned(backends: Backends) {
    let gw = spawn_gateway(backends).await;
    let pair = |name: &str| {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    };
    let ((cert, key), (cert2, key2)) = (pair("a.test"), pair("a.test"));
    let ssl = json!({"cert": cert, "key": key, "certs": [cert2], "keys": [key2],
                     "snis": ["a.test"]});
    let mut answers = vec![gw.put("/apisix/admin/ssls/1", ssl).await];
    answers.push(gw.admin(Method::GET, "/apisix/admin/ssls/1", None).await.1);
    answers.push(gw.admin(Method::GET, "/apisix/admin/ssls", None).await.1);
    let patched = json!({"labels": {"team": "edge"}});
    answers.push(
        gw.admin(Method::PATCH, "/apisix/admin/ssls/1", Some(patched))
            .await
            .1,
    );
    answers.push(gw.admin(Method::GET, "/axle/admin/history", None).await.1);
    answers.push(
        gw.admin(Method::GET, "/axle/admin/diff?from=0", None)
            .await
            .1,
    );
    let rollback = json!({"revision": 0});
    answers.push(
        gw.admin(Method::POST, "/axle/admin/rollback", Some(rollback))
            .await
            .1,
    );
    for answer in answers {
        let text = answer.to_string();
        assert!(
            text.contains("BEGIN CERTIFICATE"),
            "the certificate is shown: {text}"
        );
        assert!(
            !text.contains("PRIVATE KEY"),
            "a private key was returned: {text}"
        );
    }
}
